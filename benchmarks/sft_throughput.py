"""SFT throughput of the small model with one and with two CPU processes (issue 4).

A dataset folder of release-profile samples from synthetic phantoms (seeds
0-19, classical segmenter) and the project's small Qwen3-VL (default TinyConfig,
vocabulary 2048), 40 steps of batch 4 per process: once in this process (two
torch threads), once as two processes under torchrun (gloo, one thread each).
Tokens per second count every non-padding token of every process.

    python benchmarks/sft_throughput.py
Writes benchmarks/results/sft_throughput.json. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.data.storage import build_dataset, read_dataset
from training.sft.tiny import TinyConfig, build_tiny_vlm


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    work = Path(tempfile.mkdtemp())
    data = build_dataset({"output": str(work / "data"), "seeds": [0, 20], "max_steps": 6, "stop_iou": 0.9})
    samples = read_dataset(data)
    corpus = [item["text"] for s in samples for m in s.messages for item in m["content"] if item["type"] == "text"]
    model = build_tiny_vlm(work / "init", corpus, TinyConfig(vocab_size=2048))
    results = {"samples": len(samples), "model": "small Qwen3-VL (TinyConfig defaults, vocabulary 2048)",
               "steps": 40, "batch_per_process": 4}
    for processes in (1, 2):
        config = {"model": str(model), "output": str(work / f"sft{processes}"), "data": str(data), "steps": 40,
                  "batch_size": 4, "log_every": 0, "warmup_fraction": 0.05}
        path = work / f"sft{processes}.json"
        path.write_text(json.dumps(config))
        if processes == 1:
            command = [sys.executable, "-m", "training.sft", str(path)]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                       str(_free_port()), "-m", "training.sft", str(path)]
        subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
        card = json.loads((work / f"sft{processes}" / "training_card.json").read_text())
        results[f"{processes}_process"] = {"tokens_per_second": card["tokens_per_second"], "seconds": card["seconds"],
                                           "loss_first5": sum(card["losses"][:5]) / 5, "loss_last5": sum(card["losses"][-5:]) / 5}
        print(processes, "process(es):", json.dumps(results[f"{processes}_process"]), flush=True)
    out = ROOT / "benchmarks" / "results" / "sft_throughput.json"
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
