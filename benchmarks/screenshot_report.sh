#!/usr/bin/env bash
# Screenshot a run's report.html in headless Chromium.
#   benchmarks/screenshot_report.sh RUN_DIR OUT.png [WIDTH,HEIGHT]     (default 1200,1600)
# Writes RUN_DIR/report/ first (`miars report RUN_DIR`), then captures the top WIDTH x HEIGHT
# pixels of the page. Needs chromium (Debian/Ubuntu: apt-get install -y chromium).
set -euo pipefail
usage="usage: benchmarks/screenshot_report.sh RUN_DIR OUT.png [WIDTH,HEIGHT]"
run_dir=${1:?$usage}
out=${2:?$usage}
size=${3:-1200,1600}
root="$(cd "$(dirname "$0")/.." && pwd)"
miars="$root/.venv/bin/miars"
[ -x "$miars" ] || miars=miars
"$miars" report "$run_dir"
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
    echo "screenshot_report.sh: error: no chromium on PATH; install it (apt-get install -y chromium)" >&2
    exit 2
fi
mkdir -p "$(dirname "$out")"
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
    --window-size="$size" --screenshot="$(realpath -m "$out")" "file://$(realpath "$run_dir")/report/report.html"
echo "wrote $out"
