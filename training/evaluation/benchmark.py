"""Evaluate an agent (model folder or any policy) on held-out cases through the real Session.

Per case: a seeded query from the paper's templates, the agent's session with
greedy decoding, then IoU, Dice, whether it answered the closed question right
(target absent), steps, the share of parsable replies and seconds. Next to the
agent, the click oracle with the *same number of clicks* gives the IoU the same
segmenter could have reached, so that a weak agent and a weak segmenter can be
told apart. The IoU after each of the agent's clicks (``ious``) shows whether its
later clicks improve the mask its first click made (``mean_iou_after_first_click``),
and the best of them (``mean_best_iou_along``) what a better moment to stop could keep.

``napari-ibis benchmark CONFIG`` (or :func:`main`) writes a JSON with the summary
and every case.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from napari_ibis.evaluation import simulate_clicks
from napari_ibis.metrics import dice, entity_f1, iou
from napari_ibis.overlay import to_rgb8
from training.config import check_choices
from training.data import text
from training.data.sources import Sample
from training.rl.rewards import parse_or_none
from training.rl.rollout import rollout


@dataclass
class EvalConfig:
    """What to evaluate and on which cases (``napari-ibis benchmark CONFIG``)."""

    model: str  # a model folder (greedy decoding through the vlm policy)
    output: str  # the JSON to write
    profile: Literal["ibis-release", "paper"] = "ibis-release"
    segmenter: str = "classical"  # litemedsam | classical | sam2:CHECKPOINT
    phantom_seeds: list = field(default_factory=lambda: [90000, 90060])  # held out from every training config
    real: list = field(default_factory=list)  # "aal", "nuclei": their evaluation side
    absent_probability: float = 0.1
    max_steps: int = 8
    limit: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_choices(self)
        from napari_ibis.segmenters import check_spec

        check_spec(self.segmenter)


CASE_KEYS = ("profile", "phantom_seeds", "real", "absent_probability", "max_steps", "limit", "seed")  # what draws the cases


def cases(config: EvalConfig) -> dict[str, list[Sample]]:
    """Held-out cases per set: phantoms by seed, real sets by their evaluation side."""
    from training.data.sources import colin27_aal, phantom_samples, split_by_group, stardist_nuclei

    sets = {"phantoms (synthetic)": list(phantom_samples(range(*config.phantom_seeds), absent_probability=config.absent_probability))}
    if "aal" in config.real:
        sets["colin27-aal (real)"] = split_by_group(list(colin27_aal()))[1]
    if "nuclei" in config.real:
        sets["stardist nuclei (real)"] = split_by_group(list(stardist_nuclei()))[1]
    return {name: samples[: config.limit] for name, samples in sets.items()}


def evaluate(policy, samples: list[Sample], segmenter, profile: str = "ibis-release", max_steps: int = 8,
             seed: int = 0, progress=None) -> dict:
    """Run ``policy`` on each sample; returns {"summary": ..., "cases": [...]}."""
    rng = np.random.default_rng(seed)
    rows = []
    for sample in progress(samples) if progress else samples:
        query = text.query(sample.target, sample.modality, rng)
        started = time.perf_counter()
        episode = rollout(policy, sample, query, segmenter, profile, max_steps)
        seconds = time.perf_counter() - started
        clicks = sum(len(t.clicks) for t in episode.turns)
        present = bool(sample.mask.any())
        oracle = float("nan")
        if present and clicks:
            run = simulate_clicks(segmenter, to_rgb8(sample.image), sample.mask, max_clicks=clicks)
            oracle = run.ious[-1]
        parsable = sum(parse_or_none(t.reply, profile) is not None for t in episode.turns)
        ious = [iou(sample.mask, t.mask_after) for t in episode.turns if present and t.clicks and t.mask_after is not None]
        rows.append({
            "source": sample.source, "target": sample.target, "query": query, "present": present,
            "iou": episode.final_iou if present else float("nan"),
            "dice": dice(sample.mask, episode.final_mask) if present else float("nan"),
            "closed_correct": (episode.said_absent != present),
            "steps": len(episode.turns), "clicks": clicks, "parsable": parsable, "turns": len(episode.turns),
            "stop": episode.stop_reason, "oracle_iou_same_clicks": oracle, "seconds": seconds,
            "ious": ious,
            "_pair": (sample.mask, episode.final_mask),
        })
    return {"summary": summarise(rows), "cases": [{k: v for k, v in r.items() if k != "_pair"} for r in rows]}



def summarise(rows: list[dict]) -> dict:
    present = [r for r in rows if r["present"]]
    absent = [r for r in rows if not r["present"]]
    oracle = [r["oracle_iou_same_clicks"] for r in present if not np.isnan(r["oracle_iou_same_clicks"])]
    turns = sum(r["turns"] for r in rows)
    return {
        "cases": len(rows),
        "present": len(present),
        "absent": len(absent),
        "mean_iou": float(np.mean([r["iou"] for r in present])) if present else float("nan"),
        "mean_dice": float(np.mean([r["dice"] for r in present])) if present else float("nan"),
        "mean_iou_after_first_click": float(np.mean([(r["ious"] or [0.0])[0] for r in present])) if present else float("nan"),
        # what a stopper that knew the best moment of each of the agent's own sessions would keep
        "mean_best_iou_along": float(np.mean([max(r["ious"] or [0.0]) for r in present])) if present else float("nan"),
        "entity_f1": entity_f1([r["_pair"] for r in rows]),
        "absent_answered_right": float(np.mean([r["closed_correct"] for r in absent])) if absent else float("nan"),
        "mean_steps": float(np.mean([r["steps"] for r in rows])) if rows else float("nan"),
        "parsable_share": sum(r["parsable"] for r in rows) / max(turns, 1),
        "oracle_iou_same_clicks": float(np.mean(oracle)) if oracle else float("nan"),
        "seconds_per_case": float(np.mean([r["seconds"] for r in rows])) if rows else float("nan"),
    }


def case_ious(result: dict) -> list:
    """The final IoU of each case of one set's result in order (None where the target is absent: JSON has no NaN)."""
    return [None if c["iou"] != c["iou"] else c["iou"] for c in result["cases"]]


