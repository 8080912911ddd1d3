#!/usr/bin/env bash
# Screenshot a run's report.html in headless Chromium, for the docs (docs/img/report.png).
#   benchmarks/screenshot_report.sh RUN_DIR OUT.png [WIDTH,HEIGHT]     (default 1200,1600)
# Writes RUN_DIR/report/ first (`miars report RUN_DIR`), then captures the top WIDTH x HEIGHT
# pixels of the page. Needs a Chromium already installed (chromium, chromium-browser,
# google-chrome or google-chrome-stable on PATH, or $CHROMIUM); it never downloads one.
# Without one it skips: a message on stderr, exit 0, OUT.png left as it was
# (MIARS_SCREENSHOT_REQUIRED=1: exit 2 instead, for a docs build that must refresh it).
set -euo pipefail
usage="usage: benchmarks/screenshot_report.sh RUN_DIR OUT.png [WIDTH,HEIGHT]"
run_dir=${1:?$usage}
out=${2:?$usage}
size=${3:-1200,1600}
[ -d "$run_dir" ] || { echo "screenshot_report.sh: error: RUN_DIR '$run_dir' is not a folder; $usage" >&2; exit 2; }
browser=${CHROMIUM:-}
if [ -z "$browser" ]; then
    for name in chromium chromium-browser google-chrome google-chrome-stable; do
        browser=$(command -v "$name" || true)
        [ -n "$browser" ] && break
    done
fi
if [ -z "$browser" ]; then
    what=skipped; [ "${MIARS_SCREENSHOT_REQUIRED:-}" = 1 ] && what=error
    echo "screenshot_report.sh: $what: no headless Chromium here (looked for \$CHROMIUM, chromium, chromium-browser," \
         "google-chrome, google-chrome-stable); $out was not refreshed. Install one (Debian/Ubuntu:" \
         "apt-get install -y chromium) and rerun." >&2
    [ "${MIARS_SCREENSHOT_REQUIRED:-}" = 1 ] && exit 2
    exit 0
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
miars="$root/.venv/bin/miars"
[ -x "$miars" ] || miars=miars
"$miars" report "$run_dir"
mkdir -p "$(dirname "$out")"
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
    --window-size="$size" --screenshot="$(realpath -m "$out")" "file://$(realpath "$run_dir")/report/report.html"
echo "wrote $out"
