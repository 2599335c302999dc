"""Dataset folders of rendered trajectories, and their ShareGPT / LLaMA-Factory export.

A dataset folder holds ``samples.jsonl`` and ``images/*.png``. One line is one
chat sample in the ShareGPT layout that LLaMA-Factory (the release's SFT tool)
reads: ``messages`` with string contents where ``<image>`` marks each image,
``images`` with the PNG paths in order, plus ``trained`` (one flag per assistant
message: False for moves kept only as context), ``target_mask`` (a PNG under
``masks/`` of the named structure, for the target-map loss of
:mod:`training.sft.target_map`; older folders lack it) and the sample's provenance. The
ibis-release prompts already start with ``<image>``: that is where the release's
own training data put the image.

``napari-ibis data build CONFIG`` (:func:`build_dataset`, settings :class:`BuildConfig`) makes
such a folder from phantoms and the real sets, with a progress bar, and resumes where a
previous run stopped.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from training.config import check_choices
from training.data.trajectories import EXPERT_STOP_IOU
from training.samples import RenderedSample

IMAGE_TAG = "<image>"


def _flatten(message: dict) -> tuple[str, list[np.ndarray], int]:
    """(text with one <image> per image, the images, how many tags were added)."""
    texts, images = [], []
    for item in message["content"]:
        if item["type"] == "image":
            images.append(item["image"])
        else:
            texts.append(item["text"])
    text = "".join(texts)
    added = max(len(images) - text.count(IMAGE_TAG), 0)
    return IMAGE_TAG * added + text, images, added


def to_row(sample: RenderedSample, sample_id: str, folder: Path, meta: dict | None = None) -> dict:
    """A JSONL row for ``sample``; its images are written under ``folder/images``."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    messages, paths, added_tags = [], [], []
    for message in sample.messages:
        text, images, added = _flatten(message)
        for image in images:
            path = Path("images") / f"{_safe(sample_id)}_{len(paths)}.png"
            Image.fromarray(image).save(folder / path)
            paths.append(str(path))
        messages.append({"role": message["role"], "content": text})
        added_tags.append(added)
    row = {"id": sample_id, "messages": messages, "images": paths, "trained": sample.trained, "added_image_tags": added_tags}
    if sample.target_mask is not None:
        (folder / "masks").mkdir(exist_ok=True)
        row["target_mask"] = str(Path("masks") / f"{_safe(sample_id)}.png")
        Image.fromarray(sample.target_mask.astype(np.uint8) * 255).save(folder / row["target_mask"])
    return {**row, **(meta or {})}


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def from_row(row: dict, folder: Path) -> RenderedSample:
    """The RenderedSample of a JSONL row (images loaded from ``folder``), texts as rendered."""
    images = iter(np.asarray(Image.open(folder / p).convert("RGB")) for p in row["images"])
    messages = []
    for message, added in zip(row["messages"], row["added_image_tags"]):
        text = message["content"]
        content = [{"type": "image", "image": next(images)} for _ in range(text.count(IMAGE_TAG))]
        content.append({"type": "text", "text": text[len(IMAGE_TAG) * added:]})
        messages.append({"role": message["role"], "content": content})
    mask = np.asarray(Image.open(folder / row["target_mask"])) > 0 if row.get("target_mask") else None
    return RenderedSample(messages, list(row["trained"]), mask)


def read_dataset(folder: str | Path, count: int | None = None, seed: int = 0) -> list[RenderedSample]:
    """The samples of a dataset folder; with ``count``, a seeded draw of that many (only their images are read)."""
    folder = Path(folder)
    rows = [line for line in (folder / "samples.jsonl").read_text().splitlines() if line.strip()]
    if count is not None and count < len(rows):
        rows = random.Random(seed).sample(rows, count)
    return [from_row(json.loads(row), folder) for row in rows]


def export_sharegpt(folder: str | Path, out: str | Path, include_context: bool = False) -> Path:
    """A LLaMA-Factory dataset file (JSON list, ShareGPT layout) from a dataset folder.

    LLaMA-Factory trains every assistant turn, so samples with context-only moves
    are left out unless ``include_context``.
    """
    folder, out = Path(folder), Path(out)
    rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines() if line.strip()]
    records = [
        {"messages": row["messages"], "images": [str((folder / p).resolve()) for p in row["images"]]}
        for row in rows
        if include_context or all(row["trained"])
    ]
    out.write_text(json.dumps(records, indent=1) + "\n")
    return out


def sample_count(folder: Path) -> int:
    """How many chat samples a dataset folder holds."""
    return len((Path(folder) / "samples.jsonl").read_text().splitlines())


def written_ids(folder: Path) -> set[str]:
    """Ids of the samples already in a dataset folder."""
    index = folder / "samples.jsonl"
    return {json.loads(line)["id"] for line in index.read_text().splitlines() if line.strip()} if index.is_file() else set()


def append_samples(folder: Path, items: Iterable[tuple[str, RenderedSample, dict]], done: set[str] | None = None) -> int:
    """Append samples whose id is not in the folder yet (``done``: ids known to be there); returns how many."""
    folder.mkdir(parents=True, exist_ok=True)
    index = folder / "samples.jsonl"
    done = written_ids(folder) if done is None else done
    written = 0
    with index.open("a") as handle:
        for sample_id, sample, meta in items:
            if sample_id in done:
                continue
            handle.write(json.dumps(to_row(sample, sample_id, folder, meta)) + "\n")
            handle.flush()  # a run stopped midway resumes after the last whole line
            done.add(sample_id)
            written += 1
    return written


