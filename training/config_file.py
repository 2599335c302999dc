"""Read a stage's configuration file (JSON, or YAML by its suffix)."""

from __future__ import annotations

import json
from pathlib import Path


def read_config(path: str | Path) -> dict:
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        return yaml.safe_load(text)
    return json.loads(text)
