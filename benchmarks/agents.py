"""The agent ablation (issue 5; paper tables 4-5): each training stage on the same held-out cases.

Cases: synthetic phantoms of seeds 90000-90059 (never used by any training config;
about 10% ask for a structure that is absent), the evaluation side of the Colin27/AAL
slices and of stardist's nuclei (real). Each model folder runs through the real
Session with greedy decoding, the classical segmenter (the one its data was made
with) and at most 8 steps; see training/evaluation/benchmark.py for the metrics.

    python benchmarks/agents.py                       # every model below that exists
    python benchmarks/agents.py --only SFT --threads 1  # one entry (two can run side by side)
Updates benchmarks/results/agents.json (one entry per model) and agents-cases.json (each
model's IoU per case, in case order), prints a table and each model's mean IoU difference to
the shipped model on the same cases, with its paired standard error.
benchmarks/results/agents-v1.json holds the first default agent's figures (no grounding
stage, phantoms before their anatomy fix, SFT on whole numbers as tokens) and
agents-v2.json the second's (grounding stage without the target-map terms), for the record.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.evaluation.benchmark import CASE_KEYS, EvalConfig, case_ious, cases, evaluate, paired_difference

MODELS = {
    "untrained (random init)": "runs/default/init",
    "SFT on first decisions only (grounding)": "runs/default/grounding",
    "SFT (grounding, then trajectories without self-reflection)": "runs/default/sft-plain",
    "SFT with self-reflection (v4, grounding on the CPU only)": "runs/default/sft",
    "SFT with self-reflection, grounding streamed on a GPU (v5)": "runs/default/sft-stream",
    "SFT with self-reflection, grounding streamed on a GPU, 5,000 first decisions replayed": "runs/default/sft-stream-replay5k",
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 (v6)": "runs/default/sft-stream-stop08",
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.7": "runs/default/sft-stream-stop07",
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8, twice the phantoms": "runs/default/sft-stream-stop08-800",
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + GRPO at 1e-5": "runs/default/grpo-after-stop08",
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + v6's own states (DAgger, retrained)": "runs/default/sft-stream-dagger",
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + two rounds of own states (DAgger, v7, shipped)": "runs/default/sft-stream-dagger-r2",
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + two rounds of own states (DAgger, v7, shipped) + GRPO at 1e-5": "runs/default/grpo-after-dagger-r2",
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + three rounds of own states (DAgger, round 3)": "runs/default/sft-stream-dagger-r3",
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + two rounds of own states (DAgger, v7, shipped) + GRPO at 1e-5, answer paid where the model ends": "runs/default/grpo-continued-after-dagger-r2",
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + two rounds of own states (DAgger, v7, shipped) + GRPO at 1e-5, answer paid where the model ends, temperature 0.7, no cost for a missed click": "runs/default/grpo-continued-t07-after-dagger-r2",
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + two rounds of own states (DAgger, v7, shipped) + GRPO on click coordinates only, softmax over the whole vocabulary, from its own masks": "runs/default/grpo-coordinates-after-dagger-r2-unrestricted",
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + two rounds of own states (DAgger, v7, shipped) + GRPO on click coordinates only, softmax over the whole vocabulary, from its own masks, at 3e-5": "runs/default/grpo-coordinates-lr3e-5-after-dagger-r2-unrestricted",
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + two rounds of own states (DAgger, v7, shipped) + GRPO on click coordinates only, from its own masks, 100 steps of 8 questions": "runs/default/grpo-coordinates-long-after-dagger-r2",
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + two rounds of own states (DAgger, v7, shipped) + GRPO on click coordinates only, from its own masks": "runs/default/grpo-coordinates-after-dagger-r2",
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + two rounds of own states (DAgger, v7, shipped) + GRPO on click coordinates only, from its own masks, at 3e-5": "runs/default/grpo-coordinates-lr3e-5-after-dagger-r2",
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + two rounds of own states (DAgger, v7, shipped) + GRPO on click coordinates only, from its own masks, paid 10 x the IoU change as well": "runs/default/grpo-coordinates-iou-gain-after-dagger-r2",
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + two rounds of own states (DAgger, v7, shipped) + GRPO on click coordinates only, from its own masks, paid 10 x the IoU change instead of placement and progress": "runs/default/grpo-coordinates-iou-gain-only-after-dagger-r2",
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + two rounds of own states (DAgger, v7, shipped) + GRPO on whole clicking replies, compared among clicks only, from its own masks": "runs/default/grpo-clicks-after-dagger-r2",
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + two rounds of own states (DAgger, v7, shipped) + 1,200 steps at 1e-4 on its LiteMedSAM states and the trajectories, images at 112 pixels": "runs/default/sft-v7-finer-tokens-control",
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + two rounds of own states (DAgger, v7, shipped) + 1,200 steps at 1e-4 on its LiteMedSAM states and the trajectories, images at 224 pixels (finer image tokens)": "runs/default/sft-v7-finer-tokens",
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + two rounds of own states (DAgger, v7's recipe, seed 1)": "runs/default/sft-stream-dagger-r2-seed1",
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + v6's own states (DAgger, retrained) + GRPO at 1e-5": "runs/default/grpo-after-dagger",
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + v6's own states (DAgger, v6 fine-tuned)": "runs/default/sft-v6-dagger",
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + GRPO at 2e-5, 120 steps": "runs/default/grpo-after-stop08-long",
    "SFT with self-reflection, grounding streamed on a GPU + GRPO at 1e-5": "runs/default/grpo-after-stream",
    "SFT with self-reflection, grounding streamed on a GPU + GRPO at 1e-5 from its own masks": "runs/default/grpo-after-stream-policy-states",
    "SFT with self-reflection + GRPO": "runs/default/grpo",
    "SFT with self-reflection + GRPO on first steps only": "runs/default/grpo-first-steps",
    "SFT with self-reflection + GRPO, multi-turn rollouts": "runs/default/grpo-trajectory",
    "SFT with self-reflection + GRPO at learning rate 1e-5": "runs/default/grpo-low-lr",
    "SFT with self-reflection + GRPO, multi-turn rollouts at learning rate 1e-5": "runs/default/grpo-trajectory-low-lr",
    "SFT with self-reflection + GRPO at 1e-5, 8 questions a step, temperature 0.7": "runs/default/grpo-focused",
    "SFT with self-reflection + GRPO at 1e-5 from its own masks": "runs/default/grpo-policy-states",
    "SFT with self-reflection + GRPO at 1e-5 without placement and progressive rewards": "runs/default/grpo-no-region-rewards",
}
OUT = ROOT / "benchmarks" / "results" / "agents.json"
CASES_OUT = ROOT / "benchmarks" / "results" / "agents-cases.json"
BASELINE = "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + two rounds of own states (DAgger, v7, shipped)"  # the bundled agent
V6 = "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 (v6)"
V5 = "SFT with self-reflection, grounding streamed on a GPU (v5)"
V4 = "SFT with self-reflection (v4, grounding on the CPU only)"
DAGGER_1 = "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + v6's own states (DAgger, retrained)"
DAGGER_3 = "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + three rounds of own states (DAgger, round 3)"
STARTED_FROM = {  # the model each was trained from, for the paired difference each stage made
    "SFT on first decisions only (grounding)": "untrained (random init)",
    V4: "SFT on first decisions only (grounding)",
    "SFT (grounding, then trajectories without self-reflection)": "SFT on first decisions only (grounding)",
    V5: V4,  # not trained from it: the same stage 2 on a grounding model that went on on a GPU
    "SFT with self-reflection, grounding streamed on a GPU, 5,000 first decisions replayed": V5,  # likewise: its stage-2 twin
    V6: V5,  # likewise: the same stage 2 on trajectories that stop sooner
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.7": V5,  # likewise
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8, twice the phantoms": V5,  # likewise
    **{name: V4 for name in MODELS if name.startswith("SFT with self-reflection + GRPO")},
    **{name: V5 for name in MODELS if name.startswith("SFT with self-reflection, grounding streamed on a GPU + GRPO")},
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + GRPO at 1e-5": V6,
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + GRPO at 2e-5, 120 steps": V6,
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + v6's own states (DAgger, v6 fine-tuned)": V6,
    # retrained from the same stage-1 model as v6, on its data plus the DAgger states: compared with v6, then round 1
    DAGGER_1: V6,
    BASELINE: DAGGER_1,
    f"{DAGGER_1} + GRPO at 1e-5": DAGGER_1,
    f"{BASELINE} + GRPO at 1e-5": BASELINE,
    DAGGER_3: BASELINE,
    f"{BASELINE} + GRPO at 1e-5, answer paid where the model ends": BASELINE,
    f"{BASELINE} + GRPO at 1e-5, answer paid where the model ends, temperature 0.7, no cost for a missed click": BASELINE,
    f"{BASELINE} + GRPO on click coordinates only, from its own masks": BASELINE,
    f"{BASELINE} + GRPO on click coordinates only, from its own masks, 100 steps of 8 questions": BASELINE,
    f"{BASELINE} + GRPO on click coordinates only, softmax over the whole vocabulary, from its own masks": BASELINE,
    f"{BASELINE} + GRPO on click coordinates only, softmax over the whole vocabulary, from its own masks, at 3e-5": BASELINE,
    f"{BASELINE} + GRPO on click coordinates only, from its own masks, at 3e-5": BASELINE,
    f"{BASELINE} + GRPO on click coordinates only, from its own masks, paid 10 x the IoU change as well": BASELINE,
    f"{BASELINE} + GRPO on click coordinates only, from its own masks, paid 10 x the IoU change instead of placement and progress": BASELINE,
    f"{BASELINE} + GRPO on whole clicking replies, compared among clicks only, from its own masks": BASELINE,
    f"{BASELINE} + 1,200 steps at 1e-4 on its LiteMedSAM states and the trajectories, images at 112 pixels": BASELINE,
    # the same fine-tune, but every image reaches the model at 224 pixels (196 image tokens of 8 pixels, not 49 of 16)
    f"{BASELINE} + 1,200 steps at 1e-4 on its LiteMedSAM states and the trajectories, images at 224 pixels (finer image tokens)": BASELINE,
    # the same recipe as the bundled model with another seed: how far apart two runs of one recipe land
    "SFT with self-reflection, grounding streamed on a GPU, trajectories stopping at IoU 0.8 + two rounds of own states (DAgger, v7's recipe, seed 1)": BASELINE,
}


def main() -> None:
    import torch

    from napari_ibis.policies.vlm import VLMPolicy
    from napari_ibis.segmenters import build_segmenter

    parser = argparse.ArgumentParser()
    parser.add_argument("--only", action="append", help="model names from MODELS (default: all that exist)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="cases per set (default: all)")
    parser.add_argument("--from-eval", metavar="JSON",
                        help="take the --only model's figures from a `napari-ibis benchmark` output of the same cases")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = EvalConfig(model="", output="", real=["aal", "nuclei"], limit=args.limit)
    if args.from_eval:
        return copy_evaluation(args.only, Path(args.from_eval), config)
    sets = cases(config)
    results = _read_results()
    for name, folder in MODELS.items():
        if (args.only and name not in args.only) or not (ROOT / folder / "config.json").is_file():
            continue
        policy = VLMPolicy(ROOT / folder, max_new_tokens=200)
        segmenter = build_segmenter("classical")
        entry = {"folder": folder, "threads": args.threads, "sets": {}}
        per_case = {}
        for set_name, samples in sets.items():
            started = time.perf_counter()
            result = evaluate(policy, samples, segmenter, config.profile, config.max_steps, config.seed)
            summary = entry["sets"][set_name] = result["summary"]
            per_case[set_name] = case_ious(result)
            print(f"{name} / {set_name}: {json.dumps({k: round(v, 3) for k, v in summary.items()})} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
        results = _read_results()  # another process may have written meanwhile
        results[name] = entry
        OUT.write_text(json.dumps(results, indent=2) + "\n")
        _write_cases(name, per_case)
    print_table(results)
    print_paired(read_cases())


def copy_evaluation(names: list[str] | None, path: Path, config: EvalConfig) -> None:
    """One model's entry from an evaluation run of the pipeline, after checking it used the same cases."""
    if not names or len(names) != 1:
        raise SystemExit("--from-eval needs exactly one --only model")
    evaluation = json.loads(path.read_text())
    same = ("segmenter", *CASE_KEYS)
    differ = [key for key in same if evaluation["config"].get(key) != getattr(config, key)]
    if differ or Path(evaluation["config"]["model"]) != Path(MODELS[names[0]]):
        raise SystemExit(f"{path} evaluated other cases or another model ({', '.join(differ) or 'model'})")
    results = _read_results()
    results[names[0]] = {"folder": MODELS[names[0]], "threads": None, "from": str(path),
                         "sets": {name: result["summary"] for name, result in evaluation["results"].items()}}
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    _write_cases(names[0], {name: case_ious(result) for name, result in evaluation["results"].items()})
    print_table(results)
    print_paired(read_cases())


