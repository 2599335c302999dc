"""``napari-ibis data``: the command that makes training data (it sits above the data and
RL rooms because ``data dagger`` runs a model through :mod:`training.rl.dagger`)."""

from __future__ import annotations

import argparse

from .config import config_parser, describe_fields, load_values
from .data.storage import BuildConfig, build_dataset, export_sharegpt, sample_count
from .rl import sessions
from .rl import dagger


def data(argv=None) -> int:
    """Make training data: chat samples of simulated trajectories (build), of a model's own states (dagger), of kept sessions, exports.

    ``napari-ibis data build CONFIG``, ``napari-ibis data dagger CONFIG`` (:mod:`training.rl.dagger`),
    ``napari-ibis data from-sessions INBOX OUT`` (:mod:`training.rl.sessions`) and
    ``napari-ibis data export FOLDER OUT``."""
    from tqdm import tqdm

    parser = argparse.ArgumentParser(prog="napari-ibis data", description=data.__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, cls, text in (("build", BuildConfig, "make a dataset folder of click-simulated trajectories"),
                            ("dagger", dagger.DaggerConfig, "label the states a model reaches itself with the click simulator's decisions")):
        sub = commands.add_parser(name, help=text, description=text, epilog="config keys:\n" + describe_fields(cls),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        config_parser(f"napari-ibis data {name}", cls, text, parser=sub)
    export_parser = commands.add_parser("export", help="write the ShareGPT / LLaMA-Factory JSON of a dataset folder")
    export_parser.add_argument("folder")
    export_parser.add_argument("out")
    kept = commands.add_parser("from-sessions", help="decision samples from a training inbox of kept sessions",
                               description=sessions.__doc__.split("\n\n")[1])
    kept.add_argument("inbox", help="the inbox folder (the widget's 'keep for training', segment --keep-for-training)")
    kept.add_argument("out", help="the dataset folder to write (a rerun adds only new sessions)")
    kept.add_argument("--profile", default="ibis-release", choices=["ibis-release"],
                      help="one decision per sample (the release's protocol)")
    kept.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command in ("build", "dagger"):
        make = build_dataset if args.command == "build" else dagger.build_dagger_dataset
        folder = make(load_values(args.config, args.set), progress=lambda items: tqdm(items, desc="samples", unit="sample"))
        print(f"{folder}: {sample_count(folder)} chat samples")
    elif args.command == "from-sessions":
        folder = sessions.from_sessions(args.inbox, args.out, args.profile, args.seed,
                                        progress=lambda items: tqdm(items, desc="sessions", unit="session"))
        print(f"{folder}: {sample_count(folder)} chat samples")
    else:
        print(export_sharegpt(args.folder, args.out))
    return 0
