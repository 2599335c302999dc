"""``napari-ibis pipeline CONFIG``: rebuild an agent from nothing, stage by stage.

CONFIG names one config file per stage (paths relative to CONFIG's folder):

    data: data-default.yaml          # napari-ibis data build (trajectories)
    grounding_data: data-grounding.yaml  # napari-ibis data build (first decisions only; optional)
    grounding: sft-grounding.yaml    # napari-ibis sft on the first decisions (optional)
    grounding_stream: sft-grounding-stream.yaml  # more of it on new phantoms made while training (optional; a GPU job)
    sft: sft-default.yaml            # napari-ibis sft on whole trajectories
    dagger:                          # rounds of DAgger (optional; training/rl/dagger.py), each:
      - data: [data-dagger-v6.yaml]  #   napari-ibis data dagger: the last model's own states, labelled
        sft: sft-after-stream-dagger.yaml  # napari-ibis sft on them and the trajectories
    grpo: grpo-default-low-lr.yaml   # napari-ibis grpo
    evaluate: eval-default.yaml      # napari-ibis benchmark
    bundle: resources/models/default  # where the finished model folder is copied (optional)
    bundle_stage: sft                # which stage's model to copy (default: the last one run)

A stage whose output is complete is skipped, so a run that was stopped goes on
where it was (SFT and GRPO also resume from their checkpoints). The bundle holds
the model files only, plus MODEL_CARD.md and model_card.json written from the
training cards and the evaluation. ``bundle_stage`` ships an earlier stage's model
when a later one measured worse (the card says so; point ``evaluate`` at the
shipped stage).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from training.config import check_keys, read_config

MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "preprocessor_config.json",
               "processor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "chat_template.jinja", "chat_template.json", "video_preprocessor_config.json")


def _card(config: dict) -> Path:
    return Path(config["output"]) / "training_card.json"


def _data_complete(config: dict) -> Path:
    return Path(config["output"]) / "complete"


def _stages():
    """(name, where the stage's output says it is complete, its command's main); DAgger rounds apart."""
    from training.data import storage
    from training.evaluation import benchmark as evaluate
    from training.rl import grpo
    from training.sft import train as sft

    def data(argv: list[str]):
        folder = storage.build_dataset(read_config(argv[0]))
        print(f"{folder}: {storage.sample_count(folder)} chat samples")
        return 0

    before = [
        ("data", _data_complete, data),
        ("grounding_data", _data_complete, data),
        ("grounding", _card, sft.main),
        ("grounding_stream", _card, sft.main),
        ("sft", _card, sft.main),
    ]
    after = [
        ("grpo", _card, grpo.main),
        ("evaluate", lambda config: Path(config["output"]), evaluate.main),
    ]
    return before, after


def _run_stage(path: Path, complete, command, label: str, log) -> str:
    """Run one stage's command unless its output is complete; returns its output."""
    stage_config = read_config(path)
    if not complete(stage_config).is_file():
        log(f"{label}: {path}")
        command([str(path)])
    return stage_config["output"]


def run(config_path: str | Path, log=print) -> dict:
    """Run every stage that is not complete yet; returns {stage: what it produced}."""
    config_path = Path(config_path)
    plan = read_config(config_path)
    produced: dict = {}
    before, after = _stages()
    check_keys(plan, (*(name for name, _, _ in before), "dagger", *(name for name, _, _ in after), "bundle", "bundle_stage"),
               (), f"pipeline config {config_path}")

    def run_stages(stages):
        for name, complete, command in stages:
            if plan.get(name):
                produced[name] = _run_stage(config_path.parent / plan[name], complete, command, name, log)

    run_stages(before)
    if plan.get("dagger"):
        produced.update(_dagger_rounds(config_path.parent, plan["dagger"], log))
    run_stages(after)
    if plan.get("bundle"):
        stage = plan.get("bundle_stage") or next(s for s in ("grpo", "dagger", "sft", "grounding_stream", "grounding") if s in produced)
        if stage not in produced:
            raise SystemExit(f"bundle_stage {stage!r} is not a stage of {config_path}")
        produced["bundled_stage"] = stage
        produced["bundle"] = str(bundle(produced[stage], plan["bundle"], produced))
        log(f"bundled: {produced['bundle']}")
    return produced