def paired_difference(ious: list[float], baseline: list[float]) -> dict:
    """Mean of per-case IoU differences against a baseline on the same cases, with its standard error.

    Both lists hold one IoU per case in the same order (NaN or None, as JSON keeps
    it, for an absent target: left out). ``low``/``high`` bound a normal 95% interval of the mean difference;
    pairing removes the spread between cases, which dominates either mean's own error.
    """
    a, b = np.asarray(ious, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"{a.size} cases against {b.size}: not the same cases")
    keep = ~(np.isnan(a) | np.isnan(b))
    diff = a[keep] - b[keep]
    if diff.size < 2:
        return {"cases": int(diff.size), "mean": float(diff.mean()) if diff.size else float("nan"),
                "se": float("nan"), "low": float("nan"), "high": float("nan")}
    se = float(diff.std(ddof=1) / np.sqrt(diff.size))
    mean = float(diff.mean())
    return {"cases": int(diff.size), "mean": mean, "se": se, "low": mean - 1.96 * se, "high": mean + 1.96 * se}


def main(argv=None) -> int:
    """Measure a model folder on the held-out sets a training config names (phantoms, AAL, nuclei), with a JSON summary.

    ``napari-ibis benchmark CONFIG``."""
    from tqdm import tqdm

    from napari_ibis.policies.vlm import VLMPolicy
    from napari_ibis.segmenters import build_segmenter
    from training.config import config_parser, load_config

    parser = config_parser("napari-ibis benchmark", EvalConfig, main.__doc__.splitlines()[0])
    parser.add_argument("--against", metavar="JSON",
                        help="an earlier evaluation of the same cases: print each set's paired IoU difference to it")
    args = parser.parse_args(argv)
    config = load_config(EvalConfig, args.config, args.set)
    baseline = read_comparable(args.against, config) if args.against else None
    policy = VLMPolicy(config.model, max_new_tokens=200)
    segmenter = build_segmenter(config.segmenter)
    results = {}
    for name, samples in cases(config).items():
        results[name] = evaluate(policy, samples, segmenter, config.profile, config.max_steps, config.seed,
                                 progress=lambda items, n=name: tqdm(items, desc=n, unit="case"))
        print(name, json.dumps(results[name]["summary"]))
    Path(config.output).parent.mkdir(parents=True, exist_ok=True)
    Path(config.output).write_text(json.dumps({"config": config.__dict__, "results": results}, indent=1) + "\n")
    if baseline is not None:
        for line in compare(results, baseline):
            print(line)
    return 0


def read_comparable(path: str, config: EvalConfig) -> dict:
    """The results of an earlier evaluation, after checking it drew the same cases (the segmenter may differ)."""
    try:
        earlier = json.loads(Path(path).read_text())
        earlier_config, results = earlier["config"], earlier["results"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"--against {path}: not an evaluation written by napari-ibis benchmark ({error})")
    differ = [key for key in CASE_KEYS if earlier_config.get(key) != getattr(config, key)]
    if differ:
        raise SystemExit(f"--against {path}: drew other cases ({', '.join(differ)} differ)")
    return results


def compare(results: dict, baseline: dict) -> list[str]:
    """One line per set both hold: mean IoU, and the paired difference to the baseline with its standard error."""
    lines = []
    for name, result in results.items():
        if name not in baseline:
            continue
        d = paired_difference(case_ious(result), case_ious(baseline[name]))
        lines.append(f"{name}: mean IoU {result['summary']['mean_iou']:.3f}, {d['mean']:+.3f} +- {d['se']:.3f} "
                     f"against the earlier evaluation ({d['cases']} cases with a target)")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
