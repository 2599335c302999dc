"""Locate files of the top-level ``resources/`` folder, installed or in a checkout."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def resources_root() -> Path:
    """The folder that holds prompt profiles, bundled models and sample cases."""
    from importlib.util import find_spec

    try:  # installed: setup.cfg maps resources/ to the data-only package napari_ibis.resources
        spec = find_spec("napari_ibis.resources")
    except ModuleNotFoundError:
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "prompts").is_dir():
            return Path(location)
    return Path(__file__).resolve().parent.parent / "resources"  # a source checkout


def resource_path(*parts: str) -> Path:
    return resources_root().joinpath(*parts)


def read_text(*parts: str) -> str:
    return resource_path(*parts).read_text(encoding="utf-8")