def _dagger_rounds(folder: Path, rounds: list[dict], log) -> dict:
    """Each round: its DAgger data configs, then its SFT config; produced["dagger"] is the last round's model."""
    from training.data import storage
    from training.rl import dagger as dagger_data
    from training.sft import train as sft

    def dagger(argv: list[str]):
        folder = dagger_data.build_dagger_dataset(read_config(argv[0]))
        print(f"{folder}: {storage.sample_count(folder)} chat samples")
        return 0

    produced: dict = {"dagger_rounds": []}
    for number, spec in enumerate(rounds, 1):
        data = [_run_stage(folder / name, _data_complete, dagger, f"dagger round {number} data", log) for name in spec["data"]]
        model = _run_stage(folder / spec["sft"], _card, sft.main, f"dagger round {number} sft", log)
        produced["dagger_rounds"].append({"data": data, "sft": model})
        produced["dagger"] = model
    return produced


KEPT_MARKER = "<!-- kept across rebuilds"


def bundle(model: str | Path, target: str | Path, produced: dict) -> Path:
    """Copy a model folder's files (no checkpoints or logs) and write its model card."""
    model, target = Path(model), Path(target)
    card_path = target / "MODEL_CARD.md"
    kept = card_path.read_text() if card_path.is_file() else ""  # its hand-written part survives a rebuild
    kept = kept[kept.index(KEPT_MARKER):] if KEPT_MARKER in kept else ""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in MODEL_FILES:
        if (model / name).is_file():
            shutil.copy2(model / name, target / name)
            (target / name).chmod(0o644)
    card = model_card(produced)
    (target / "model_card.json").write_text(json.dumps(card, indent=1) + "\n")
    card_path.write_text(card_markdown(card, target) + ("\n" + kept if kept else ""))
    return target


def model_card(produced: dict) -> dict:
    """Data, training steps, losses/rewards and evaluation of a pipeline run, from its files."""
    card: dict = {"stages": produced}
    if "data" in produced:
        rows = (Path(produced["data"]) / "samples.jsonl").read_text().splitlines()
        card["data"] = {"folder": produced["data"], "chat_samples": len(rows)}
    for stage in SFT_STAGES:
        if stage in produced:
            card[stage] = _sft_summary(json.loads((Path(produced[stage]) / "training_card.json").read_text()))
    for spec in produced.get("dagger_rounds", []):
        card.setdefault("dagger_rounds", []).append({
            "states": {folder: len((Path(folder) / "samples.jsonl").read_text().splitlines()) for folder in spec["data"]},
            "sft": _sft_summary(json.loads((Path(spec["sft"]) / "training_card.json").read_text()))})
    if "grpo" in produced:
        grpo_card = json.loads((Path(produced["grpo"]) / "training_card.json").read_text())
        steps = grpo_card["steps"]
        card["grpo"] = {"steps": len(steps), "config": grpo_card["config"],
                        "reward_first_10": _mean([s["reward/total"] for s in steps[:10]]),
                        "reward_last_10": _mean([s["reward/total"] for s in steps[-10:]])}
    if "evaluate" in produced and Path(produced["evaluate"]).is_file():
        evaluation = json.loads(Path(produced["evaluate"]).read_text())
        card["evaluated_model"] = evaluation["config"]["model"]
        card["evaluation"] = {name: result["summary"] for name, result in evaluation["results"].items()}
    return card


SFT_STAGES = {"grounding": "SFT on first decisions (grounding)",
              "grounding_stream": "More SFT on first decisions, each from a new phantom made while training (GPU)",
              "sft": "SFT on whole trajectories"}


def _sft_summary(sft_card: dict) -> dict:
    losses = sft_card["losses"]
    summary = {"steps": len(losses), "samples": sft_card["samples"], "loss_first_50": _mean(losses[:50]),
               "loss_last_50": _mean(losses[-50:]), "first_click_evaluations": sft_card["first_click_evaluations"],
               "seconds": sft_card["seconds"], "config": sft_card["config"]}
    if "continued_from" in sft_card:  # a run made of consecutive parts (each with its own warm-up and schedule)
        summary["continued_from"] = _sft_summary(sft_card["continued_from"])
    return summary