def read_cases() -> dict:
    """Every model's IoU per case and set, as agents-cases.json holds them."""
    return json.loads(CASES_OUT.read_text()) if CASES_OUT.is_file() else {}


def _write_cases(name: str, per_case: dict) -> None:
    everything = read_cases()
    everything[name] = per_case
    CASES_OUT.write_text(json.dumps(everything) + "\n")


def print_paired(per_case: dict) -> None:
    """Each model's mean IoU difference on the same cases (95% interval): to the shipped model, then to the one it started from."""
    if BASELINE in per_case:
        print(f"\n| model | set | cases | IoU minus '{BASELINE}' | paired SE | 95% interval |")
        print("|---|---|---|---|---|---|")
        for name in per_case:
            if name != BASELINE:
                _print_differences(name, per_case[name], per_case[BASELINE])
    print("\n| model (compared with: the model it was trained from; for the GPU-grounded SFT, its CPU-grounded twin) "
          "| set | cases | IoU difference | paired SE | 95% interval |")
    print("|---|---|---|---|---|---|")
    for name, start in STARTED_FROM.items():
        if name in per_case and start in per_case:
            _print_differences(f"{name} (compared with: {start})", per_case[name], per_case[start])


def _print_differences(name: str, sets: dict, baseline_sets: dict) -> None:
    for set_name, ious in sets.items():
        baseline = baseline_sets.get(set_name)
        if baseline is None or len(baseline) != len(ious):
            continue
        d = paired_difference(ious, baseline)
        print(f"| {name} | {set_name} | {d['cases']} | {d['mean']:+.3f} | {d['se']:.3f} | "
              f"[{d['low']:+.3f}, {d['high']:+.3f}] |")


def _read_results() -> dict:
    return json.loads(OUT.read_text()) if OUT.is_file() else {}


def print_table(results: dict) -> None:
    print("| model | set | cases | mean IoU | Dice | entity F1 | absent answered | steps | parsable | oracle IoU, same clicks "
          "| s/case | IoU after click 1 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, entry in results.items():
        for set_name, s in entry["sets"].items():
            print(f"| {name} | {set_name} | {s['cases']} | {s['mean_iou']:.3f} | {s['mean_dice']:.3f} | "
                  f"{s['entity_f1']:.3f} | {_figure(s['absent_answered_right'], 2)} | {s['mean_steps']:.2f} | "
                  f"{s['parsable_share']:.2f} | {_figure(s['oracle_iou_same_clicks'], 3)} | {s['seconds_per_case']:.2f} | "
                  f"{_figure(s.get('mean_iou_after_first_click', float('nan')), 3)} |")


def _figure(value: float, digits: int) -> str:
    """n/a where a figure has no cases (no absent target, no click)."""
    return "n/a" if value != value else f"{value:.{digits}f}"


if __name__ == "__main__":
    main()
