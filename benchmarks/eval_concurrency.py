"""Cases per second of `napari-ibis eval` against a served model, by --concurrency.

A loopback fake of an OpenAI-compatible endpoint (tests/fake_openai.py) answers every
request after a fixed delay (200 ms: a served model's latency, not its compute), with one
positive click; the classical segmenter; 32 synthetic disk cases, one step each.

    python benchmarks/eval_concurrency.py [--levels 1 4 16] [--cases 32]

Prints cases per second per level and writes benchmarks/results/eval_concurrency.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
OUT = ROOT / "benchmarks" / "results" / "eval_concurrency.json"


def main() -> int:
    import numpy as np
    from PIL import Image

    from conftest import disk_image, point
    from fake_openai import FakeServer
    from napari_ibis.cli import main as cli

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--cases", type=int, default=32)
    parser.add_argument("--delay", type=float, default=0.2)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        lines = []
        for i in range(args.cases):
            image, mask = disk_image(64, centre=(20 + i % 20, 30), radius=10, seed=i)
            Image.fromarray(image).save(folder / f"img{i}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"mask{i}.png")
            lines.append(json.dumps({"image": f"img{i}.png", "mask": f"mask{i}.png", "target": "disk"}))
        (folder / "cases.jsonl").write_text("\n".join(lines) + "\n")
        server = FakeServer(point(True, 0.47, 0.33), delay=args.delay)
        try:
            for level in args.levels:
                started = time.perf_counter()
                code = cli(["eval", str(folder / "cases.jsonl"), "--policy", f"model:{server.url}", "--segmenter",
                            "classical", "--max-clicks", "1", "--concurrency", str(level), "--json",
                            str(folder / f"report{level}.json")])
                seconds = time.perf_counter() - started
                results[level] = {"cases": args.cases, "seconds": seconds, "cases_per_second": args.cases / seconds,
                                  "exit": code}
                print(f"concurrency {level}: {args.cases / seconds:.2f} cases/s ({seconds:.1f} s)", flush=True)
        finally:
            server.close()
    base = results[args.levels[0]]["cases_per_second"]
    for level in args.levels:
        results[level]["speed_up"] = results[level]["cases_per_second"] / base
    OUT.write_text(json.dumps({"delay_s": args.delay, "levels": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
