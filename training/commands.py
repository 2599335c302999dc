"""``napari-ibis data``: the command that makes training data (it sits above the data and
RL rooms because ``data dagger`` runs a model through :mod:`training.rl.dagger`)."""

from __future__ import annotations

from .config import read_config
from .data.storage import build, export_sharegpt
from .rl import dagger


def data(argv=None) -> int:
    """Make training data: chat samples of simulated trajectories (build), of a model's own states (dagger), exports.

    ``napari-ibis data build CONFIG``, ``napari-ibis data dagger CONFIG`` (:mod:`training.rl.dagger`)
    and ``napari-ibis data export FOLDER OUT``."""
    import argparse

    from tqdm import tqdm

    parser = argparse.ArgumentParser(prog="napari-ibis data")
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="make a dataset folder from a JSON/YAML config")
    build_parser.add_argument("config")
    dagger_parser = commands.add_parser("dagger", help="label the states a model reaches itself with the click simulator's decisions")
    dagger_parser.add_argument("config")
    export_parser = commands.add_parser("export", help="write the ShareGPT / LLaMA-Factory JSON of a dataset folder")
    export_parser.add_argument("folder")
    export_parser.add_argument("out")
    args = parser.parse_args(argv)
    if args.command in ("build", "dagger"):
        make = build if args.command == "build" else dagger.build
        folder = make(read_config(args.config), progress=lambda items: tqdm(items, desc="samples", unit="sample"))
        count = len((folder / "samples.jsonl").read_text().splitlines())
        print(f"{folder}: {count} chat samples")
    else:
        print(export_sharegpt(args.folder, args.out))
    return 0
