"""Locate files of the top-level ``resources/`` folder, installed or in a checkout."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def resources_root() -> Path:
    """The folder that holds prompt profiles, bundled models and sample cases."""
    from importlib.resources import files

    try:
        installed = Path(str(files("napari_ibis.resources")))
    except ModuleNotFoundError:  # a source checkout that was never installed
        installed = None
    if installed is not None and (installed / "prompts").is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / "resources"


def resource_path(*parts: str) -> Path:
    return resources_root().joinpath(*parts)


def read_text(*parts: str) -> str:
    return resource_path(*parts).read_text(encoding="utf-8")
