"""``python -m training.integrations.make_verl_data OUT [--seeds 0 2000]``: verl parquet files for the ibis_agent loop.

train.parquet: phantoms of the training seeds plus the training side of the real
sets; val.parquet: held-out phantom seeds plus the real sets' evaluation side.
"""

from __future__ import annotations

import argparse

from training.data.sources import colin27_aal, phantom_samples, split_by_group
from training.integrations.verl_loop import write_verl_dataset


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.integrations.make_verl_data")
    parser.add_argument("out")
    parser.add_argument("--seeds", type=int, nargs=2, default=[0, 2000])
    parser.add_argument("--val-seeds", type=int, nargs=2, default=[90000, 90200])
    parser.add_argument("--segmenter", default="classical")
    args = parser.parse_args(argv)
    real_train, real_val = split_by_group(list(colin27_aal()))
    train = list(phantom_samples(range(*args.seeds), absent_probability=0.1)) + real_train
    val = list(phantom_samples(range(*args.val_seeds), absent_probability=0.1)) + real_val
    for split, samples in (("train", train), ("val", val)):
        print(write_verl_dataset(samples, args.out, split, segmenter=args.segmenter), len(samples), "rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
