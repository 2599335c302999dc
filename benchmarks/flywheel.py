"""The data flywheel, measured: a scripted person corrects the agent on a new view, the
kept sessions fine-tune the agent, and the held-out side of that view is measured again.

Domain: coronal slices of the Colin27 brain with the AAL regions (real MRI, atlas labels).
The shipped pointer agent (v8) was trained on axial slices only, so coronal slices stand
for "a clinician's own data" that it has not seen. Coronal slices are split by the
project's slice hash (``colin27-coronal:y=...``): sessions come from the training side
only, the held-out side is only evaluated. (It is the same brain as the axial training
slices, cut another way: a new view, not a new subject.)

1. ``collect``: for N (slice, region) pairs of the training side, the agent runs (MobileSAM,
   at most 8 steps) on a templated query; the scripted person (the click simulator) takes
   it from there: rejects the agent's steps after its best state when the agent's last
   mask is worse, then clicks until IoU 0.85 (at most 20 clicks), accepts, and the session
   goes to a training inbox (:class:`napari_ibis.inbox.TrainingInbox`);
2. ``finetune``: for each N in --sizes, ``napari-ibis pointer`` fine-tunes v8 on the first N
   kept sessions (half of each step's slices from them, half from v8's own training data);
3. ``evaluate``: each model (v8 and every fine-tuned one) on held-out coronal regions
   (agent session, MobileSAM, at most 8 steps: mean IoU) and on held-out phantoms.

    python benchmarks/flywheel.py --sessions 100 --sizes 20 50 100 --threads 2

Writes benchmarks/results/flywheel.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / "out" / "flywheel"
V8 = ROOT / "resources" / "models" / "pointer"
MIN_AREA = 200
PERSON_STOP_IOU = 0.85
PERSON_MAX_CLICKS = 20


def region_cases(side: str, count: int, seed: int) -> list:
    """``count`` (coronal slice, region) samples of at least MIN_AREA pixels from ``side``."""
    from training.data.sources import Sample
    from training.grounding.dataset import aal_slices

    rng = np.random.default_rng(seed)
    cases = [Sample(item.rgb, mask, name, "MRI", f"{item.source}:{name}", item.source)
             for item in aal_slices(side, step=2, view="coronal") for name, mask in item.masks.items()
             if mask.sum() >= MIN_AREA]
    return [cases[i] for i in rng.permutation(len(cases))[:count]]


def scripted_person(session, truth: np.ndarray) -> dict:
    """Correct a finished agent session as an annotator would; returns what it took."""
    from napari_ibis.clicker import next_click
    from napari_ibis.metrics import iou

    agent_iou = iou(truth, session.mask)
    scores = [iou(truth, session.step_at(i).mask) for i in range(session.cursor + 1)]
    best = int(np.argmax(scores))
    rejected = 0
    while session.cursor > best and scores[best] > agent_iou:  # drop the agent's steps that made it worse
        session.reject()
        rejected += 1
    clicks = 0
    while iou(truth, session.mask) < PERSON_STOP_IOU and clicks < PERSON_MAX_CLICKS:
        found = next_click(truth, session.mask)
        if found is None:
            break
        session.add_click(*found)
        clicks += 1
    session.accept()
    return {"agent_iou": float(agent_iou), "rejected": rejected, "person_clicks": clicks,
            "accepted_iou": float(iou(truth, session.mask))}


def collect(count: int, inbox: Path, segmenter_spec: str, max_steps: int) -> list[dict]:
    from napari_ibis.inbox import TrainingInbox
    from napari_ibis.policies import load_policy
    from napari_ibis.segmenters import build_segmenter
    from napari_ibis.session import Session
    from training.data import text

    policy, segmenter = load_policy(str(V8)), build_segmenter(segmenter_spec)
    kept, rows = TrainingInbox(inbox), []
    rng = np.random.default_rng(0)
    for number, sample in enumerate(region_cases("train", count, seed=0)):
        query = text.query(sample.target, sample.modality, rng)
        session = Session(sample.image, query, policy, segmenter, max_steps=max_steps)
        started = time.perf_counter()
        list(session.run())
        row = scripted_person(session, sample.mask) | {"source": sample.source, "query": query,
                                                       "seconds": time.perf_counter() - started}
        kept.keep(session, modality="MRI")
        rows.append(row)
        print(f"session {number + 1}/{count}: agent IoU {row['agent_iou']:.2f}, {row['rejected']} rejected, "
              f"{row['person_clicks']} clicks -> {row['accepted_iou']:.2f}", flush=True)
    return rows


def subset(inbox: Path, size: int) -> Path:
    """A folder with the first ``size`` kept sessions of ``inbox`` (hard links)."""
    from napari_ibis.inbox import TrainingInbox

    folder = WORK / f"inbox-{size}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for session_id in TrainingInbox(inbox).ids()[:size]:
        for suffix in (".json", ".npz"):
            os.link(inbox / f"{session_id}{suffix}", folder / f"{session_id}{suffix}")
    return folder


def finetune(size: int, inbox: Path, steps: int, lr: float, threads: int) -> Path:
    out = WORK / f"pointer-sessions-{size}"
    settings = [f"output={out}", f"init={V8}", f"sessions=[{subset(inbox, size)}]", f"steps={steps}",
                f"learning_rate={lr}", f"threads={threads}"]
    command = [sys.executable, "-m", "training.grounding.train", str(ROOT / "training/configs/pointer-v8.yaml")]
    command += [part for setting in settings for part in ("--set", setting)]
    subprocess.run(command, check=True, cwd=ROOT)
    return out


def evaluate(folder: Path, cases: dict, segmenter_spec: str, max_steps: int) -> dict:
    from agents_real import score, summarise

    from napari_ibis.policies import load_policy
    from napari_ibis.segmenters import build_segmenter
    from training.data import text
    from training.rl.rollout import rollout

    policy, segmenter = load_policy(str(folder)), build_segmenter(segmenter_spec)
    out = {}
    for set_name, samples in cases.items():
        rng = np.random.default_rng(0)
        rows = [score(sample, rollout(policy, sample, text.query(sample.target, sample.modality, rng), segmenter,
                                      max_turns=max_steps)) for sample in samples]
        out[set_name] = summarise(rows)
        print(folder.name, set_name, json.dumps(out[set_name]), flush=True)
    return out


def table(result: dict) -> str:
    sets = list(next(iter(result["models"].values())).keys())
    lines = ["| model | sessions | " + " | ".join(f"{s}: mean IoU" for s in sets) + " |", "|---" * (2 + len(sets)) + "|"]
    for name, summary in result["models"].items():
        lines.append(f"| {name} | {result['sizes'].get(name, 0)} | "
                     + " | ".join(f"{summary[s]['mean_iou']:.3f} ({summary[s]['present']})" for s in sets) + " |")
    return "\n".join(lines)


def main() -> int:
    import torch

    from training.data.sources import phantom_samples

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 50, 100])
    parser.add_argument("--held-out", type=int, default=60, help="held-out coronal regions evaluated")
    parser.add_argument("--phantoms", type=int, default=40, help="held-out phantoms (seed 90000 on)")
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--segmenter", default="mobilesam")
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help="keep the inbox and models already under benchmarks/out/flywheel")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    inbox = WORK / "inbox"
    started = time.perf_counter()
    if not (args.reuse and inbox.is_dir()):
        shutil.rmtree(inbox, ignore_errors=True)
        collected = collect(args.sessions, inbox, args.segmenter, args.max_steps)
        (WORK / "collected.json").write_text(json.dumps(collected, indent=1))
    collected = json.loads((WORK / "collected.json").read_text())
    models = {"v8": V8}
    for size in args.sizes:
        out = WORK / f"pointer-sessions-{size}"
        models[f"v8 + {size} sessions"] = out if args.reuse and (out / "config.json").is_file() else finetune(
            size, inbox, args.steps, args.learning_rate, args.threads)
    cases = {"coronal AAL held-out (real MRI)": region_cases("held_out", args.held_out, seed=1),
             "phantoms held-out (synthetic)": list(phantom_samples(range(90000, 90000 + args.phantoms),
                                                                    absent_probability=0.1))}
    result = {"sizes": {f"v8 + {s} sessions": s for s in args.sizes}, "models": {},
              "collection": {"sessions": len(collected),
                             "agent_iou": float(np.mean([r["agent_iou"] for r in collected])),
                             "person_clicks": float(np.mean([r["person_clicks"] for r in collected])),
                             "rejected_steps": int(sum(r["rejected"] for r in collected)),
                             "accepted_iou": float(np.mean([r["accepted_iou"] for r in collected]))},
              "settings": vars(args)}
    for name, folder in models.items():
        result["models"][name] = evaluate(folder, cases, args.segmenter, args.max_steps)
    result["seconds"] = time.perf_counter() - started
    (RESULTS / "flywheel.json").write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
