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


_KINDS = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def load_config(cls, path: str | Path):
    """The dataclass ``cls`` (SFTConfig, GRPOConfig, EvalConfig) from a config file.

    Every mistake in the file (unreadable, an unknown or missing key, a value of the wrong
    kind, a setting the class refuses) becomes one line naming the file (InputError).
    """
    import dataclasses

    import yaml

    from napari_ibis.errors import InputError

    try:
        values = read_config(path)
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError: JSON parse errors
        raise InputError(f"cannot read {path}: {' '.join(str(exc).split())}") from exc
    if not isinstance(values, dict):
        raise InputError(f"{path}: expected `key: value` lines, found {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    required = tuple(name for name, f in fields.items()
                     if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    check_keys(values, tuple(fields), required, str(path))
    for name, value in values.items():
        kinds = _KINDS.get(str(fields[name].type))
        if kinds and (not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool))):
            wanted = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text"}
            raise InputError(f"{path}: {name} must be {wanted[str(fields[name].type)]}, not {value!r}")
    try:
        return cls(**values)
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from exc


def check_keys(config: dict, known: tuple[str, ...], required: tuple[str, ...], what: str) -> None:
    """One line (InputError) for a key ``what`` does not know, or a required one left out: a
    misspelt option would otherwise be ignored and its default used without a word."""
    from napari_ibis.errors import InputError

    unknown = sorted(set(config) - set(known))
    if unknown:
        raise InputError(f"{what}: unknown key {', '.join(unknown)} (known: {', '.join(known)})")
    missing = [key for key in required if key not in config]
    if missing:
        raise InputError(f"{what}: missing {', '.join(missing)}")
