"""benchmarks/validate_sweep.py loaded as a module (it is a script, not part of the package)."""
import importlib.util

from paths import REPO

SCRIPT = REPO / "benchmarks" / "validate_sweep.py"


def load_sweep():
    spec = importlib.util.spec_from_file_location("validate_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
