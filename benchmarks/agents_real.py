"""The agents on held-out real scans and phantoms: does the first click land on the named
structure, how good is the final mask, does it say "not present" when it should?

Sets (nothing here is trained on by any agent of this project):

* TotalSegmentator held-out patients (real; an upper-abdomen CT series and an abdominal
  MR; labels are TotalSegmentator's own outputs, not manual): ``totalseg_reference(side=
  "held_out")`` (91 structure slices), plus one absent name per slice for "not present"
  (a structure labelled in that volume but not on that slice), 30 of them;
* Colin27 AAL held-out slices (real MRI, atlas labels): the slices of the AAL evaluation
  side used everywhere in this project, 60 regions of at least 100 pixels drawn from all
  the regions on them, plus four absent names per slice;
* stardist nuclei (real fluorescence): the right half of the image (the pointer agent
  trains on the left half) in four tiles; "segment the nucleus" has many right answers,
  so IoU is taken with the nucleus the final mask overlaps most;
* real tumours (pyradiomics' five test cases: two brain MRI, a breast MRI crop, two lung
  CT; drawn masks): every axial slice where the tumour covers at least 20 pixels (27);
  no agent of this project trains on them;
* phantoms (synthetic) from seed 90000, 10% of questions about an absent structure;
* a structure asked for by its kind, without the side, lobe or level the labels name (``--sets
  kinds``: "segment the kidney" where the left or the right kidney is on the slice; any member
  is right, scored as the nuclei are): on the held-out TotalSegmentator slices 4 mm apart and
  the held-out Colin27 slices, one kind per slice drawn among those with a member of 100 px;
* a structure asked for by another name a radiologist uses (``--sets aliases``: "the IVC", "the
  portal vein", "the psoas"; ``napari_ibis.grounding.names.ALIASES``), one per held-out
  TotalSegmentator slice among those whose structure (or a member of its kind) covers 100 px;
* an AAL region asked for by its full name (``--sets aal-full``: "the left inferior frontal gyrus,
  opercular part"), 60 on the held-out Colin27 slices;
* the right and the left lung on every third slice of pyradiomics' two chest CTs (``--sets
  lungs``; real scans, lungs labelled by a -400 HU threshold, ``threshold_lungs``: no agent
  here was taught a chest CT's lungs, and the atlas keeps lung1's slices only as a kind of scan),
  and where both lungs are large a bladder or a kidney asked for (absent);
* a structure asked for on another kind of scan (``--sets elsewhere``, every case absent):
  an abdominal organ on the MNI152 template's slices and on the held-out Colin27 slices, a
  brain region on the held-out TotalSegmentator slices (CT and MR), one question per slice.

Per case: first click inside the named structure (any instance for nuclei; where the agent
placed a mask before clicking, an atlas region, that mask's innermost point), final IoU and
Dice with the default segmenter, steps (turns; a placement is not one), seconds (encoders included, 2 cores unless
--threads says otherwise). Per set: those means, by structure size for the first click,
and the share of right and of false "not present" answers, of queries naming something the agent
was not taught (``untaught``: it guesses and says so) and of those it refuses (``refused``: an
untaught lesion; napari_ibis.grounding.vocabulary).

    python benchmarks/agents_real.py --agent v8=resources/models/pointer --agent v7=resources/models/default

``--volumes`` hands each TotalSegmentator slice the volume it was cut from, as the CLI and the
widget do (the CT's Hounsfield units are then read; on these held-out patients only the first click
onto a bone or a muscle changes it).

Writes benchmarks/results/agents_real-NAME.json per agent (``--sets`` runs some sets and
keeps the others' earlier results) and prints the table of all agents measured so far
(``--table`` prints it alone).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
SIZES = (("< 100 px", 0, 100), ("100-500 px", 100, 500), ("> 500 px", 500, 10**9))


SETS = {"totalseg": "totalseg held-out (real CT/MR)", "aal": "aal held-out (real MRI)",
        "mni": "MNI152 template, AAL labels (a second brain)",
        "nuclei": "nuclei right half (real)", "tumours": "tumours (pyradiomics, real)",
        "phantoms": "phantoms held-out (synthetic)",
        "elsewhere": "asked on another kind of scan (real; all absent)",
        "kinds": "asked by kind, no side, lobe or level (real)",
        "aliases": "asked by another name (IVC, bladder, psoas; real)",
        "aal-full": "AAL regions asked by their full names (real MRI)",
        "lungs": "lungs on two chest CTs (pyradiomics, real; threshold labels)"}
TRUNK_NAMES = ("liver", "spleen", "left kidney", "right kidney", "stomach", "aorta", "pancreas", "urinary bladder")


def case_sets(phantoms: int, seed: int = 0, chosen=tuple(SETS)) -> dict:
    from training.data.sources import (Sample, colin27_aal, phantom_samples, radiomics_lesions, radiomics_lungs,
                                       split_by_group, totalseg_reference)
    from training.grounding.dataset import aal_slices, mni152_aal_slices, totalseg_slices

    rng = np.random.default_rng(seed)
    out = {}
    if "tumours" in chosen:
        out[SETS["tumours"]] = list(radiomics_lesions())
    if "mni" in chosen:
        out[SETS["mni"]] = brain_cases(mni152_aal_slices(), np.random.default_rng(seed + 1), absent_per_slice=1)
    if "elsewhere" in chosen:
        out[SETS["elsewhere"]] = elsewhere_cases(np.random.default_rng(seed + 2))
    if "kinds" in chosen:
        out[SETS["kinds"]] = kind_cases(np.random.default_rng(seed + 3))
    if "aliases" in chosen:
        out[SETS["aliases"]] = alias_cases(np.random.default_rng(seed + 4))
    if "aal-full" in chosen:
        out[SETS["aal-full"]] = full_name_cases(np.random.default_rng(seed + 5))
    if "lungs" in chosen:
        out[SETS["lungs"]] = list(radiomics_lungs())
    if not {"totalseg", "aal", "nuclei", "phantoms"} & set(chosen):
        return out
    totalseg = list(totalseg_reference(side="held_out"))
    absent = []
    for item in rng.permutation(totalseg_slices("held_out", step_mm=2.0))[:30]:
        name = item.absent[rng.integers(len(item.absent))]
        absent.append(Sample(item.rgb, np.zeros(item.rgb.shape[:2], bool), name, item.modality,
                             f"{item.source}:{name}:absent", item.source))
    held_groups = {s.group.replace("colin27:", "colin27-aal:") for s in split_by_group(list(colin27_aal()))[1]}
    aal_held = [item for item in aal_slices("held_out", step=1) if item.source in held_groups]
    out |= {
        SETS["totalseg"]: totalseg + absent,
        SETS["aal"]: brain_cases(aal_held, rng),
        SETS["nuclei"]: nuclei_tiles(),
        SETS["phantoms"]: list(phantom_samples(range(90000, 90000 + phantoms), absent_probability=0.1)),
    }
    return {name: out[name] for key, name in SETS.items() if key in chosen and name in out}


def brain_cases(slices, rng, present: int = 60, absent_per_slice: int = 4) -> list:
    """``present`` regions of at least 100 pixels drawn from the AAL ``slices``, and
    ``absent_per_slice`` names of regions not on each slice."""
    from training.data.sources import Sample

    cases = [Sample(item.rgb, mask, name, "MRI", f"{item.source}:{name}", item.source)
             for item in slices for name, mask in item.masks.items() if mask.sum() >= 100]
    cases = [cases[i] for i in sorted(rng.permutation(len(cases))[:present])]
    for item in list(slices) * absent_per_slice:
        name = item.absent[rng.integers(len(item.absent))]
        cases.append(Sample(item.rgb, np.zeros(item.rgb.shape[:2], bool), name, "MRI", f"{item.source}:{name}:absent",
                            item.source))
    return cases


def elsewhere_cases(rng) -> list:
    """A structure asked for on a slice of another kind of scan (all absent): an abdominal
    organ on the MNI152 template and on the held-out Colin27 slices, an AAL brain region on
    the held-out TotalSegmentator slices (CT and MR); one question per slice."""
    from training.data.sources import Sample, colin27_aal, split_by_group
    from training.grounding.dataset import aal_slices, mni152_aal_slices, totalseg_slices

    held_groups = {s.group.replace("colin27:", "colin27-aal:") for s in split_by_group(list(colin27_aal()))[1]}
    brains = list(mni152_aal_slices()) + [s for s in aal_slices("held_out", step=1) if s.source in held_groups]
    trunks = totalseg_slices("held_out", step_mm=4.0)
    regions = sorted({name for item in aal_slices("train", step=4) for name in item.masks})
    cases = []
    for item in brains:
        name = str(rng.choice(TRUNK_NAMES))
        cases.append(Sample(item.rgb, np.zeros(item.rgb.shape[:2], bool), name, "MRI", f"{item.source}:{name}:elsewhere",
                            item.source))
    for item in trunks:
        name = str(rng.choice(regions))
        cases.append(Sample(item.rgb, np.zeros(item.rgb.shape[:2], bool), name, item.modality,
                            f"{item.source}:{name}:elsewhere", item.source))
    return cases


def kind_cases(rng) -> list:
    """A structure asked for by its kind (``structure_kinds`` of the shipped atlas's names:
    "kidney" for the left and the right one), one kind per held-out slice among those with a
    member of at least 100 px there; the mask labels each member present (any is right)."""
    from napari_ibis.grounding.atlas import SliceAtlas
    from napari_ibis.grounding.names import structure_kinds
    from training.data.sources import Sample, colin27_aal, split_by_group
    from training.grounding.dataset import aal_slices, totalseg_slices

    kinds = structure_kinds(SliceAtlas.load(ROOT / "resources/models/pointer/atlas.npz").names)
    held_groups = {s.group.replace("colin27:", "colin27-aal:") for s in split_by_group(list(colin27_aal()))[1]}
    slices = totalseg_slices("held_out", step_mm=4.0) + [s for s in aal_slices("held_out", step=1)
                                                          if s.source in held_groups]
    cases = []
    for item in slices:
        present = {kind: [m for m in members if m in item.masks and item.masks[m].sum() >= 100]
                   for kind, members in sorted(kinds.items())}
        present = {kind: members for kind, members in present.items() if members}
        if not present:
            continue
        kind = sorted(present)[rng.integers(len(present))]
        labels = np.zeros(item.rgb.shape[:2], np.int32)
        for number, member in enumerate(present[kind], start=1):
            labels[item.masks[member]] = number
        cases.append(Sample(item.rgb, labels, kind, item.modality, f"{item.source}:{kind}:kind", item.source))
    return cases


def alias_cases(rng) -> list:
    """A structure asked for by one of ``ALIASES`` on the held-out TotalSegmentator slices 4 mm
    apart: per slice one structure drawn among those (any member, for a kind) covering 100 px
    there, then one of its other names; the mask labels each member present (any is right)."""
    from napari_ibis.grounding.atlas import SliceAtlas
    from napari_ibis.grounding.names import ALIASES, structure_kinds
    from training.data.sources import Sample
    from training.grounding.dataset import totalseg_slices

    kinds = structure_kinds(SliceAtlas.load(ROOT / "resources/models/pointer/atlas.npz").names)
    cases = []
    for item in totalseg_slices("held_out", step_mm=4.0):
        present = {}  # the atlas's name (or kind) -> its members on the slice
        for name in sorted(set(ALIASES.values())):
            members = [m for m in kinds.get(name, [name]) if m in item.masks and item.masks[m].sum() >= 100]
            if members:
                present[name] = members
        if not present:
            continue
        name = sorted(present)[rng.integers(len(present))]  # a structure first, then one of its other names
        aliases = sorted(alias for alias, canonical in ALIASES.items() if canonical == name)
        alias = aliases[rng.integers(len(aliases))]
        labels = np.zeros(item.rgb.shape[:2], np.int32)
        for number, member in enumerate(present[name], start=1):
            labels[item.masks[member]] = number
        cases.append(Sample(item.rgb, labels, alias, item.modality, f"{item.source}:{alias}:alias", item.source))
    return cases


def full_name_cases(rng, present: int = 60) -> list:
    """A held-out Colin27 AAL region of at least 100 px asked for by its full name ("the left
    inferior frontal gyrus, opercular part" for "left frontal inf oper";
    ``napari_ibis.grounding.names.AAL_FULL_NAMES``), among the regions whose full name is
    another; ``present`` of them."""
    from napari_ibis.grounding.names import AAL_FULL_NAMES
    from training.data.sources import Sample, colin27_aal, split_by_group
    from training.grounding.dataset import aal_slices

    held_groups = {s.group.replace("colin27:", "colin27-aal:") for s in split_by_group(list(colin27_aal()))[1]}
    cases = []
    for item in aal_slices("held_out", step=1):
        if item.source not in held_groups:
            continue
        for name, mask in item.masks.items():
            side, _, region = name.partition(" ")
            if region in AAL_FULL_NAMES and mask.sum() >= 100:
                cases.append(Sample(item.rgb, mask, f"{side} {AAL_FULL_NAMES[region]}", "MRI",
                                    f"{item.source}:{name}", item.source))
    return [cases[i] for i in sorted(rng.permutation(len(cases))[:present])]


def nuclei_tiles() -> list:
    from stardist.data import test_image_nuclei_2d

    from training.data.sources import Sample

    image, labels = test_image_nuclei_2d(return_mask=True)
    half = image.shape[1] // 2
    tiles = []
    for index, rows in enumerate((slice(0, 128), slice(128, 256), slice(256, 384), slice(384, 512))):
        crop, crop_labels = image[rows, half:], labels[rows, half:]
        tiles.append(Sample(crop, crop_labels, "nucleus", "fluorescence microscopy", f"stardist-right:tile={index}",
                            f"stardist-right:{index}"))
    return tiles  # mask = the instance labels: any nucleus is a right answer


def score(sample, episode) -> dict:
    from napari_ibis.metrics import dice, iou

    truth = np.asarray(sample.mask)
    instances = truth.dtype != bool
    final = episode.final_mask
    first = episode.turns[0].clicks[0] if episode.turns and episode.turns[0].clicks else None
    if episode.placed is not None:  # a placed mask is where the agent first puts the target: its most inner point
        from napari_ibis.policies.pointer import interior_point

        first = (*interior_point(episode.placed), True)
    if instances:  # any instance is right: score against the one the result overlaps most
        overlap = np.bincount(truth[final].ravel(), minlength=int(truth.max()) + 1)
        overlap[0] = 0
        sizes = np.bincount(truth.ravel())
        sizes[0] = 0
        # the instance the result overlaps most; none overlapped (or no result): the largest, at IoU 0
        truth = truth == int(np.argmax(overlap) if overlap.any() else np.argmax(sizes))
        inside = first is not None and np.asarray(sample.mask)[first[0], first[1]] > 0
    else:
        inside = first is not None and first[2] and bool(truth[first[0], first[1]])
    present = bool(np.asarray(sample.mask).any())
    return {"source": sample.source, "target": sample.target, "present": present, "area": int(truth.sum()),
            "said_absent": bool(episode.said_absent), "first_click_inside": bool(inside),
            "placed": episode.placed is not None,
            "iou": float(iou(truth, final)) if present else float("nan"),
            "dice": float(dice(truth, final)) if present else float("nan"),
            "steps": len(episode.turns), "seconds": episode.seconds, "stop": episode.stop_reason}


def summarise(rows: list[dict]) -> dict:
    present = [r for r in rows if r["present"]]
    absent = [r for r in rows if not r["present"]]
    mean = lambda values: float(np.mean(values)) if len(values) else float("nan")  # noqa: E731
    out = {"cases": len(rows), "present": len(present), "absent": len(absent),
           "first_click_inside": mean([r["first_click_inside"] for r in present]),
           "mean_iou": mean([r["iou"] for r in present]), "mean_dice": mean([r["dice"] for r in present]),
           "not_present_right": mean([r["said_absent"] for r in absent]),
           "not_present_false": mean([r["said_absent"] for r in present]),
           "mean_steps": mean([r["steps"] for r in rows]), "seconds_per_case": mean([r["seconds"] for r in rows]),
           "placed": sum(r.get("placed", False) for r in rows),
           "untaught": mean([r.get("untaught", False) for r in rows]),
           "refused": mean([r.get("refused", False) for r in rows])}
    for label, low, high in SIZES:
        chosen = [r for r in present if low <= r["area"] < high]
        out[f"first_click_inside {label}"] = mean([r["first_click_inside"] for r in chosen])
        out[f"mean_iou {label}"] = mean([r["iou"] for r in chosen])
        out[f"count {label}"] = len(chosen)
    return out


def _totalseg_volume(source: str, cache: dict):
    """The VolumeSlice a TotalSegmentator case ("totalseg:VOLUME:z=Z:...") was cut from, as the CLI
    and the widget hand it to the agent; None for other cases."""
    if not source.startswith("totalseg:"):
        return None
    from napari_ibis import assets, io
    from napari_ibis.policies.base import volume_slice
    from training.data.sources import TOTALSEG_VOLUMES

    _, name, z, *_ = source.split(":")
    if name not in cache:
        root = assets.path("totalsegmentator", "tests/reference_files").parent.parent
        loaded = io.read_image(root / TOTALSEG_VOLUMES[name][0])
        cache[name] = volume_slice(loaded.data, loaded.meta["geometry"].spacing)
    return cache[name].at(int(z.removeprefix("z=")))


def run(name: str, folder: str, segmenter_spec: str, phantoms: int, max_steps: int, sets=tuple(SETS),
        volumes: bool = False) -> dict:
    from napari_ibis.policies import load_policy
    from napari_ibis.segmenters import build_segmenter
    from training.data import text
    from training.rl.rollout import rollout

    policy = load_policy(folder)
    segmenter = build_segmenter(segmenter_spec)
    results, cache = {}, {}
    for set_name, samples in case_sets(phantoms, chosen=sets).items():
        rng = np.random.default_rng(0)
        rows = []
        for sample in samples:
            query = text.query(sample.target, sample.modality, rng)
            volume = _totalseg_volume(sample.source, cache) if volumes else None
            episode = rollout(policy, sample, query, segmenter, max_turns=max_steps, volume=volume)
            vocabulary = getattr(policy, "vocabulary", None)  # the pointer agent's list of what it was taught
            untaught = None if vocabulary is None else vocabulary.untaught(query)
            rows.append(score(sample, episode) | {"query": query, "untaught": untaught is not None,
                                                  "refused": untaught is not None and untaught.refused})
        results[set_name] = {"summary": summarise(rows), "cases": rows}
        print(name, set_name, json.dumps(results[set_name]["summary"]), flush=True)
    return {"agent": folder, "segmenter": segmenter_spec, "max_steps": max_steps, "sets": results,
            "machine": platform.processor() or platform.machine()}


def table() -> str:
    lines = ["| agent | set | cases (absent) | first click inside | > 500 px | mean IoU | IoU > 500 px | Dice "
             "| 'not present' right | false 'not present' | steps | s/case |", "|---" * 12 + "|"]
    for file in sorted(RESULTS.glob("agents_real-*.json")):
        result = json.loads(file.read_text())
        for set_name, data in result["sets"].items():
            s = data["summary"]
            f = lambda v: "-" if v != v else f"{v:.2f}"  # noqa: E731
            lines.append(f"| {file.stem.removeprefix('agents_real-')} | {set_name} | {s['cases']} ({s['absent']}) | "
                         f"{f(s['first_click_inside'])} | {f(s['first_click_inside > 500 px'])} ({s['count > 500 px']}) | "
                         f"{f(s['mean_iou'])} | {f(s['mean_iou > 500 px'])} | {f(s['mean_dice'])} | "
                         f"{f(s['not_present_right'])} | {f(s['not_present_false'])} | {s['mean_steps']:.1f} | "
                         f"{s['seconds_per_case']:.1f} |")
    return "\n".join(lines)


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", action="append", default=[], metavar="NAME=FOLDER")
    parser.add_argument("--segmenter", default="mobilesam")
    parser.add_argument("--phantoms", type=int, default=60, help="phantom images from seed 90000 (about 3.5 questions each)")
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--volumes", action="store_true",
                        help="hand each TotalSegmentator slice the volume it was cut from, as the CLI and the widget do")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for spec in [] if args.table else args.agent:
        name, _, folder = spec.partition("=")
        result = run(name, folder, args.segmenter, args.phantoms, args.max_steps, args.sets, args.volumes)
        file = RESULTS / f"agents_real-{name}.json"
        if file.is_file() and set(args.sets) != set(SETS):  # keep the other sets' earlier results
            earlier = json.loads(file.read_text())
            if (earlier["agent"], earlier["segmenter"], earlier["max_steps"]) == (folder, args.segmenter, args.max_steps):
                result["sets"] = {**earlier["sets"], **result["sets"]}
        file.write_text(json.dumps(result, indent=1) + "\n")
    print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
