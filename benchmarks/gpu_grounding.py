"""The streamed grounding stage on a GPU within a fixed time (a lent machine's minutes).

Times a short probe run of the config first, then sets ``steps`` so that the real
run fits ``--seconds`` (the cosine schedule then ends where the time does), and
runs it. Prints the probe's and the run's speed; the run's training_card.json
keeps the rest.

    python benchmarks/gpu_grounding.py training/configs/sft-grounding-stream.yaml --seconds 360 \
        --model runs/gpu/grounding --output /tmp/grounding-stream
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.config import read_config  # noqa: E402
from training.sft.train import SFTConfig, train  # noqa: E402


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--seconds", type=float, required=True, help="time for the real run, model saving included")
    parser.add_argument("--model", help="start folder (default: the config's)")
    parser.add_argument("--output", help="output folder (default: the config's)")
    parser.add_argument("--probe-steps", type=int, default=30)
    parser.add_argument("--max-steps", type=int, default=20_000)
    parser.add_argument("--start-seed", type=int, help="first phantom seed (a run continuing another: above the seeds it used)")
    args = parser.parse_args()
    config = SFTConfig(**read_config(args.config))
    stream = {**config.stream, **({"start_seed": args.start_seed} if args.start_seed else {})}
    config = dataclasses.replace(config, model=args.model or config.model, output=args.output or config.output, resume=False,
                                 stream=stream, target_heads_from=(args.model or config.target_heads_from) if config.target_heads_from else "")
    print(f"device {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}, torch {torch.__version__}", flush=True)

    probe_dir = Path(config.output + "-probe")
    started = time.perf_counter()
    probe = train(dataclasses.replace(config, output=str(probe_dir), steps=args.probe_steps, save_every=0, log_every=10), [])
    probe_wall = time.perf_counter() - started
    shutil.rmtree(probe_dir, ignore_errors=True)
    per_step = probe["seconds"] / args.probe_steps
    steps = max(args.probe_steps, min(args.max_steps, int((args.seconds - (probe_wall - probe["seconds"])) / per_step)))
    print(json.dumps({"probe_steps": args.probe_steps, "probe_seconds_per_step": round(per_step, 4),
                      "probe_wall_seconds": round(probe_wall, 1), "steps": steps,
                      "samples_per_second": round(config.batch_size / per_step, 1)}), flush=True)
    record = train(dataclasses.replace(config, steps=steps), [])
    print(json.dumps({"steps": steps, "seconds": round(record["seconds"], 1), "samples": record["samples"],
                      "loss_first100": sum(record["losses"][:100]) / len(record["losses"][:100]),
                      "loss_last100": sum(record["losses"][-100:]) / len(record["losses"][-100:]),
                      "tokens_per_second": round(record["tokens_per_second"])}), flush=True)


if __name__ == "__main__":
    main()
