"""Agent policies behind one protocol: ``vlm`` (a local vision-language model folder),
``pointer`` (a local pointer-agent folder: pretrained encoder + query-conditioned head),
``remote`` (OpenAI-compatible endpoint) and ``oracle`` (click simulator with ground truth)."""

from __future__ import annotations

from pathlib import Path

from .._resources import resource_path
from ..errors import ModelError
from .base import Policy, PolicyRequest

__all__ = ["Policy", "PolicyRequest", "can_locate", "check_model", "check_query", "default_model_folder", "load_policy",
           "read_query", "vocabulary_of"]

POINTER_MODEL = ("models", "pointer")  # v8: the default once its encoders are fetched
DEFAULT_MODEL = ("models", "default")  # v7: the small VLM trained from scratch, needs nothing fetched


def default_model_folder() -> Path:
    """The project's own agent: the pointer agent (v8, ``resources/models/pointer``) when the
    files it reads at load time were fetched at set-up, else the small VLM (v7,
    ``resources/models/default``). v8 became the default by beating v7 on every held-out
    real set without falling below it on the phantoms (docs/BENCHMARKS.md)."""
    from .. import assets

    pointer = resource_path(*POINTER_MODEL)
    if (pointer / "config.json").is_file() and all(assets.available(n) for n in ("mobile_sam", "minilm")):
        return pointer
    folder = resource_path(*DEFAULT_MODEL)
    if not (folder / "config.json").is_file():
        raise ModelError(
            f"the bundled default agent is missing from this installation ({folder}): reinstall napari-ibis, "
            "or give a model folder (--model DIR, e.g. the released IBISAgent 7B weights) "
            "or an endpoint (--model http://HOST:PORT/v1)"
        )
    return folder


def check_model(model: str | Path | None) -> None:
    """Refuse at once, before anything heavy loads, a model that cannot be loaded: a missing
    folder, one without config, weights or processor, an unsupported model type."""
    text = str(model) if model is not None else ""
    if text.startswith(("http://", "https://")):
        return
    from .vlm import inspect_model_folder

    inspect_model_folder(Path(text) if text else default_model_folder())


def can_locate(model: str | Path | None) -> bool:
    """Whether the model ``--model`` names can look for a structure through a volume
    (:meth:`Policy.locate`): the pointer agent can; a language model (local or served) answers
    in words only. Read from the folder's config, before anything heavy loads."""
    text = str(model) if model is not None else ""
    if text.startswith(("http://", "https://")):
        return False
    from .vlm import POINTER_TYPE, inspect_model_folder

    return inspect_model_folder(Path(text) if text else default_model_folder()) == POINTER_TYPE


def vocabulary_of(model: str | Path | None):
    """The structures the model ``--model`` names was taught (a
    :class:`~napari_ibis.grounding.vocabulary.Vocabulary`, read from the pointer agent's config
    before anything heavy loads); None for a language model, local or served, which is not
    limited to a list, or a folder without a config."""
    text = str(model) if model is not None else ""
    if not can_locate(model):
        return None
    import json

    from ..grounding.vocabulary import Vocabulary

    config = (Path(text) if text else default_model_folder()) / "config.json"
    return Vocabulary(json.loads(config.read_text()).get("structures") or []) if config.is_file() else None


def read_query(model: str | Path | None, query: str) -> tuple[str, str | None]:
    """The query the model ``--model`` names will work on, and the line saying how it was read
    where that is not ``query`` as typed: a structure's name misspelt where one it was taught
    is spelled almost alike ("highlight the livr": the liver;
    :meth:`~napari_ibis.grounding.vocabulary.Vocabulary.misspelt`), several structures named of
    which a run takes the first ("the liver and the spleen":
    :meth:`~napari_ibis.grounding.vocabulary.Vocabulary.several`); else ``(query, None)``. Read
    before anything heavy loads."""
    vocabulary = vocabulary_of(model)
    if vocabulary is None:
        return query, None
    lines = []
    for reading in (vocabulary.misspelt, vocabulary.several):
        read = reading(query)
        if read is not None:
            query = read.fixed
            lines.append(read.line)
    return query, "; ".join(lines) or None


def check_query(model: str | Path | None, query: str) -> str | None:
    """What a person must be told before the model ``--model`` names works on ``query``, read
    before anything heavy loads: a lesion it was never taught, refused
    (:class:`~napari_ibis.errors.InputError`); a structure it was never taught, the line saying
    that its answer will be a guess (returned); None where it knows what the query names."""
    from ..errors import InputError

    vocabulary = vocabulary_of(model)
    untaught = None if vocabulary is None else vocabulary.untaught(query)
    if untaught is not None and untaught.refused:
        raise InputError(untaught.line)
    return None if untaught is None else untaught.line


def load_policy(model: str | Path | None, device: str = "auto", remote_model: str = "ibis", max_new_tokens: int = 512) -> Policy:
    """A policy for ``--model``: a local folder, an ``http(s)://`` endpoint, or ``None`` for the default."""
    text = str(model) if model is not None else ""
    if text.startswith(("http://", "https://")):
        from .remote import RemotePolicy

        return RemotePolicy(text, model=remote_model)
    from .vlm import POINTER_TYPE, VLMPolicy, inspect_model_folder

    folder = Path(text) if text else default_model_folder()
    if inspect_model_folder(folder) == POINTER_TYPE:
        from .pointer import PointerPolicy

        return PointerPolicy(folder, device=device)
    return VLMPolicy(folder, device=device, max_new_tokens=max_new_tokens)
