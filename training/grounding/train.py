"""Fit the query-conditioned head (:class:`napari_ibis.grounding.head.PointerHead`) on frozen features.

Each training case is (slice, query, target): the target is the share of each grid cell
covered by the named structure, or nothing for an absent one. The loss is a per-cell
binary cross-entropy (every cell: is it the structure?) plus, for present structures, a
cross-entropy over the cells (where is it?) that trains the peak, which is where the first
click goes.

    napari-ibis pointer training/configs/pointer-v8.yaml
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from training.config import check_choices

from training.grounding.dataset import Slice


@dataclass
class Prepared:
    """One encoder's view of a set of slices, ready for the head."""

    features: "torch.Tensor"  # noqa: F821  (N, C, g, g) float16
    positions: "torch.Tensor"  # noqa: F821  (N, 4, g, g)
    valid: "torch.Tensor"  # noqa: F821  (N, g, g) bool: cells over the slice, not the padding
    framings: list
    slices: list[Slice]


def prepare(encoder, slices: list[Slice], grid: int = 32, log=None, body_box: str = "bright") -> Prepared:
    """Features pooled to about ``grid`` cells a side (64 -> 32 for the SAM encoders), positions
    (the body found the ``body_box`` way), valid cells."""
    import dataclasses

    import torch

    from napari_ibis.grounding.head import pool_features, position_channels
    from training.grounding.dataset import features_of

    features, framings = features_of(encoder, slices, log=log)
    features = pool_features(features, grid)
    framings = [dataclasses.replace(f, grid=features.shape[-1]) for f in framings]
    positions = torch.from_numpy(np.stack([position_channels(f, s.rgb, body_box) for f, s in zip(framings, slices)]))
    valid = torch.zeros(len(slices), framings[0].grid, framings[0].grid, dtype=torch.bool)
    for i, framing in enumerate(framings):
        rows, cols = framing.valid_cells
        valid[i, :rows, :cols] = True
    return Prepared(features, positions, valid, framings, slices)


class QueryBank:
    """Query vectors (sentence embedding + laterality) for templated queries about each name."""

    def __init__(self, encoder=None, per_name: int = 6, seed: int = 0) -> None:
        from napari_ibis.grounding.text import QueryEncoder

        self.encoder = encoder or QueryEncoder()
        self.per_name = per_name
        self.rng = np.random.default_rng(seed)
        self.vectors: dict[tuple[str, str], np.ndarray] = {}

    def texts(self, name: str, modality: str) -> list[str]:
        from training.data import text

        rng = np.random.default_rng(abs(hash((name, modality))) % (2**32))
        return [f"segment the {name}"] + [text.query(name, modality, rng) for _ in range(self.per_name - 1)]

    def vectors_for(self, name: str, modality: str) -> np.ndarray:
        key = (name, modality)
        if key not in self.vectors:
            from napari_ibis.grounding.head import query_vectors

            self.vectors[key] = query_vectors(self.encoder, self.texts(name, modality))
        return self.vectors[key]

    def sample(self, name: str, modality: str) -> np.ndarray:
        options = self.vectors_for(name, modality)
        return options[self.rng.integers(len(options))]


def training_cases(data: Prepared, absent_per_slice: int = 2, seed: int = 0) -> list[tuple[int, str, np.ndarray | None]]:
    """(slice index, name, target grid or None) for every structure on every slice, plus a few absent names."""
    rng = np.random.default_rng(seed)
    cases = []
    for index, (item, framing) in enumerate(zip(data.slices, data.framings)):
        for name, mask in item.masks.items():
            cases.append((index, name, framing.to_grid(mask)))
        if item.absent:
            for name in rng.choice(item.absent, size=min(absent_per_slice, len(item.absent)), replace=False):
                cases.append((index, str(name), None))
    return cases


