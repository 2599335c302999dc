"""Read a stage's configuration file (JSON, or YAML by its suffix)."""

from __future__ import annotations

import json
import re
from pathlib import Path

# YAML 1.1 (PyYAML) reads `1e-5` as a string: it wants `1.0e-5`. Numbers in exponent form are
# read as floats here, as YAML 1.2 and JSON read them, so `learning_rate: 1e-5` means what it says.
_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                        |[-+]?\.(?:inf|Inf|INF)
                        |\.(?:nan|NaN|NAN))$""", re.X)


def _loader():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
    return Loader


def read_config(path: str | Path) -> dict:
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        return yaml.load(text, Loader=_loader())
    return json.loads(text)