def source_samples(config: dict) -> list:
    """The phantoms of ``seeds`` (with ``absent_probability``) and the training side of the ``real`` sets."""
    from training.data.sources import colin27_aal, phantom_samples, split_by_group, stardist_nuclei

    samples = list(phantom_samples(range(*config["seeds"]), absent_probability=config["absent_probability"]))
    real = []
    if "nuclei" in config["real"]:
        real += list(stardist_nuclei())
    if "aal" in config["real"]:
        real += list(colin27_aal())
    return samples + split_by_group(real)[0]


def sample_rng(seed: int, sample) -> np.random.Generator:
    """A sample's own random stream, so that a resumed build makes exactly what a fresh one would."""
    return np.random.default_rng([seed, int.from_bytes(hashlib.sha256(sample.source.encode()).digest()[:8], "little")])


@dataclass
class BuildConfig:
    """A dataset folder of click-simulated trajectories (``napari-ibis data build CONFIG`` reads these keys)."""

    output: str  # the dataset folder to write (a run stopped midway resumes there)
    profile: Literal["ibis-release", "paper"] = "ibis-release"
    segmenter: str = "classical"  # litemedsam | classical | sam2:CHECKPOINT
    seeds: list = field(default_factory=lambda: [0, 100])  # phantom seeds, [first, stop)
    real: list = field(default_factory=list)  # "nuclei" and/or "aal": their training side is added
    stop_iou: float = EXPERT_STOP_IOU  # the simulated trajectory answers once the mask reaches this IoU
    max_steps: int = 8
    min_dice: float = 0.8  # trajectories that end below this Dice are left out
    absent_probability: float = 0.1  # share of phantoms that also get a "not present" question
    self_correction_fraction: float = 0.0  # share of trajectories with a wrong click and its repair
    first_move_only: bool = False  # only each sample's first decision (no segmenter runs)
    seed: int = 0
    teacher: dict = field(default_factory=dict)  # {url, model, api_key_env}: an endpoint that writes the click reasoning

    SECTIONS = {"teacher": ("url", "model", "api_key_env", "temperature", "timeout")}

    def __post_init__(self) -> None:
        check_choices(self)
        from napari_ibis.segmenters import check_spec

        if self.first_move_only is False:
            check_spec(self.segmenter)
        if len(self.seeds) != 2 or self.seeds[0] >= self.seeds[1]:
            raise ValueError(f"seeds must be [first, stop) with first < stop, not {self.seeds}")
        unknown = set(self.real) - {"nuclei", "aal"}
        if unknown:
            raise ValueError(f"real: unknown set {', '.join(sorted(unknown))} (known: aal, nuclei)")


def build_dataset(config: dict, progress=None) -> Path:
    """Trajectories from phantoms (and real sets) into a dataset folder; resumable.

    ``config``: the keys of :class:`BuildConfig` (checked first, one line for a mistake).
    """
    from napari_ibis.segmenters import build_segmenter
    from training.config import config_values
    from training.data.trajectories import first_move, keep, self_correction, simulate
    from training.samples import render

    config = config_values(BuildConfig, config, "data build config")
    folder = Path(config["output"])
    profile = config["profile"]
    first_only = config["first_move_only"]
    segmenter = None if first_only else build_segmenter(config["segmenter"])
    seed = config["seed"]
    samples = source_samples(config)
    options = {"stop_iou": config["stop_iou"], "max_steps": config["max_steps"]}
    if config["teacher"]:
        from training.data.teacher import Teacher

        options["reasoner"] = Teacher(**{"base_url": config["teacher"]["url"], **{
            k: v for k, v in config["teacher"].items() if k != "url"}})
    fraction = 0.0 if first_only else config["self_correction_fraction"]

    done = written_ids(folder)

    def items():
        for sample in (progress(samples) if progress else samples):
            # each sample draws from its own stream, so a resumed build makes exactly what a fresh one would
            rng = sample_rng(seed, sample)
            corrected = rng.random() < fraction
            sample_id = f"{sample.source}:{'self_correction' if corrected else 'plain'}"
            if f"{sample_id}:0" in done:
                continue  # made by an earlier run: resume without simulating it again
            if first_only:
                trajectory = first_move(sample, rng, options.get("reasoner"))
            else:
                trajectory = (self_correction(sample, segmenter, rng, undo=profile == "paper", **options)
                              if corrected else None) or simulate(
                    sample, segmenter, rng, **options)
            if not first_only and not keep(trajectory, options["max_steps"], config["min_dice"]):
                continue
            meta = {"kind": trajectory.kind, "target": sample.target, "modality": sample.modality,
                    "source": sample.source, "group": sample.group, "profile": profile}
            for index, rendered in enumerate(render(trajectory, profile)):
                yield f"{sample_id}:{index}", rendered, meta

    append_samples(folder, items(), done)
    (folder / "complete").write_text("all samples of this configuration are in samples.jsonl\n")
    if "reasoner" in options:
        counts = options["reasoner"].counts
        print(f"teacher: {counts['accepted']} thoughts accepted, {counts['rejected']} rejected, {counts['failed']} failed")
    return folder
