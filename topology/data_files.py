"""The catalogs under topology/data/ read once each: YAML loaded safely, with libyaml's safe loader
where PyYAML was built with it (a tenth of the pure-Python loader's time, which was a sixth of a
`plan`'s start-up)."""
from __future__ import annotations

from pathlib import Path

import yaml

DATA_DIR = Path(__file__).parent / "data"
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_data_yaml(name: str):
    """topology/data/NAME parsed as YAML by a safe loader (plain data only: no tags, no objects)."""
    with open(DATA_DIR / name, encoding="utf-8") as f:
        return yaml.load(f, Loader=SAFE_LOADER)  # noqa: S506 (a safe loader)
