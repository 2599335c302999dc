"""A CT's Hounsfield units read without training (napari_ibis.grounding.ct_anatomy), measured:
the pointer agent with the units read and without (its map and atlas alone), each given the
volume the slice is from, on the same questions.

Sets (all real CT; nothing here was used to set the rule's constants but the five volumes'
air parts listed in docs/BENCHMARKS.md "A CT's lungs by their Hounsfield units"):

* ``chest``: pyradiomics' two chest CTs (lung1, lung2; 5 mm slices), the right and the left lung
  on every third slice (labels: ``threshold_lungs``, the -400 HU threshold on the slice: the same
  physics the rule reads, so the lungs' IoU here says how well the agent segments what the units
  call lung, not whether that is lung), and where both lungs are large a bladder or a kidney
  asked for (absent): ``training.data.sources.radiomics_lungs``;
* ``abdomen``: TotalSegmentator's abdominal CT (3 mm; its lung lobes labelled by TotalSegmentator:
  an independent truth), the right and the left lung on every third slice where TotalSegmentator
  has it (present) and on every sixth slice below (absent), and every structure wholly below the
  diaphragm on every sixth slice that holds 100 px of it (present: a false "not present" there is
  the level rule misfiring);
* ``upper-abdomen``: TotalSegmentator's held-out CT series (512 x 512 x 20, 2 mm, below the
  lungs): a lung on every slice (absent) and the pancreas and right adrenal gland where labelled.
* ``spinal-cord``: the spinal cord where TotalSegmentator labels 20 px or more of it, on every
  third slice of the abdominal CT (3 mm voxels, no contrast) and every slice of the held-out
  upper-abdomen series (its label covers what lies inside the bony canal, below the cord's end
  too, as the rule reads it).
* ``back-muscles``: the left and the right autochthon, chosen as the spinal cord's slices.
* ``aorta``: the aorta, chosen as the spinal cord's slices (the abdominal CT has no contrast: the
  units read none there, and the map's answer must stay as it was; the held-out series has).
* ``costal-cartilages``: the costal cartilages, chosen as the spinal cord's slices (present only:
  whether they are on a slice stays the map's call).
* ``heart-trachea``: the heart and the trachea asked on every slice of ``lung1`` and ``lung2``.
  No package labels them: where each lies was read by eye (``HEART_BY_EYE``, ``TRACHEA_BY_EYE``;
  the larynx above the trachea is asked of neither). The trachea's pixels: the air part nearest
  the slice's middle column (``training.data.sources.trachea_by_eye``, an independent rule); the heart's: the rule's own
  region (looked at slice by slice, docs/images/ct-heart.png), that of the nearest slice where the
  rule read none, so its IoU says how well the agent follows the region, not how right it is.

    python benchmarks/ct_anatomy.py [--sets chest abdomen upper-abdomen heart-trachea spinal-cord back-muscles aorta
        costal-cartilages]
        [--max-steps 8] [--place autochthon]

Writes benchmarks/results/ct_anatomy.json and prints a table (agents_real.py's columns).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # agents_real.py's scoring

OUT = Path(__file__).parent / "results" / "ct_anatomy.json"
SETS = {"chest": "chest CTs, lungs by the -400 HU threshold (pyradiomics lung1/lung2, real)",
        "abdomen": "abdominal CT, TotalSegmentator's lung lobes and organs (real)",
        "upper-abdomen": "upper-abdomen CT series, held-out patient (TotalSegmentator, real)",
        "heart-trachea": "chest CTs, the heart and the trachea where they lie by eye (pyradiomics lung1/lung2, real)",
        "spinal-cord": "the spinal cord on two CTs, TotalSegmentator's labels (abdominal CT, held-out series; real)",
        "back-muscles": "the left and right autochthon on two CTs, TotalSegmentator's labels (abdominal CT, held-out "
                        "series; real)",
        "aorta": "the aorta on two CTs, TotalSegmentator's labels (abdominal CT without contrast, held-out series "
                 "with; real)",
        "costal-cartilages": "the costal cartilages on two CTs, TotalSegmentator's labels (abdominal CT, held-out "
                             "series; real)"}
MIN_LUNG_PX_MM2 = 250.0  # a lung question is asked where the truth covers this much (ct_anatomy.MIN_LUNG_MM2)


def _volume(path):
    from napari_ibis import io
    from napari_ibis.policies.base import volume_slice

    loaded = io.read_image(path)
    return loaded.data, volume_slice(loaded.data, loaded.meta["geometry"].spacing)


# the highest slice where the liver, the spleen or the stomach shows on each chest CT (looked at, 2026-12-07):
# above it the liver and the spleen are absent (their truth here is by eye, the rule's own constants aside)
ORGANS_END = {"lung1": 4, "lung2": 19}


def chest_cases() -> list:
    from napari_ibis import assets
    from training.data.sources import Sample, radiomics_lungs

    volumes = {case: _volume(assets.path("pyradiomics", f"data/{case}_image.nrrd")) for case in ("lung1", "lung2")}
    out = []
    for sample in radiomics_lungs():
        _, case, z, *_ = sample.source.split(":")
        out.append((sample, volumes[case][1].at(int(z.removeprefix("z=")))))
    for case, (data, volume) in volumes.items():  # the liver and the spleen above where they end
        for number, z in enumerate(range(ORGANS_END[case] + 1, len(data), 3)):
            organ = ("liver", "spleen")[number % 2]
            out.append((Sample(image=np.ascontiguousarray(data[z]), mask=np.zeros(data[z].shape, bool), target=organ,
                               modality="CT", source=f"pyradiomics:{case}:z={z}:{organ}:absent",
                               group=f"pyradiomics:{case}"), volume.at(z)))
    return out


# where the heart and the trachea lie on the chest CTs, axial slices looked at one by one (2026-12-07): the heart
# from its lowest slice to the last with an atrium (above: the aortic root and the pulmonary trunk); the trachea
# from the carina to its top (above it, left out of both: the larynx)
HEART_BY_EYE = {"lung1": (0, 11), "lung2": (17, 34)}
TRACHEA_BY_EYE = {"lung1": (24, 43), "lung2": (40, 58)}
LARYNX_BY_EYE = {"lung1": (44, 47), "lung2": (59, 60)}


def mediastinum_cases() -> list:
    from napari_ibis import assets
    from napari_ibis.grounding.ct_anatomy import CtAnatomy
    from training.data.sources import Sample, trachea_by_eye

    out = []
    for case in ("lung1", "lung2"):
        data, volume = _volume(assets.path("pyradiomics", f"data/{case}_image.nrrd"))
        heart = CtAnatomy(data, volume.spacing).heart_volume(data)
        read = np.flatnonzero(heart.any(axis=(1, 2)))
        for z in range(len(data)):
            low, high = HEART_BY_EYE[case]
            truth = heart[read[np.argmin(np.abs(read - z))]] if low <= z <= high else np.zeros(data[z].shape, bool)
            out.append((Sample(image=np.ascontiguousarray(data[z]), mask=truth, target="heart", modality="CT",
                               source=f"pyradiomics:{case}:z={z}:heart" + ("" if truth.any() else ":absent"),
                               group=f"pyradiomics:{case}"), volume.at(z)))
            low, high = TRACHEA_BY_EYE[case]
            if LARYNX_BY_EYE[case][0] <= z <= LARYNX_BY_EYE[case][1]:
                continue
            truth = trachea_by_eye(data[z]) if low <= z <= high else np.zeros(data[z].shape, bool)
            out.append((Sample(image=np.ascontiguousarray(data[z]), mask=truth, target="trachea", modality="CT",
                               source=f"pyradiomics:{case}:z={z}:trachea" + ("" if truth.any() else ":absent"),
                               group=f"pyradiomics:{case}"), volume.at(z)))
    return out


def totalseg_cases(volume_name: str, lung_every: int, absent_every: int, organ_every: int) -> list:
    from napari_ibis import assets, io
    from napari_ibis.grounding.ct_anatomy import below_the_diaphragm
    from training.data.sources import TOTALSEG_VOLUMES, Sample, structure_name, totalseg_class_maps

    root = assets.path("totalsegmentator", "tests/reference_files").parent.parent
    image_file, labels_file, class_map = TOTALSEG_VOLUMES[volume_name]
    data, volume = _volume(root / image_file)
    labels = io.read_image(root / labels_file).data
    names = {int(k): structure_name(v) for k, v in totalseg_class_maps()[class_map].items()}
    pixel_mm2 = volume.spacing[1] * volume.spacing[2]
    out = []

    def ask(z, target, truth):
        out.append((Sample(image=np.ascontiguousarray(data[z]), mask=np.ascontiguousarray(truth), target=target,
                           modality="CT", source=f"totalseg:{volume_name}:z={z}:{target}" + ("" if truth.any() else ":absent"),
                           group=f"totalseg:{volume_name}"), volume.at(z)))

    lungs = {side: np.isin(labels, [k for k, n in names.items() if "lung" in n and n.startswith(side)])
             for side in ("right", "left")}
    lowest = min((int(np.flatnonzero(m.any(axis=(1, 2)))[0]) for m in lungs.values() if m.any()), default=len(data))
    for z in range(len(data)):
        for side, lung in lungs.items():
            area = lung[z].sum() * pixel_mm2
            if area >= MIN_LUNG_PX_MM2 and z % lung_every == 0:
                ask(z, f"{side} lung", lung[z])
        if z < lowest and z % absent_every == 0:
            ask(z, f"{('right', 'left')[(z // absent_every) % 2]} lung", np.zeros(data[z].shape, bool))
    for code, name in names.items():
        if not below_the_diaphragm(name):
            continue
        mask = labels == code
        held = np.flatnonzero(mask.sum(axis=(1, 2)) >= 100)
        for z in held[::organ_every]:
            ask(int(z), name, mask[z])
    return out


def labelled_cases(labels: dict[str, str]) -> list:
    """Each TotalSegmentator label of ``labels`` (its name -> the target asked) where it covers 20 px
    or more, on every third slice of the abdominal CT and every slice of the held-out series."""
    from napari_ibis import assets, io
    from training.data.sources import TOTALSEG_VOLUMES, Sample, totalseg_class_maps

    root = assets.path("totalsegmentator", "tests/reference_files").parent.parent
    out = []
    for volume_name, every in (("abdomen_ct", 3), ("upper_abdomen_ct", 1)):
        image_file, labels_file, class_map = TOTALSEG_VOLUMES[volume_name]
        data, volume = _volume(root / image_file)
        codes = {v: int(k) for k, v in totalseg_class_maps()[class_map].items()}
        all_labels = io.read_image(root / labels_file).data
        for label, target in labels.items():
            truth = all_labels == codes[label]
            for z in np.flatnonzero(truth.sum(axis=(1, 2)) >= 20)[::every]:
                out.append((Sample(image=np.ascontiguousarray(data[z]), mask=np.ascontiguousarray(truth[z]),
                                   target=target, modality="CT", source=f"totalseg:{volume_name}:z={z}:{target}",
                                   group=f"totalseg:{volume_name}"), volume.at(int(z))))
    return out


def case_sets(chosen) -> dict:
    out = {}
    if "chest" in chosen:
        out[SETS["chest"]] = chest_cases()
    if "abdomen" in chosen:
        out[SETS["abdomen"]] = totalseg_cases("abdomen_ct", lung_every=3, absent_every=6, organ_every=6)
    if "upper-abdomen" in chosen:
        out[SETS["upper-abdomen"]] = totalseg_cases("upper_abdomen_ct", lung_every=1, absent_every=1, organ_every=2)
    if "heart-trachea" in chosen:
        out[SETS["heart-trachea"]] = mediastinum_cases()
    if "spinal-cord" in chosen:
        out[SETS["spinal-cord"]] = labelled_cases({"spinal_cord": "spinal cord"})
    if "back-muscles" in chosen:
        out[SETS["back-muscles"]] = labelled_cases({"autochthon_left": "left autochthon",
                                                    "autochthon_right": "right autochthon"})
    if "aorta" in chosen:
        out[SETS["aorta"]] = labelled_cases({"aorta": "aorta"})
    if "costal-cartilages" in chosen:
        out[SETS["costal-cartilages"]] = labelled_cases({"costal_cartilages": "costal cartilages"})
    return out


def main(argv=None) -> int:
    import torch

    from agents_real import score, summarise

    from napari_ibis.policies import load_policy
    from napari_ibis.segmenters import build_segmenter
    from training.data import text
    from training.rl.rollout import rollout

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    parser.add_argument("--agent", default="resources/models/pointer")
    parser.add_argument("--segmenter", default="mobilesam")
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--place", nargs="*", default=None,
                        help="structures read from the units that the agent places as its mask (default: the "
                             "agent's own, pointer.PLACED_FROM_UNITS)")
    args = parser.parse_args(argv)
    if args.place is not None:
        from napari_ibis.policies import pointer

        pointer.PLACED_FROM_UNITS.clear()
        pointer.PLACED_FROM_UNITS.update(args.place)
    torch.set_num_threads(args.threads)
    policy, segmenter = load_policy(args.agent), build_segmenter(args.segmenter)
    results = {"agent": args.agent, "segmenter": args.segmenter, "max_steps": args.max_steps, "sets": {}}
    for set_name, cases in case_sets(args.sets).items():
        rows = {"map and atlas": [], "Hounsfield units read": []}
        for mode in rows:
            policy.read_ct_units = mode != "map and atlas"
            rng = np.random.default_rng(0)
            started = time.perf_counter()
            for sample, volume in cases:
                query = text.query(sample.target, sample.modality, rng)
                episode = rollout(policy, sample, query, segmenter, max_turns=args.max_steps, volume=volume)
                rows[mode].append(score(sample, episode) | {"query": query})
            summary = summarise(rows[mode])
            print(f"{set_name} | {mode}: {json.dumps(summary)} ({time.perf_counter() - started:.0f} s)", flush=True)
        results["sets"][set_name] = {mode: {"summary": summarise(found), "cases": found} for mode, found in rows.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.is_file() and set(args.sets) != set(SETS):  # keep the other sets' earlier results
        results["sets"] = {**json.loads(args.out.read_text())["sets"], **results["sets"]}
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print("| set | agent | cases (absent) | first click inside | mean IoU | 'not present' right | false 'not present' "
          "| steps | s/case |\n|---|---|---|---|---|---|---|---|---|")
    for set_name, modes in results["sets"].items():
        for mode, data in modes.items():
            s = data["summary"]
            f = lambda v: "-" if v != v else f"{v:.2f}"  # noqa: E731
            print(f"| {set_name} | {mode} | {s['cases']} ({s['absent']}) | {f(s['first_click_inside'])} | "
                  f"{f(s['mean_iou'])} | {f(s['not_present_right'])} | {f(s['not_present_false'])} | "
                  f"{s['mean_steps']:.1f} | {s['seconds_per_case']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
