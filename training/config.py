"""A stage's configuration: a dataclass with typed fields, read from JSON or YAML.

Every stage (``napari-ibis sft``, ``grpo``, ``benchmark``, ``data build``, ``data
dagger``) reads its file through :func:`load_config`, which refuses in one line,
before any model loads or data are built: an unreadable file, an unknown or
missing key (also inside nested sections such as ``rewards:``, ``stream:``,
``tiny:``, ``lora:``), a value of the wrong kind, a choice that is not one of a
``Literal`` field's values, and settings the class itself refuses (its
``__post_init__``). ``--set key=value`` (``section.key=value`` inside a section)
overrides a field from the command line; ``--help`` lists the fields with their
help, which is the comment beside (or above) each field in the class.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import re
import textwrap
import types
import typing
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


def parse_value(text: str):
    """A value as YAML reads it (``1e-5`` a number, ``[0, 100]`` a list, ``true`` a bool)."""
    import yaml

    return yaml.load(text, Loader=_loader())


def read_config(path: str | Path) -> dict:
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        return parse_value(text)
    return json.loads(text)


def _error(message: str):
    from napari_ibis.errors import InputError

    return InputError(message)


# -- checking ----------------------------------------------------------------------------
def check_keys(config: dict, known: tuple[str, ...], required: tuple[str, ...], what: str) -> None:
    """One line (InputError) for a key ``what`` does not know, or a required one left out: a
    misspelt option would otherwise be ignored and its default used without a word."""
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise _error(f"{what}: unknown key {', '.join(unknown)} (known: {', '.join(known)})")
    missing = [key for key in required if key not in config]
    if missing:
        raise _error(f"{what}: missing {', '.join(missing)}")


def _kind(hint) -> str:
    """A hint in words, for messages and --help."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return " | ".join(repr(v) for v in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_kind(arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return "null"
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "text", list: "a list",
             dict: "a section", tuple: "a list"}
    return names.get(origin or hint, getattr(hint, "__name__", str(hint)))


def _fits(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if hint is typing.Any:
        return True
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return value is None
    base = origin or hint
    if base is bool:
        return isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base in (list, tuple):
        return isinstance(value, (list, tuple))
    if base is dict:
        return isinstance(value, dict)
    if base is str:
        return isinstance(value, str)
    return True


def check_choices(config) -> None:
    """ValueError for a ``Literal`` field of a config dataclass holding a value it does not list
    (called by each config's ``__post_init__``, so a config made in code is checked too)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        hint = hints.get(f.name)
        if typing.get_origin(hint) is typing.Literal and getattr(config, f.name) not in typing.get_args(hint):
            raise ValueError(f"{f.name} must be {_kind(hint)}, not {getattr(config, f.name)!r}")


def parse_config(cls, values: dict, where: str):
    """``cls(**values)`` after every check of the module docstring; InputError naming ``where``."""
    if not isinstance(values, dict):
        raise _error(f"{where}: expected `key: value` lines, found {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    required = tuple(name for name, f in fields.items()
                     if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    check_keys(values, tuple(fields), required, where)
    hints = typing.get_type_hints(cls)
    sections = getattr(cls, "SECTIONS", {})
    for name, value in values.items():
        hint = hints.get(name, typing.Any)
        if not _fits(value, hint):
            raise _error(f"{where}: {name} must be {_kind(hint)}, not {value!r}")
        if name in sections and isinstance(value, dict) and value:
            section = resolve_section(sections[name])
            if dataclasses.is_dataclass(section):
                parse_config(section, value, f"{where}: {name}")
            else:
                check_keys(value, tuple(section), (), f"{where}: {name}")
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise _error(f"{where}: {exc}") from None


def resolve_section(section):
    """A nested section's dataclass or known keys; a section may be named by a function that
    imports it (so that checking a config imports nothing heavy)."""
    if dataclasses.is_dataclass(section) or isinstance(section, (tuple, list, set)):
        return section
    return section()


def config_values(cls, values: dict, where: str) -> dict:
    """Checked values with every default filled in, for the stages that read a plain dict."""
    return dataclasses.asdict(parse_config(cls, values, where))


def apply_overrides(values: dict, overrides: list[str], where: str = "--set") -> dict:
    """``key=value`` (or ``section.key=value``) pairs put into a config's values."""
    values = dict(values)
    for item in overrides or ():
        key, sign, text = item.partition("=")
        if not sign or not key:
            raise _error(f"{where}: expected KEY=VALUE, not {item!r}")
        value = parse_value(text)
        if "." in key:
            section, _, inner = key.partition(".")
            values[section] = {**(values.get(section) or {}), inner: value}
        else:
            values[key] = value
    return values


def load_values(path: str | Path, overrides: list[str] | None = None) -> dict:
    """A config file's values with the ``--set`` overrides applied; one line if it cannot be read."""
    import yaml

    try:
        values = read_config(path)
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError: JSON parse errors
        raise _error(f"cannot read {path}: {' '.join(str(exc).split())}") from None
    if not isinstance(values, dict):
        raise _error(f"{path}: expected `key: value` lines, found {type(values).__name__}")
    return apply_overrides(values, overrides or [])


def load_config(cls, path: str | Path, overrides: list[str] | None = None):
    """The dataclass ``cls`` from a config file (and ``--set`` overrides), checked."""
    return parse_config(cls, load_values(path, overrides), str(path))


# -- help ----------------------------------------------------------------------------------
def field_help(cls) -> dict[str, str]:
    """Each field's help: the comment on its line in the class, or the comment lines just above it."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    helps = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            line = lines[node.end_lineno - 1]
            comment = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            if not comment:
                above, number = [], node.lineno - 2
                while number >= 0 and lines[number].strip().startswith("#"):
                    above.insert(0, lines[number].strip().lstrip("#").strip())
                    number -= 1
                comment = " ".join(above)
            helps[node.target.id] = comment
    return helps


def describe_fields(cls) -> str:
    """The fields of ``cls``, one paragraph each: name, kind, default, help."""
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f"default {f.default!r}"
        elif f.default_factory is not dataclasses.MISSING:
            default = f"default {f.default_factory()!r}"
        else:
            default = "required"
        head = f"  {f.name}: {_kind(hints.get(f.name, typing.Any))}, {default}"
        text = helps.get(f.name, "")
        out.append(head + ("\n" + textwrap.fill(text, 88, initial_indent="      ", subsequent_indent="      ") if text else ""))
    sections = getattr(cls, "SECTIONS", {})
    for name, section in sections.items():
        section = resolve_section(section)
        if dataclasses.is_dataclass(section):
            out.append(f"\n  {name}: (section)\n" + textwrap.indent(describe_fields(section), "  "))
    return "\n".join(out)


def config_parser(prog: str, cls, description: str, parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """``prog CONFIG [--set KEY=VALUE ...]`` whose --help lists the fields of ``cls`` (or
    those arguments added to ``parser``, e.g. a subcommand's)."""
    options = {"description": description, "formatter_class": argparse.RawDescriptionHelpFormatter,
               "epilog": "config keys:\n" + describe_fields(cls)}
    if parser is None:
        parser = argparse.ArgumentParser(prog=prog, **options)
    parser.add_argument("config", help="a JSON or YAML file with the keys below")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key (section.key for a key inside a section); repeatable")
    return parser