def loss_of(logits, targets, present, valid):
    """Per-cell BCE (positives weighted 4x) + cell cross-entropy for the present cases."""
    import torch
    import torch.nn.functional as F

    weight = valid.float()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none", pos_weight=torch.tensor(4.0))
    bce = (bce * weight).sum() / weight.sum()
    masked = logits.masked_fill(~valid, -1e4).flatten(1)
    share = (targets * weight).flatten(1)
    share = share / share.sum(1, keepdim=True).clamp(min=1e-6)
    ce = -(share * F.log_softmax(masked, dim=1)).sum(1)
    ce = (ce * present).sum() / present.sum().clamp(min=1)
    return bce + 0.5 * ce


def fit(head, data: Prepared, bank: QueryBank, steps: int = 1500, slices_per_step: int = 12, queries_per_slice: int = 4,
        lr: float = 3e-3, seed: int = 0, log=print, weights: np.ndarray | None = None) -> dict:
    """Train ``head`` in place (each step: a few slices, several queries on each); returns
    timing and the last loss. ``weights``: how likely each slice is to be drawn (uniform if None)."""
    import torch

    torch.manual_seed(seed)
    by_slice: dict[int, list] = {}
    for case in training_cases(data, seed=seed):
        by_slice.setdefault(case[0], []).append(case)
    indices = sorted(by_slice)
    chance = None
    if weights is not None:
        chance = np.asarray([weights[i] for i in indices], dtype=float)
        chance /= chance.sum()
    rng = np.random.default_rng(seed)
    optimiser = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=max(0.1, 3 / steps))
    grid = data.valid.shape[-1]
    started, losses = time.perf_counter(), []
    head.train()
    for step in range(steps):
        chosen_slices = rng.choice(indices, size=min(slices_per_step, len(indices)), replace=False, p=chance)
        chosen = [by_slice[i][j] for i in chosen_slices for j in rng.integers(len(by_slice[i]), size=queries_per_slice)]
        index = torch.as_tensor(chosen_slices)
        targets = torch.from_numpy(np.stack([c[2] if c[2] is not None else np.zeros((grid, grid), np.float32)
                                             for c in chosen]))
        present = torch.tensor([c[2] is not None for c in chosen], dtype=torch.float32)
        query = torch.from_numpy(np.stack([bank.sample(c[1], data.slices[c[0]].modality) for c in chosen]))
        logits = head(features=data.features[index], positions=data.positions[index], query=query,
                      per_slice=queries_per_slice)
        loss = loss_of(logits, targets, present, data.valid[index].repeat_interleave(queries_per_slice, dim=0))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        if log and (step + 1) % max(1, steps // 10) == 0:
            log(f"step {step + 1}/{steps}: loss {np.mean(losses[-50:]):.4f} ({time.perf_counter() - started:.0f} s)")
    head.eval()
    return {"steps": steps, "seconds": time.perf_counter() - started, "final_loss": float(np.mean(losses[-50:])),
            "cases": sum(len(v) for v in by_slice.values())}


def predict(head, data: Prepared, index: int, query_vector: np.ndarray, cells=None) -> np.ndarray:
    """The head's probability per pixel of slice ``index`` (upsampled from the grid); ``cells``:
    that slice's query-independent part (``head.cells``), when several queries ask about it."""
    import torch

    with torch.inference_mode():
        if cells is None:
            cells = head.cells(data.features[index:index + 1], data.positions[index:index + 1])
        logits = head(cells=cells, query=torch.from_numpy(query_vector[None]))[0]
    logits = logits.masked_fill(~data.valid[index], -20.0)
    return data.framings[index].to_image(torch.sigmoid(logits).numpy())


SIZE_BINS = (("< 100 px", 0, 100), ("100-500 px", 100, 500), ("> 500 px", 500, 10**9))


def evaluate(head, data: Prepared, bank: QueryBank, absent_per_slice: int = 3, seed: int = 1) -> dict:
    """First-click hits (the peak inside the named structure) by structure size, IoU of the
    p > 0.5 region, and "not present" answers on absent names, at the head's threshold."""
    rng = np.random.default_rng(seed)
    threshold = head.config.presence_threshold
    rows = []
    import torch

    for index, item in enumerate(data.slices):
        with torch.inference_mode():
            cells = head.cells(data.features[index:index + 1], data.positions[index:index + 1])
        asked = [(name, mask) for name, mask in item.masks.items()]
        if item.absent:
            asked += [(str(n), None) for n in rng.choice(item.absent, size=min(absent_per_slice, len(item.absent)), replace=False)]
        for name, mask in asked:
            vectors = bank.vectors_for(name, item.modality)
            probability = predict(head, data, index, vectors[rng.integers(len(vectors))], cells)
            peak = np.unravel_index(int(np.argmax(probability)), probability.shape)
            said_present = float(probability[peak]) >= threshold
            row = {"slice": item.source, "kind": item.kind, "name": name, "present": mask is not None,
                   "said_present": said_present, "peak_probability": float(probability[peak])}
            if mask is not None:
                region = probability >= 0.5
                union = (region | mask).sum()
                row.update(area=int(mask.sum()), hit=bool(mask[peak]),
                           iou=float((region & mask).sum() / union) if union else 0.0)
            rows.append(row)
    return {"summary": summarise(rows), "rows": rows}


def summarise(rows: list[dict]) -> dict:
    present = [r for r in rows if r["present"]]
    absent = [r for r in rows if not r["present"]]
    out = {"structures": len(present), "first_click_inside": _mean([r["hit"] for r in present]),
           "map_iou": _mean([r["iou"] for r in present]), "absent_asked": len(absent),
           "not_present_correct": _mean([not r["said_present"] for r in absent]),
           "not_present_false": _mean([not r["said_present"] for r in present])}
    for label, low, high in SIZE_BINS:
        chosen = [r for r in present if low <= r["area"] < high]
        out[f"first_click_inside {label}"] = _mean([r["hit"] for r in chosen])
        out[f"count {label}"] = len(chosen)
    return out


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


@dataclass
class PointerConfig:
    """The pointer agent's training (``napari-ibis pointer CONFIG`` reads these keys)."""

    output: str  # the model folder to write
    encoder: Literal["mobilesam", "litemedsam"] = "mobilesam"  # the frozen image encoder (benchmarks/vision_probe.py)
    steps: int = 2000
    slices_per_step: int = 12
    queries_per_slice: int = 4  # names asked about each slice in a step (present ones and a few absent ones)
    learning_rate: float = 3e-3
    phantoms: int = 200  # phantom images (seeds 0..N-1) next to the real training slices
    totalseg_step_mm: float = 6.0  # axial spacing of the TotalSegmentator training slices
    aal_step: int = 2  # every Nth axial slice of the AAL training side
    body_box: Literal["bright", "largest_part"] = "bright"  # how the position channels find the body (grounding.head.body_box)
    max_false_absent: float = 0.03  # the presence threshold is the highest that calls at most this share of training structures absent
    threads: int = 2
    seed: int = 0
    init: str = ""  # a pointer model folder to fine-tune (its encoder must match); empty: a new head
    sessions: list = field(default_factory=list)  # training inboxes of kept sessions (napari_ibis.inbox) to learn from
    session_share: float = 0.5  # with sessions: the share of each step's slices drawn from them
    atlas: bool = False  # also write atlas.npz (the training scans' labelled slices: write_atlas)
    augment: int = 0  # altered copies of each real CT/MR training slice (dataset.augmented); 0: none
    recontrast: int = 0  # copies of each real CT training slice in a random contrast, as MRI (dataset.recontrasted)

    def __post_init__(self) -> None:
        check_choices(self)
        if not 0.0 < self.session_share < 1.0:
            raise ValueError(f"session_share must be between 0 and 1, not {self.session_share}")


def presence_threshold(head, data: Prepared, bank: QueryBank, max_false_absent: float, seed: int = 2) -> float:
    """The highest threshold under which at most ``max_false_absent`` of the present training
    structures would be called absent (their peak probability falls below it)."""
    rows = evaluate(head, data, bank, absent_per_slice=0, seed=seed)["rows"]
    peaks = np.sort([r["peak_probability"] for r in rows if r["present"]])
    return float(np.clip(np.quantile(peaks, max_false_absent) if len(peaks) else 0.5, 0.05, 0.95))


def main(argv=None) -> int:
    """Train the pointer agent's head on frozen features and write a model folder the widget loads.

    ``napari-ibis pointer CONFIG``."""
    import json
    import shutil

    import torch

    from napari_ibis.grounding.encoders import build_encoder
    from napari_ibis.policies.pointer import ATLAS_FILE
    from napari_ibis.grounding.head import PointerHead, PointerHeadConfig
    from training.config import config_parser, load_config
    from training.grounding.dataset import (aal_slices, augmented, nuclei_slices, phantom_slices, recontrasted,
                                            session_slices, totalseg_slices)

    parser = config_parser("napari-ibis pointer", PointerConfig, main.__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    config = load_config(PointerConfig, args.config, args.set)
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    encoder = build_encoder(config.encoder)
    patients = totalseg_slices("train", step_mm=config.totalseg_step_mm)
    slices = (patients + augmented(patients, config.augment, seed=config.seed)
              + recontrasted(patients, config.recontrast, seed=config.seed)
              + aal_slices("train", step=config.aal_step) + nuclei_slices("train") + phantom_slices(range(config.phantoms)))
    kept = [item for inbox in config.sessions for item in session_slices(inbox)]
    if config.sessions and not kept:
        raise ValueError(f"sessions: no kept sessions in {', '.join(map(str, config.sessions))}")
    weights = None
    if kept:  # the kept sessions get session_share of the draws, the rest keeps what was learnt
        weights = np.r_[np.full(len(slices), (1 - config.session_share) / len(slices)),
                        np.full(len(kept), config.session_share / len(kept))]
    slices += kept
    data = prepare(encoder, slices, log=print, body_box=config.body_box)
    if config.init:
        head = PointerHead.from_pretrained(config.init)
        if head.config.encoder != encoder.name:
            raise ValueError(f"init: {config.init} was trained on {head.config.encoder} features, not {encoder.name}")
        if head.config.body_box != config.body_box:
            raise ValueError(f"init: {config.init} finds the body the {head.config.body_box!r} way, not {config.body_box!r}")
    else:
        head = PointerHead(PointerHeadConfig(encoder=encoder.name, feature_channels=int(data.features.shape[1]),
                                             grid=int(data.features.shape[-1]), body_box=config.body_box))
    bank = QueryBank(seed=config.seed)
    report = fit(head, data, bank, steps=config.steps, slices_per_step=config.slices_per_step,
                 queries_per_slice=config.queries_per_slice, lr=config.learning_rate, seed=config.seed,
                 weights=weights)
    head.config.presence_threshold = presence_threshold(head, data, bank, config.max_false_absent)
    head.config.structures = taught_structures(slices, head.config.structures)
    head.save_pretrained(config.output)
    report |= {"presence_threshold": head.config.presence_threshold, "slices": len(slices),
               "kinds": {k: sum(s.kind == k for s in slices) for k in sorted({s.kind for s in slices})},
               "sessions": len(kept),
               "config": config.__dict__}
    if config.atlas:
        report["atlas"] = str(write_atlas(config.output))
    elif config.init and (Path(config.init) / ATLAS_FILE).is_file():  # a fine-tune keeps the atlas it started with
        shutil.copyfile(Path(config.init) / ATLAS_FILE, Path(config.output) / ATLAS_FILE)
        report["atlas"] = f"kept from {config.init}"
    Path(config.output, "training_summary.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))
    return 0


def taught_structures(slices, earlier=()) -> list[str]:
    """Every name the head was asked for on ``slices`` (present or absent), with those a
    fine-tuned folder was taught before (``earlier``): the vocabulary the agent then holds
    queries to (:mod:`napari_ibis.grounding.vocabulary`)."""
    return sorted({*earlier, *(name for item in slices for name in (*item.masks, *item.absent))})


def write_atlas(folder: str | Path, step_mm: float = 3.0, aal_step: int = 2, kinds: bool = True) -> Path:
    """Write ``folder``/atlas.npz from the training scans' axial slices, which the pointer
    agent then uses as a prior (:mod:`napari_ibis.grounding.atlas`): TotalSegmentator's
    reference volumes never held out, ``step_mm`` apart, and every ``aal_step``-th slice of
    the Colin27 brain's AAL training side (0: none). The AAL names are the atlas's
    ``regions``: the agent places them as a start mask (their borders are the atlas's).
    With ``kinds``, each slice's kind of scan (TotalSegmentator's "trunk", Colin27's "head")
    and its scan descriptor by the folder's image encoder go in too (one encoder pass per
    slice, cached like the training features), so the agent can tell a structure asked for on
    another kind of scan (:meth:`~napari_ibis.grounding.atlas.SliceAtlas.kind_elsewhere`),
    and so do the descriptors of every slice of pyradiomics' ``KIND_REFERENCES`` (a breast
    MRI and a chest CT: their kind known, nothing labelled; without them a chest CT at the
    lungs' level looked like a head to the agent)."""
    import json
    import sys

    from napari_ibis import assets
    from napari_ibis.grounding.atlas import SliceAtlas, scan_descriptor
    from napari_ibis.grounding.encoders import build_encoder
    from napari_ibis.grounding.head import PointerHeadConfig
    from napari_ibis.policies.pointer import ATLAS_FILE
    from training.data.sources import AAL_DIR, KIND_REFERENCES
    from training.grounding.dataset import aal_slices, features_of, kind_slices, totalseg_slices

    if aal_step and not (AAL_DIR / "aal.nii.gz").is_file():
        raise FileNotFoundError(f"the Colin27 brain is not in {AAL_DIR} (apt-get install mricron-data), "
                                f"or write an atlas without it (--aal-step 0)")
    path = Path(folder) / ATLAS_FILE
    brain = aal_slices("train", step=aal_step) if aal_step else []
    regions = {name for item in brain for name in item.masks}
    trunk = totalseg_slices("train", step_mm=step_mm)
    slices, extra = trunk + brain, {}
    if kinds:
        config = json.loads((Path(folder) / "config.json").read_text())
        encoder = build_encoder(config.get("encoder", PointerHeadConfig().encoder))
        references = kind_slices(KIND_REFERENCES) if assets.available("pyradiomics") else []
        if not references:  # the atlas still works; only its kinds of scan know fewer scans
            print(f"napari-ibis atlas: pyradiomics' scans are not fetched ({assets.FETCH_COMMAND}), so the atlas "
                  f"keeps no unlabelled kind references: a chest CT may read as a head", file=sys.stderr)
        described = slices + [item for _, item in references]
        features, framings = features_of(encoder, described)
        extra = {"kinds": ["trunk"] * len(trunk) + ["head"] * len(brain) + [kind for kind, _ in references],
                 "encoder": encoder.name,
                 "descriptors": [scan_descriptor(f.float(), framing, item.rgb)
                                 for f, framing, item in zip(features, framings, described)]}
    SliceAtlas.from_slices(slices, regions, **extra).save(path)
    return path


def write_brain_atlas(folder: str | Path) -> Path:
    """Write ``folder``/brain_atlas.npz: the Colin27 brain (the whole head and the brain alone)
    at 2 mm with its AAL regions at 1 mm, which the pointer agent registers onto a brain volume
    (:mod:`napari_ibis.grounding.brain_atlas`). The whole Colin27 volume: on a volume, no
    Colin27 slice is held out (the agents' AAL held-out figures are slices without a volume)."""
    from napari_ibis.grounding.brain_atlas import ATLAS_FILE, VolumeAtlas
    from training.data.sources import AAL_DIR, _aal_names, aal_target_name

    files = {"head": AAL_DIR / "ch2.nii.gz", "brain": AAL_DIR / "ch2bet.nii.gz"}
    missing = [str(f) for f in (*files.values(), AAL_DIR / "aal.nii.gz") if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} not found (apt-get install mricron-data)")
    names = {code: aal_target_name(raw) for code, raw in _aal_names(AAL_DIR / "aal.nii.txt").items()}
    path = Path(folder) / ATLAS_FILE
    VolumeAtlas.from_files(files, AAL_DIR / "aal.nii.gz", names).save(path)
    return path


def atlas_command(argv=None) -> int:
    """Add an atlas prior (the training scans' labelled slices) to a pointer model folder.

    ``napari-ibis atlas FOLDER``: writes FOLDER/atlas.npz; the pointer agent loaded from the
    folder then weights its map by where the atlas puts the structure a query names. And
    FOLDER/brain_atlas.npz, which it registers onto a brain volume for AAL's regions."""
    import argparse

    from napari_ibis.errors import ModelError

    parser = argparse.ArgumentParser(prog="napari-ibis atlas", description=atlas_command.__doc__.splitlines()[0])
    parser.add_argument("folder", help="a pointer model folder (config.json with model_type ibis_pointer)")
    parser.add_argument("--step-mm", type=float, default=3.0, help="axial spacing of the TotalSegmentator slices")
    parser.add_argument("--aal-step", type=int, default=2,
                        help="every Nth slice of the Colin27 brain's AAL training side (0: no brain slices)")
    parser.add_argument("--no-kinds", action="store_true",
                        help="leave out the kinds of scan and their descriptors (no image encoder pass)")
    parser.add_argument("--what", choices=("both", "slices", "brain"), default="both",
                        help="slices: atlas.npz only; brain: brain_atlas.npz only (the Colin27 volume, seconds)")
    args = parser.parse_args(argv)
    config = Path(args.folder) / "config.json"
    if not config.is_file() or '"ibis_pointer"' not in config.read_text():
        raise SystemExit(f"napari-ibis atlas: {args.folder} is not a pointer model folder (no ibis_pointer config.json)")
    try:
        if args.what != "brain":
            _report_slice_atlas(write_atlas(args.folder, args.step_mm, args.aal_step, kinds=not args.no_kinds))
        if args.what != "slices":
            _report_brain_atlas(write_brain_atlas(args.folder))
    except (FileNotFoundError, ModelError) as exc:  # the Colin27 brain, or a registry file not fetched
        raise SystemExit(f"napari-ibis atlas: {exc}") from None
    return 0


def _report_slice_atlas(path: Path) -> None:
    from napari_ibis.grounding.atlas import SliceAtlas

    atlas = SliceAtlas.load(path)
    kinds = "" if atlas.kinds is None else ", kinds of scan: " + ", ".join(
        f"{kind} {int((atlas.kinds == kind).sum())}" for kind in sorted(set(atlas.kinds))) + (
        f" slices, {len(atlas.kinds) - len(atlas.grey)} of them unlabelled references")
    print(f"{path}: {len(atlas.grey)} slices, {len(atlas.names)} structures ({len(atlas.regions)} placed as regions)"
          f"{kinds}, {path.stat().st_size / 1e6:.1f} MB")


def _report_brain_atlas(path: Path) -> None:
    from napari_ibis.grounding.brain_atlas import VolumeAtlas

    atlas = VolumeAtlas.load(path)
    grid = "x".join(map(str, next(iter(atlas.greys.values())).shape))
    print(f"{path}: a brain volume {grid} at {atlas.spacing:g} mm ({', '.join(sorted(atlas.greys))}), "
          f"{len(atlas.names)} regions at {atlas.label_spacing:g} mm, {path.stat().st_size / 1e6:.1f} MB")

if __name__ == "__main__":
    raise SystemExit(main())