def _sft_line(title: str, sft: dict) -> str:
    samples = sft["samples"] if isinstance(sft["samples"], str) else f"{sft['samples']} chat samples"
    line = (f"{title}: {sft['steps']} steps of batch {sft['config']['batch_size']} on {samples}, "
            f"loss {sft['loss_first_50']:.3f} -> {sft['loss_last_50']:.3f} ({sft['seconds'] / 60:.0f} min)")
    if "continued_from" in sft:
        line = f"{_sft_line(title, sft['continued_from'])}; then, from its model, {line[len(title) + 2:]}"
    return line


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else float("nan")


def card_markdown(card: dict, folder: Path) -> str:
    from training.sft.target_map import TERMS as TARGET_TERMS

    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 2**20
    where = "on 2 CPU cores and, for the streamed grounding stage, one GPU" if "grounding_stream" in card else "on 2 CPU cores"
    lines = ["# napari-ibis default agent", "",
             f"A small Qwen3-VL-class model trained from scratch {where} by `napari-ibis pipeline "
             "training/configs/default-agent.yaml` (SFT on first decisions, then on click-simulated trajectories, "
             f"{'then on its own states (DAgger), ' if 'dagger_rounds' in card else ''}then GRPO with the paper's rewards). Synthetic phantoms and the training side of the Colin27/AAL slices; nothing evaluated was "
             "trained on.", "", f"Folder size: {size:.1f} MiB.", ""]
    for stage, title in SFT_STAGES.items():
        if stage not in card:
            continue
        sft = card[stage]
        lines += [f"- {_sft_line(title, sft)}."]
        terms = [f"{name} x {sft['config'][f'{name}_weight']}" for name in TARGET_TERMS
                 if sft["config"].get(f"{name}_weight", 0) > 0]
        if terms:
            lines.append(f"  - target-map terms (training/sft/target_map.py): {', '.join(terms)}")
        for ev in sft["first_click_evaluations"]:
            lines.append(f"  - first click inside the named structure at step {ev['step']}: {ev['hit_rate']:.2f} "
                         f"({ev['cases']} held-out phantom cases; {ev['per_target']})")
    for number, spec in enumerate(card.get("dagger_rounds", []), 1):
        states = sum(spec["states"].values())
        lines.append(f"- DAgger round {number}: {states} states that the previous stage's model reached on the training "
                     f"phantoms, each labelled with the click simulator's decision; then {_sft_line('SFT', spec['sft'])[5:]}.")
    shipped = card["stages"].get("bundled_stage")
    if "grpo" in card:
        grpo = card["grpo"]
        not_shipped = " Not in this folder: it did not measure better than the SFT model it started from." if shipped not in (None, "grpo") else ""
        lines += [f"- GRPO: {grpo['steps']} steps ({grpo['config']['mode']} mode, group {grpo['config']['group_size']}), "
                  f"mean reward {grpo['reward_first_10']:.3f} (first 10 steps) -> {grpo['reward_last_10']:.3f} (last 10).{not_shipped}"]
    if shipped:
        lines += [f"- This folder holds the model of the `{shipped}` stage ({card['stages'][shipped]})."]
    if "evaluation" in card:
        lines += ["", f"Held-out evaluation of {card['evaluated_model']} (`napari-ibis benchmark`):",
                  "", "| set | cases | mean IoU | Dice | entity F1 | steps | parsable | oracle IoU, same clicks | s/case |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, s in card["evaluation"].items():
            lines.append(f"| {name} | {s['cases']} | {s['mean_iou']:.3f} | {s['mean_dice']:.3f} | {s['entity_f1']:.3f} | "
                         f"{s['mean_steps']:.2f} | {s['parsable_share']:.2f} | {s['oracle_iou_same_clicks']:.3f} | "
                         f"{s['seconds_per_case']:.2f} |")
    lines += ["", "What it can do and what it cannot: see the README section 'The bundled default agent'.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Run a whole training recipe (data, SFT, DAgger, GRPO, evaluation) from one config.

    ``napari-ibis pipeline CONFIG``."""
    import argparse

    parser = argparse.ArgumentParser(prog="napari-ibis pipeline")
    parser.add_argument("config", help="e.g. training/configs/default-agent.yaml")
    args = parser.parse_args(argv)
    produced = run(args.config)
    print(json.dumps(produced, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
