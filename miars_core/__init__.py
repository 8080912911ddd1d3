"""miars: membership inference attacks against recommender systems, on a pluggy core.

The package is layered; every import points down (tests/test_layout.py checks it):

    cli.py, docgen.py   the face: commands, generated reference pages
    reports/            run reports: an attack's result files, the grid and defense reports
    engine/             the stage graph and its store, run folders, grids, executors, run_attack
    kit/                what plugin authors test and build with: the conformance checks
    science/            the protocol: split, service, threat models, ranking, metrics
    contracts/          hook specs, data types, components, parameters, registry, plugin manager, files

Modules that lived at the top level before the layout (``miars_core.pipeline``,
``miars_core.hookspecs``, ...) still import from their old paths: :data:`MOVED` maps each to its
new home, and importing an old path gives the very same module object (docs/layout.md).
"""

__version__ = "0.1.0"

#: Old module path (under miars_core) -> where the module lives now. Importing the old path
#: returns the new module itself, so attributes, monkeypatching and ``isinstance`` all agree.
MOVED = {
    "components": "contracts.components",
    "defenses": "contracts.defenses",
    "errors": "contracts.errors",
    "hookspecs": "contracts.hookspecs",
    "params": "contracts.params",
    "plugins": "contracts.plugins",
    "registry": "contracts.registry",
    "seeds": "contracts.seeds",
    "types": "contracts.types",
    "protocol": "science.protocol",
    "service": "science.service",
    "threat": "science.threat",
    "ranking": "science.ranking",
    "metrics": "science.metrics",
    "utility": "science.utility",
    "intervals": "science.intervals",
    "synth": "science.synth",
    "checks": "kit.checks",
    "torch_utils": "kit.torch_utils",
    "stages": "engine.stages",
    "store": "engine.store",
    "rundir": "engine.rundir",
    "grid": "engine.grid",
    "executors": "engine.executors",
    "gridprogress": "engine.progress",
    "pipeline": "engine.pipeline",
    "audit": "engine.audit",
    "report": "reports.report",
    "gridreport": "reports.gridreport",
    "defensereport": "reports.defensereport",
}


def _install_old_paths() -> None:
    """Make ``import miars_core.<old>`` load ``miars_core.<new>`` (lazily: nothing is imported until asked).

    A meta path finder and loader in one, without importlib.abc (importing it would cost
    ``miars --help`` milliseconds): asked for an old path, it imports the new module and hands
    that very module over, so ``sys.modules`` holds one module object under both names.
    """
    import importlib
    import sys
    from importlib.machinery import ModuleSpec

    class OldPaths:
        package = __name__

        def find_spec(self, fullname, path=None, target=None):
            head, _, old = fullname.partition(".")
            if head != self.package or old not in MOVED:
                return None
            return ModuleSpec(fullname, self)

        def create_module(self, spec):
            module = importlib.import_module(f"{self.package}.{MOVED[spec.name.partition('.')[2]]}")
            spec.loader_state = module.__spec__  # the import system overwrites __spec__ with ours
            return module

        def exec_module(self, module):
            module.__spec__ = module.__spec__.loader_state  # the real module keeps its own spec

    if not any(type(f).__name__ == "OldPaths" and getattr(f, "package", None) == __name__ for f in sys.meta_path):
        sys.meta_path.append(OldPaths())


_install_old_paths()
