"""``napari-ibis``: segment a slice with the agent, or evaluate on a manifest.

Every error a person can fix is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import IbisError, InputError
from .geometry import VIEWS, in_view_order

DESCRIPTION = "Agentic, text-driven biomedical segmentation (IBISAgent): segment a slice, evaluate, train."
EXIT_BAD_INPUT = 2


AUTO = "auto"


def _slice_arg(text: str) -> tuple[int, ...] | str:
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--slice takes integers such as 40 or 0,40, or 'auto', not '{text}'") from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="napari-ibis", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"napari-ibis {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    seg = commands.add_parser("segment", help="run the agent on one image slice")
    seg.add_argument("image", help="PNG/JPEG/TIFF/NIfTI/NRRD/DICOM/NPY file")
    seg.add_argument("--query", required=True, help='what to segment, e.g. "segment the liver tumour"')
    seg.add_argument("--init-mask", help="a mask to refine instead of starting empty")
    seg.add_argument("--label", help="the label value(s) of --init-mask to use in a label map: 3, or 1,2 for "
                     "a structure made of several (a liver with its tumour)")
    seg.add_argument("--model", help="model folder or http(s)://HOST:PORT/v1 endpoint (default: the bundled agent)")
    seg.add_argument("--remote-model", default="ibis", help="model name on a remote endpoint (key from $IBIS_API_KEY)")
    seg.add_argument("--segmenter", help="mobilesam | litemedsam | classical | sam2:CHECKPOINT "
                     "(default: mobilesam once fetched at set-up, else litemedsam)")
    seg.add_argument("--profile", default="ibis-release", choices=["ibis-release", "paper"],
                     help="prompts and action grammar: ibis-release (the released 7B weights; default) or paper")
    seg.add_argument("--history", action=argparse.BooleanOptionalAction, default=None, help="keep earlier turns (profile default)")
    seg.add_argument("--max-steps", type=_non_negative_int, default=20,
                     help="the agent's turns at most (default 20); 0 with --init-mask: no agent step, the "
                          "imported mask as it is (to propagate a mask made elsewhere)")
    seg.add_argument("--slice", type=_slice_arg,
                     help="slice index of a volume (along the --view's axis; two values for 4-D), or 'auto': the agent "
                          "looks through the volume and starts where it sees the structure best (default: the middle slice)")
    seg.add_argument("--view", default="axial", choices=list(VIEWS),
                     help="the plane to slice a 3-D volume in (default axial; --propagate runs across it)")
    seg.add_argument("--series", help="which series of a DICOM folder: its number, UID or a word of its description "
                                      "(default: the one with the most images)")
    seg.add_argument("--window", help="intensity window: ct:LEVEL,WIDTH | percentile:LOW,HIGH | range:MIN,MAX")
    seg.add_argument("--propagate", choices=["both", "up", "down"],
                     help="carry the result through a volume's slices from --slice and write the 3-D labels")
    seg.add_argument("--check", default="none", help="with --propagate: the agent checks every | none | every Nth slice")
    seg.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    seg.add_argument("--out", help="labels file (.nii.gz .nrrd .mha .dcm (DICOM-SEG) .tif .png .npy); default "
                     "IMAGE.ibis.nii.gz beside a NIfTI or a DICOM series, .nrrd / .mha beside those, else .tif")
    seg.add_argument("--trace", help="trajectory JSON; default next to --out")
    seg.add_argument("--keep-for-training", metavar="DIR", help="also keep the session in this training inbox "
                     "(pixels, masks, steps; no names or patient fields): see `napari-ibis data from-sessions`")
    seg.add_argument("--force", action="store_true", help="overwrite existing output files")
    seg.add_argument("--quiet", action="store_true", help="print only the summary")
    seg.add_argument("--raw", action="store_true", help="print the model's text as it wrote it (tags, 0-1 coordinates)")

    ev = commands.add_parser("eval", help="measure a policy and segmenter on the cases of a manifest JSONL (IoU, Dice, NoC)")
    ev.add_argument("manifest")
    ev.add_argument("--policy", default="oracle", help="oracle | model:DIR | default")
    ev.add_argument("--segmenter", help="as for segment (default: mobilesam once fetched, else litemedsam)")
    ev.add_argument("--profile", default="ibis-release", choices=["ibis-release", "paper"])
    ev.add_argument("--max-clicks", type=_positive_int, default=20)
    ev.add_argument("--limit", type=_positive_int, help="evaluate only the first N cases")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--propagate", choices=["both", "up", "down"],
                    help="volume cases: segment the slice where the mask is largest, then propagate (3-D Dice and IoU)")
    ev.add_argument("--start", choices=["largest", "auto"], default="largest",
                    help="with --propagate: the slice to start on: where the mask is largest (default), or 'auto': "
                         "where the agent finds the structure looking through the volume (a model policy; the "
                         "one-query protocol of segment --slice auto)")
    ev.add_argument("--check", default="none", help="with --propagate and a model policy: the agent checks every | none | N")
    ev.add_argument("--corrections", default="0",
                    help="with --propagate: clicks a simulated person then spends on the propagated volume, each on "
                         "the slice with the most wrong pixels, propagating on from it: N, or 'rest' (what --max-clicks "
                         "leaves after the start slice)")
    ev.add_argument("--concurrency", type=_positive_int, default=1,
                    help="cases in flight at once: against served models (model:URL[,URL...] share the load), "
                    "or in as many processes for a local model folder and for --propagate's volumes (each "
                    "process reads its own)")
    ev.add_argument("--json", dest="json_out", help="write the report here (a stopped run resumes from "
                    "REPORT.partial.jsonl when run again)")
    ev.add_argument("--force", action="store_true")

    bt = commands.add_parser("batch", help="run the agent on every image of a folder, every slice of its volumes, "
                             "or every line of a manifest; labels and trajectories per file")
    bt.add_argument("input", help="a folder of images / DICOM series, or a manifest .jsonl "
                    '({"image", "slice"?, "series"?, "query"?, "target"?} per line)')
    bt.add_argument("--out", required=True, help="the folder for the labels, trajectories and batch.jsonl")
    bt.add_argument("--query", help="what to segment in every input (a manifest line's own query otherwise)")
    bt.add_argument("--model", help="model folder, or http(s)://HOST:PORT/v1 endpoints separated by commas "
                    "(default: the bundled agent)")
    bt.add_argument("--remote-model", default="ibis", help="model name on remote endpoints (key from $IBIS_API_KEY)")
    bt.add_argument("--segmenter", help="as for segment")
    bt.add_argument("--profile", default="ibis-release", choices=["ibis-release", "paper"])
    bt.add_argument("--max-steps", type=_positive_int, default=20)
    bt.add_argument("--window", help="intensity window, as for segment")
    bt.add_argument("--device", default="auto")
    bt.add_argument("--propagate", choices=["both", "up", "down"],
                    help="a volume is one structure: the agent finds the slice to start on (a manifest line's "
                         "\"slice\" gives it), segments it, and propagation carries it through (3-D labels per volume)")
    bt.add_argument("--concurrency", type=_positive_int, default=1,
                    help="sessions in flight: threads against served endpoints, processes for a local model")
    bt.add_argument("--force", action="store_true", help="redo inputs whose labels are already in --out")
    st = commands.add_parser("structures", help="list the structures the agent was taught (what it can be asked for)")
    st.add_argument("--model", help="agent folder (default: the bundled pointer agent)")
    for name, entry in extra_commands().items():
        commands.add_parser(name, help=f"{command_summary(entry)} (napari-ibis {name} --help)", add_help=False)
    return parser


def extra_commands() -> dict:
    """Subcommands registered by other packages (entry point group ``napari_ibis.commands``),
    e.g. ``data`` and ``sft`` from the training package; loaded only when used."""
    from importlib.metadata import entry_points

    return {entry.name: entry for entry in entry_points(group="napari_ibis.commands")}


def command_summary(entry) -> str:
    """The first line of the docstring of a subcommand's ``main``, read without importing it."""
    import ast
    import importlib.util

    module, _, function = entry.value.partition(":")
    try:
        spec = importlib.util.find_spec(module)
        tree = ast.parse(Path(spec.origin).read_text())
    except (ImportError, AttributeError, TypeError, OSError, SyntaxError):
        return ""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == (function or "main"):
            doc = ast.get_docstring(node) or ""
            first = doc.strip().splitlines()[0].rstrip(".") if doc.strip() else ""
            return first[:1].lower() + first[1:]
    return ""


# -- segment ---------------------------------------------------------------------------
def _default_out(image: Path) -> Path:
    from .io import labels_suffix_for

    name = image.name[: -len(".nii.gz")] if image.name.lower().endswith(".nii.gz") else image.stem
    return image.with_name(f"{name}.ibis{labels_suffix_for(image)}")


def cmd_segment(args: argparse.Namespace) -> int:
    from . import io
    from .overlay import parse_window
    from .policies import can_locate, check_model, check_query, default_model_folder, load_policy, read_query
    from .propagation import parse_check
    from .segmenters import build_segmenter, check_spec, default_segmenter
    from .session import Session, Stopped
    from .square_pixels import stretch_note
    from .transcript import Transcript, plane_note, stop_words

    args.segmenter = args.segmenter or default_segmenter()

    if not args.query.strip():
        raise InputError("the query is empty: say what to segment, e.g. --query 'segment the liver tumour'")
    image_path = Path(args.image)
    out = Path(args.out) if args.out else _default_out(image_path)
    trace = Path(args.trace) if args.trace else io.trace_path(out)
    # everything that can be checked is checked before anything heavy is loaded
    io.check_labels_path(out, args.force)
    io.check_writable(trace, args.force)
    parse_window(args.window)
    check_spec(args.segmenter)
    check_model(args.model)
    check_every = parse_check(args.check)
    if check_every and not args.propagate:
        raise InputError("--check applies to --propagate")
    if args.label is not None:
        if not args.init_mask:
            raise InputError("--label applies to --init-mask")
        io.label_values(args.label)
    if args.max_steps == 0 and not args.init_mask:
        raise InputError("--max-steps 0 leaves nothing to do without --init-mask (the mask to use as it is)")
    auto = args.slice == AUTO
    if auto and args.init_mask:
        raise InputError("--slice auto lets the agent find the slice; with --init-mask, give the mask's slice (--slice N)")
    if auto and not can_locate(args.model):
        raise InputError(f"the model {args.model or default_model_folder().name} cannot look for a structure through a "
                         "volume (only the pointer agent can): give the slice to start on, --slice N")
    loaded = io.read_image(image_path, None if auto else args.slice, view=args.view, series=args.series)
    if auto and (loaded.frames or len(loaded.slice_index) != 1):
        raise InputError(f"--slice auto looks through a 3-D volume; {image_path.name} has shape {loaded.data.shape}"
                         + (" (several volumes: give --slice FRAME,SLICE)" if loaded.frames else ""))
    if io.suffix_of(out) == ".dcm":
        from .formats import check_dicom_seg_source

        check_dicom_seg_source(loaded.meta.get("geometry"))
    if args.propagate and len(loaded.slice_index) != 1 + bool(loaded.frames):
        raise InputError(f"--propagate needs a 3-D volume; {image_path.name} has shape {loaded.data.shape}")
    init_mask = io.read_mask(args.init_mask, loaded, args.label) if args.init_mask else None
    typed, read_as, untaught = args.query, None, None
    if args.max_steps:  # --max-steps 0: no agent asked
        args.query, read_as = read_query(args.model, args.query)
        untaught = check_query(args.model, args.query)
    for note in (read_as, untaught):
        if note and not args.quiet:
            print(f"Note: {note[0].upper()}{note[1:]}.")
    segmenter = build_segmenter(args.segmenter, device=args.device)
    policy = load_policy(args.model, device=args.device, remote_model=args.remote_model)
    key = None
    if auto:
        key = _find_start(args, loaded, policy)
        if not key.found:
            io.write_json(trace, {"query": args.query, "policy": policy.identity(), "key_slice": key.record(),
                                  "image": {"path": str(image_path), "shape": list(loaded.data.shape)}}, force=args.force)
            print(f"Nothing written but the record {trace}: the agent did not find it in this volume. To let it "
                  "look on one slice, give --slice N.")
            return 0
        loaded = dataclasses.replace(loaded, slice_index=(key.index,))
    session = Session(
        loaded.slice, args.query, policy, segmenter, profile=args.profile, max_steps=max(1, args.max_steps),
        use_history=args.history, init_mask=init_mask, window=args.window, pixel_aspect=loaded.pixel_aspect,
        volume=loaded.volume_slice(),
    )
    show = (lambda readable, raw: None) if args.quiet else (
        lambda readable, raw: print(raw if args.raw else readable, end="", flush=True))
    for note in (plane_note(args.view, args.model is None, command_line=True), stretch_note(session.pixel_aspect),
                 None if auto else slice_note(loaded, args.slice, args.view), frames_note(loaded, args.slice),
                 series_note(loaded, args.series)):
        if note and not args.quiet:
            print(note)
    transcript = Transcript(show)
    stop = None
    for event in session.run() if args.max_steps else ():
        transcript.follow(event, session)
        if isinstance(event, Stopped):
            stop = event
    session.accept()
    record = session.trajectory()
    record["max_steps"] = args.max_steps
    record["image"] = {"path": str(image_path), "slice": list(loaded.slice_index), "shape": list(loaded.data.shape)}
    if loaded.axes:
        record["image"]["view"] = {"plane": args.view, "axes": list(loaded.axes)}
    if loaded.meta.get("series"):
        record["image"]["series"] = loaded.meta["series"]
    if loaded.meta.get("geometry") is not None:
        record["image"]["geometry"] = loaded.meta["geometry"].describe()
    record["init_mask"] = str(args.init_mask) if args.init_mask else None
    if untaught:
        record["untaught"] = untaught
    if read_as:
        record["query_as_typed"], record["read_as"] = typed, read_as
    if key is not None:
        record["key_slice"] = key.record()
    if not args.quiet:
        print()
    if args.max_steps == 0:
        print(f"No agent step (--max-steps 0): the imported mask ({session.current.area:,} px) is the result.")
    else:
        volume = len(loaded.slice_index) == 1 and not loaded.frames and not auto  # what --slice auto can look through
        print(stop_words(stop, session, command_line=True, volume=volume) if stop else "Stopped.")
    labels = session.mask
    if args.propagate:
        if not session.mask.any():
            erased = init_mask is not None and np.asarray(init_mask).any()
            raise InputError("nothing to propagate: the start slice's mask is empty" + (
                " (the agent removed the imported mask; --max-steps 0 propagates it as it is)" if erased else ""))
        labels, record["propagation"] = _propagate(args, loaded, session, segmenter, policy, check_every)
    from .inbox import target_of

    io.write_labels(out, labels, loaded, force=args.force, names={1: target_of(args.query)})
    io.write_json(trace, record, force=args.force)
    steps = len(session.steps)
    print(f"{steps} step{'' if steps == 1 else 's'}, mask {session.current.area:,} px -> {out} (trajectory {trace})")
    if args.keep_for_training:
        from .inbox import TrainingInbox

        geometry = loaded.meta.get("geometry")
        spacing = None if geometry is None else in_view_order(geometry.display_spacing, loaded.axes)
        kept = TrainingInbox(args.keep_for_training).keep(
            session, raw_slice=loaded.slice, slice_index=loaded.slice_index, spacing=spacing,
            modality=str(loaded.meta.get("modality", "")), slice_axes=loaded.axes)
        print(f"kept for training: {kept}")
    return 0


SLICE_ORDER = {"axial": "inferior to superior", "coronal": "front to back", "sagittal": "right to left"}


def slice_note(loaded, chosen, view: str) -> str | None:
    """Where a volume was given without --slice: which slice the agent works on."""
    if chosen is not None or loaded.frames or len(loaded.slice_index) != 1:
        return None
    count = loaded.volume.shape[0]
    placed = loaded.meta.get("geometry") is not None
    kind, order = (f"{view} ", SLICE_ORDER[view]) if placed else ("", "in the file's order")
    return (f"{loaded.path.name} holds {count} {kind}slices (counted {order}): working on the middle one, slice "
            f"{loaded.slice_index[0]}; pick another with --slice N, or let the agent find one with --slice auto.")


def _find_start(args, loaded, policy):
    """``--slice auto``: the slice where the agent sees the structure best (:mod:`napari_ibis.key_slice`)."""
    from .inbox import target_of
    from .key_slice import find_slice

    plane = "" if args.view == "axial" else f"{args.view} "
    count = len(loaded.stack)
    if not args.quiet:
        print(f"Looking for the {target_of(args.query)} through {count} {plane}slices...", flush=True)
    key = find_slice(loaded.stack, args.query, policy, window=args.window, pixel_aspect=loaded.pixel_aspect,
                     volume=loaded.volume_slice())
    said = key.describe(f"the {target_of(args.query)}", plane)
    if key.unsure:
        said += " (--slice N); working there."
    else:
        said += f" ({_how_sure(key.looked[key.index])}); working there." if key.found else "."
    print(said, flush=True)
    return key


def _how_sure(seen) -> str:
    return seen.basis or f"{seen.peak:.0%} sure"


def frames_note(loaded, chosen) -> str | None:
    """Where a file holds several volumes and no slice was asked for: which one is used."""
    if not loaded.frames or chosen is not None:
        return None
    frame, index = loaded.slice_index
    return (f"{loaded.path.name} holds {loaded.frames} volumes on one grid (channels or time points): working on "
            f"frame {frame}, slice {index}; pick others with --slice FRAME,SLICE. The labels are written on the "
            "grid they share.")


def series_note(loaded, chosen) -> str | None:
    """Where a DICOM folder holds other series and none was asked for: which one is used."""
    others = loaded.meta.get("other_series") or []
    if not others or chosen is not None:
        return None
    return (f"{loaded.path.name} holds {len(others) + 1} image series: working on {loaded.meta['series']}; "
            f"the others: {', '.join(others)}. Pick one with --series NUMBER.")


def _spacing(loaded) -> tuple[float, ...] | None:
    """A volume's spacing in mm (axial slices first), where its file gives one."""
    looked_through = loaded.volume_slice()
    return None if looked_through is None else looked_through.spacing


def _propagate(args, loaded, session, segmenter, policy, check_every: int):
    """The start slice's mask carried through the volume; (3-D labels, the record for the trajectory)."""
    from .propagation import Propagation, PropagationDone, agent_checker
    from .structure_limits import limits_for

    start = loaded.slice_index[-1]
    aspect = loaded.pixel_aspect
    checker = (agent_checker(policy, args.query, segmenter, profile=args.profile, pixel_aspect=aspect,
                             volume=loaded.volume_slice())
               if check_every else None)
    through = session.region_through()  # the pointer agent: a brain region through the volume
    if through is not None and not args.quiet:
        print(f"Following {through.describe()}, slice by slice (no segmenter).", flush=True)
    propagation = Propagation(loaded.stack, segmenter, window=args.window, checker=checker, check=check_every,
                              pixel_aspect=aspect, region_of=through, limits=limits_for(args.query),
                              slice_spacing_mm=loaded.slice_spacing)
    started = time.perf_counter()
    for event in propagation.run(start, session.mask, args.propagate):
        if isinstance(event, PropagationDone):
            done = event
        elif not args.quiet:
            note = f" ({event.stopped})" if event.stopped else ""
            verdict = " changed it" if event.agent_changed else " would have replaced it (kept)" if event.agent_overruled else ""
            agent = f", agent {event.agent_steps} step(s){verdict}" if check_every else ""
            print(f"slice {event.index}: {int(event.mask.sum()):,} px{agent}{note}", flush=True)
    seconds = time.perf_counter() - started
    slices = [{"slice": r.index, "area": int(r.mask.sum()), "clicks": [[c.row, c.col] for c in r.clicks],
               "boxed": r.boxed,
               "agent_steps": r.agent_steps, "agent_changed": r.agent_changed,
               "agent_overruled": r.agent_overruled, "stopped": r.stopped, "drifting": r.drifting,
               "likeness": None if np.isnan(r.likeness) else round(r.likeness, 3),
               "seconds": round(r.seconds, 3), "agent": r.trajectory} for r in done.slices]
    occupied = [int(z) for z in np.nonzero(done.labels.any(axis=(1, 2)))[0]]
    plane = "" if args.view == "axial" else f"{args.view} "  # which slices the numbers count
    print(f"propagated {args.propagate} from {plane}slice {start}: structure on {plane}slices {occupied[0]}-{occupied[-1]} "
          f"({len(occupied)} slices, {int(done.labels.sum()):,} voxels) in {seconds:.1f} s; "
          f"to review: {', '.join(map(str, done.flagged)) or 'none'}")
    drifts = [str(i) for i in sorted(r.index for r in done.slices if r.drifting)]
    if drifts and not args.quiet:
        print(f"  (on {plane}slice(s) {', '.join(drifts)} the mask starts to look partly unlike the structure: "
              "check its edge there)")
    record = {"direction": args.propagate, "start": start, "check": args.check, "seconds": seconds,
              "flagged": done.flagged, "slices": slices,
              "followed": "segmenter" if through is None else through.describe()}
    return loaded.in_file_order(done.labels), record


# -- eval ------------------------------------------------------------------------------
def _read_partial(partial: Path | None, count: int) -> dict[int, dict]:
    """Rows of the cases a stopped run finished; the file is rewritten without a line cut short."""
    import json

    done: dict[int, dict] = {}
    if partial is None or not partial.is_file():
        return done
    for line in partial.read_text().splitlines():
        try:
            entry = json.loads(line)
            if 0 <= int(entry["case"]) < count:
                done[int(entry["case"])] = entry["row"]
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short when the run was killed
    partial.write_text("".join(json.dumps({"case": i, "row": row}, default=_plain) + "\n" for i, row in done.items()))
    print(f"resuming: {len(done)} of {count} cases were done", file=sys.stderr)
    return done


def _run_cases(cases, pool, submit, partial: Path | None, progress) -> list[dict]:
    """Every case not yet in ``partial`` through ``submit(pool, index) -> future`` (threads or
    processes), each row appended to ``partial`` as its case ends, so that a killed run loses
    only the cases in flight; the rows in manifest order."""
    import json
    from concurrent.futures import as_completed

    done = _read_partial(partial, len(cases))
    todo = [i for i in range(len(cases)) if i not in done]
    bar = progress(todo)
    handle = open(partial, "a") if partial is not None else None
    try:
        with pool:
            futures = {submit(pool, i): i for i in todo}
            for future in as_completed(futures):
                index, row = futures[future], future.result()
                if handle is not None:
                    handle.write(json.dumps({"case": index, "row": row}, default=_plain) + "\n")
                    handle.flush()
                done[index] = row
                bar.update(1)
    finally:
        if handle is not None:
            handle.close()
        bar.close()
    return [done[i] for i in range(len(cases))]


def _plain(value):
    """JSON for numpy numbers and tuples in result rows."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


def summarise(rows: list[dict], max_clicks: int) -> dict:
    from .metrics import click_summary

    tp = sum(r["entity"][0] for r in rows)
    fp = sum(r["entity"][1] for r in rows)
    fn = sum(r["entity"][2] for r in rows)
    steps = sum(r["steps"] for r in rows)
    report = {
        "cases": len(rows),
        "iou": float(np.mean([r["iou"] for r in rows])),
        "dice": float(np.mean([r["dice"] for r in rows])),
        "f1": 1.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn),
        "mean_steps": steps / len(rows),
        "parsable_share": sum(r["parsable"] for r in rows) / max(1, sum(r["turns"] for r in rows)),
        "seconds_per_step": sum(r["seconds"] for r in rows) / max(1, steps),
        "seconds_per_case": float(np.mean([r["seconds"] for r in rows])),
    }
    report.update(click_summary([r["ious"] for r in rows], max_clicks))
    return report


def cmd_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import io, workers
    from .evaluation import model_case, oracle_case
    from .policies import check_model, default_model_folder, load_policy
    from .segmenters import build_segmenter, default_segmenter

    args.segmenter = args.segmenter or default_segmenter()
    if args.corrections != "0" and not args.propagate:
        raise InputError("--corrections applies to --propagate")
    if args.start != "largest" and not args.propagate:
        raise InputError("--start applies to --propagate")

    out = Path(args.json_out) if args.json_out else None
    if out is not None and out.exists() and not args.force:
        raise InputError(f"{out} exists; pass --force to overwrite it")
    entries = io.manifest_entries(args.manifest)[: args.limit]
    if args.propagate:
        return _evaluate_volumes(args, entries, out)
    cases = [io.load_case(entry) for entry in entries]
    segmenter = build_segmenter(args.segmenter)
    progress = lambda items: tqdm(total=len(items), desc="cases", unit="case", file=sys.stderr,  # noqa: E731
                                  smoothing=0.1)
    partial = out.with_name(out.name + ".partial.jsonl") if out is not None else None
    if args.policy == "oracle":
        pool, mine = workers.thread_pool(args.concurrency, args.segmenter, [])
        rows = _run_cases(cases, pool, lambda p, i: p.submit(
            lambda: oracle_case(cases[i], mine()[0], args.max_clicks)), partial, progress)
        policy_identity = {"name": "oracle"}
    elif args.policy == "default" or args.policy.startswith("model:"):
        target = default_model_folder() if args.policy == "default" else args.policy[len("model:"):]
        endpoints, served = _policies_of(target)
        if served or args.concurrency == 1:
            policies = [load_policy(url, device=args.device) for url in endpoints]
            pool, mine = workers.thread_pool(args.concurrency, args.segmenter, policies)
            rows = _run_cases(cases, pool, lambda p, i: p.submit(
                lambda: model_case(cases[i], mine()[0], mine()[1], args.profile, args.max_clicks)), partial, progress)
            policy_identity = policies[0].identity() if len(policies) == 1 else {
                "name": "remote", "endpoints": [policy.identity() for policy in policies]}
        else:  # a local model: one process per case in flight, each with its own model and segmenter
            check_model(endpoints[0])
            work = (endpoints[0], args.segmenter, args.device)
            pool = workers.process_pool(args.concurrency)
            policy_identity = pool.submit(workers.identities, *work).result()[0]
            rows = _run_cases(cases, pool, lambda p, i: p.submit(
                workers.eval_case, entries[i], *work, args.profile, args.max_clicks), partial, progress)
    else:
        raise InputError(f"unknown policy '{args.policy}': use oracle, model:DIR or default")
    report = summarise(rows, args.max_clicks)
    printable = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in report.items()}
    width = max(len(k) for k in printable)
    for key, value in printable.items():
        print(f"{key:<{width}}  {value}")
    if out is not None:
        io.write_json(
            out,
            {"manifest": str(args.manifest), "policy": policy_identity, "segmenter": segmenter.identity(),
             "max_clicks": args.max_clicks, "concurrency": args.concurrency, "summary": report, "cases": rows},
            force=args.force,
        )
        partial.unlink(missing_ok=True)
    return 0


def _evaluate_volumes(args, entries, out) -> int:
    """``eval --propagate``: each volume case segmented on its largest slice, then propagated.

    Cases are read one at a time where they run (in this process, or in ``--concurrency`` worker
    processes), so a cohort never sits in memory at once; each row is appended to
    ``REPORT.partial.jsonl`` as its case ends and a run started again resumes after it."""
    from tqdm import tqdm

    from . import io, workers
    from .evaluation import VolumeProtocol
    from .policies import check_model, default_model_folder, load_policy
    from .propagation import parse_check
    from .segmenters import build_segmenter

    check = parse_check(args.check)
    rest = args.corrections == "rest"
    try:
        corrections = 0 if rest else int(args.corrections)
    except ValueError:
        corrections = -1
    if corrections < 0:
        raise InputError(f"--corrections takes a number of clicks or 'rest', not '{args.corrections}'")
    folder, served = None, False
    if args.policy != "oracle":
        if not (args.policy == "default" or args.policy.startswith("model:")):
            raise InputError(f"unknown policy '{args.policy}': use oracle, model:DIR or default")
        endpoints, served = _policies_of(default_model_folder() if args.policy == "default"
                                         else args.policy[len("model:"):])
        folder = endpoints[0]
    elif check:
        raise InputError("--check needs a model policy (--policy default or model:DIR)")
    elif args.start == "auto":
        raise InputError("--start auto lets the agent find the slice: it needs a model policy (--policy default or "
                         "model:DIR)")
    protocol = VolumeProtocol(args.propagate, args.max_clicks, str(args.check), corrections, rest, args.profile,
                              args.start)
    progress = lambda items: tqdm(total=len(items), desc="volumes", unit="volume", file=sys.stderr)  # noqa: E731
    partial = out.with_name(out.name + ".partial.jsonl") if out is not None else None
    if served or args.concurrency == 1:  # in this process (threads, one per served endpoint's stream)
        policies = [load_policy(url, device=args.device) for url in endpoints] if folder else []
        pool, mine = workers.thread_pool(args.concurrency, args.segmenter, policies)
        used: dict = {}

        def row(index: int) -> dict:
            segmenter, policy = mine()
            used.setdefault("segmenter", segmenter.identity())
            return workers.volume_row(entries[index], segmenter, policy, protocol)

        rows = _run_cases(entries, pool, lambda p, i: p.submit(row, i), partial, progress)
        policy_identity = {"name": "oracle"} if not policies else policies[0].identity() if len(policies) == 1 \
            else {"name": "remote", "endpoints": [policy.identity() for policy in policies]}
        segmenter_identity = used.get("segmenter") or build_segmenter(args.segmenter).identity()
    else:  # worker processes, each with its own model and segmenter, each reading its own volume
        if folder is not None:
            check_model(folder)
        work = (folder, args.segmenter, args.device)
        pool = workers.process_pool(args.concurrency)
        policy_identity, segmenter_identity = pool.submit(workers.identities, *work).result()
        rows = _run_cases(entries, pool, lambda p, i: p.submit(workers.eval_volume, entries[i], *work, protocol),
                          partial, progress)
    skipped = sum("skipped" in row for row in rows)
    rows = [row for row in rows if "skipped" not in row]
    if not rows:
        raise InputError(f"{Path(args.manifest).name} holds no volume case (a line without \"slice\" whose image is 3-D)")
    if skipped:
        print(f"napari-ibis: note: {skipped} line(s) of {Path(args.manifest).name} are single slices, "
              "left out of the volume evaluation", file=sys.stderr)
    keys = ("dice_3d", "iou_3d", "start_iou", "clicks", "agent_steps", "slices_propagated", "seconds", "seconds_per_slice")
    if corrections or rest:
        keys += ("corrections",)
    if args.start == "auto":
        keys += ("start_found", "start_a_guess", "start_on_structure")
    report = {"cases": len(rows)} | {f"mean_{k}": float(np.mean([r[k] for r in rows])) for k in keys}
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {round(value, 4) if isinstance(value, float) else value}")
    if out is not None:
        io.write_json(out, {"manifest": str(args.manifest), "propagate": args.propagate, "check": args.check,
                            "policy": policy_identity, "segmenter": segmenter_identity,
                            "max_clicks": args.max_clicks, "concurrency": args.concurrency, "summary": report,
                            "cases": rows}, force=args.force)
        partial.unlink(missing_ok=True)
    return 0


# -- batch -----------------------------------------------------------------------------
def _policies_of(target: str) -> tuple[list[str], bool]:
    """(the models named by --model / --policy, whether they are served endpoints)."""
    endpoints = [part.strip() for part in str(target).split(",") if part.strip()]
    served = all(part.startswith(("http://", "https://")) for part in endpoints)
    if len(endpoints) > 1 and not served:
        raise InputError("several models separated by commas must all be http(s):// endpoints")
    return endpoints, served


def cmd_batch(args: argparse.Namespace) -> int:
    import json
    from collections import defaultdict
    from concurrent.futures import FIRST_COMPLETED, wait

    from tqdm import tqdm

    from . import batch, workers
    from .overlay import parse_window
    from .policies import can_locate, check_model, check_query, default_model_folder, load_policy, read_query
    from .segmenters import check_spec, default_segmenter

    args.segmenter = args.segmenter or default_segmenter()
    check_spec(args.segmenter)
    parse_window(args.window)
    items = batch.items_of(args.input, args.query)
    endpoints, served = _policies_of(args.model or default_model_folder())
    if not served:
        check_model(endpoints[0])
        read = {query: read_query(endpoints[0], query) for query in dict.fromkeys(item.query for item in items)}
        items = [item if read[item.query][0] == item.query else
                 dataclasses.replace(item, query=read[item.query][0], typed=item.query) for item in items]
        for query, (fixed, read_as) in read.items():
            untaught = check_query(endpoints[0], fixed)
            for note in (read_as, untaught):
                if note:
                    print(f"note: {note}", file=sys.stderr)
    if args.propagate and any(item.slice is None for item in items) and not can_locate(endpoints[0]):
        raise InputError(f"the model {Path(endpoints[0]).name} cannot look for a structure through a volume (only the "
                         "pointer agent can): give each volume's start slice in a manifest (\"slice\")")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [number for number, item in enumerate(items) if args.force or not batch.is_done(item, out)]
    skipped = len(items) - len(todo)
    if skipped:
        print(f"resuming: {skipped} of {len(items)} inputs were done", file=sys.stderr)
    settings = (args.profile, args.max_steps, args.window)
    if served or args.concurrency == 1:
        policies = [load_policy(part, device=args.device, remote_model=args.remote_model) for part in endpoints]
        pool, mine = workers.thread_pool(args.concurrency, args.segmenter, policies)

        def submit(unit):
            aspect = loaded[unit.item].pixel_aspect
            if unit.volume:
                return pool.submit(lambda: batch.segment_volume(unit.image, items[unit.item].query, mine()[1],
                                                                mine()[0], *settings, aspect, args.propagate, unit.start,
                                                                _spacing(loaded[unit.item])))
            volume = batch.slice_volume(loaded[unit.item], unit.slice)
            return pool.submit(lambda: batch.segment_slice(unit.image, items[unit.item].query, mine()[1], mine()[0],
                                                           *settings, aspect, volume))
    else:
        pool = workers.process_pool(args.concurrency)

        def submit(unit):
            aspect = loaded[unit.item].pixel_aspect
            if unit.volume:
                return pool.submit(workers.batch_volume, unit.image, items[unit.item].query, endpoints[0],
                                   args.segmenter, args.device, *settings, aspect, args.propagate, unit.start,
                                   _spacing(loaded[unit.item]))
            item = items[unit.item]  # the worker reads the volume itself (once per file), not sent with every slice
            source = (str(item.path), item.series, unit.slice) if batch.slice_volume(loaded[unit.item], unit.slice) else None
            return pool.submit(workers.batch_slice, unit.image, item.query, endpoints[0], args.segmenter,
                               args.device, *settings, aspect, source)
    waiting = iter(todo)
    loaded, remaining, results, pending = {}, {}, defaultdict(dict), {}
    failed = 0
    bar = tqdm(total=0, desc="sessions", unit="slice", file=sys.stderr, smoothing=0.1)
    with pool, open(out / "batch.jsonl", "a") as summary:

        def note(line: dict) -> None:
            summary.write(json.dumps(line) + "\n")
            summary.flush()

        def refill() -> None:
            """Read the next inputs while fewer than two sessions per worker are waiting."""
            nonlocal failed
            while len(pending) < 2 * args.concurrency:
                number = next(waiting, None)
                if number is None:
                    return
                try:
                    loaded[number], units = batch.load(items[number], number, args.propagate)
                except InputError as exc:  # one unreadable file does not stop a cohort
                    failed += 1
                    bar.write(f"{items[number].name}: skipped: {exc}")
                    note({"input": items[number].name, "error": str(exc)})
                    continue
                remaining[number] = len(units)
                bar.total += len(units)
                bar.refresh()
                for unit in units:
                    pending[submit(unit)] = unit

        refill()
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                unit = pending.pop(future)
                try:
                    results[unit.item][unit.slice] = future.result()
                except IbisError as exc:  # a model that cannot look through a volume: one line, not a traceback
                    for waiting_future in pending:
                        waiting_future.cancel()
                    raise InputError(f"{items[unit.item].name}: {exc}") from None
                bar.update(1)
                remaining[unit.item] -= 1
                if remaining[unit.item] == 0:
                    line = batch.write_item(items[unit.item], loaded.pop(unit.item), results.pop(unit.item), out)
                    note(line)
                    if unit.volume:
                        where = "not found" if line["start"] is None else f"from slice {line['start']}" + (
                            " (a guess: check it)" if line["start_a_guess"] else "")
                        bar.write(f"{line['input']}: {where}: {line['voxels']:,} voxels on {line['slices_with_result']} "
                                  f"slice(s) -> {line['labels']}")
                    else:
                        bar.write(f"{line['input']}: {line['voxels']:,} px on {line['slices_with_result']} of "
                                  f"{line['sessions']} slice(s) -> {line['labels']}")
            refill()
    bar.close()
    print(f"{len(todo) - failed} input(s) segmented, {skipped} already done, {failed} unreadable; "
          f"labels and trajectories in {out}")
    return 0


def _note_line(message, category, filename, lineno, file=None, line=None) -> None:
    """The package's own warnings (labels written without a geometry) as one line a person
    reads, not Python's file, line number and source; others as Python shows them."""
    from .geometry import GeometryWarning

    if issubclass(category, GeometryWarning):
        print(f"napari-ibis: note: {message}", file=sys.stderr if file is None else file)
    else:
        _show_warning(message, category, filename, lineno, file, line)


_show_warning = warnings.showwarning


# -- structures ------------------------------------------------------------------------
def cmd_structures(args: argparse.Namespace) -> int:
    import textwrap

    from .policies import check_model, default_model_folder, vocabulary_of

    check_model(args.model)
    name = Path(args.model).name if args.model else default_model_folder().name
    vocabulary = vocabulary_of(args.model)
    if vocabulary is None:
        print(f"{name} is a language model: it is asked in words and keeps no list of structures.")
        return 0
    if not len(vocabulary):
        print(f"{name} does not list the structures it was taught (a folder trained before the list was kept).")
        return 0
    print(f"{name} was taught {len(vocabulary)} structures. Ask for one by name (\"segment the left kidney\"), a "
          "left/right pair also without the side (\"the kidney\": it says which one it took):")
    paired = vocabulary.paired()
    print(textwrap.fill(", ".join(paired), width=100, initial_indent="  ", subsequent_indent="  "))
    kinds = sorted(kind for kind in vocabulary.kinds if f"left/right {kind}" not in paired)
    if kinds:
        print(f"and by kind, without the level or lobe: {', '.join(kinds)}.")
    if len(vocabulary.suggestions()) > len(vocabulary):
        print("An AAL brain region also by its full name (\"the left inferior frontal gyrus, opercular part\").")
    print("On a CT volume it also reads the lungs (left, right, both), the heart, the trachea, the spinal cord and the "
          "back muscles beside it from the Hounsfield units, taught or not, the aorta below the chest where it is "
          "filled with contrast, and answers \"not present\" for a structure below the diaphragm at the chest's level.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():
        warnings.showwarning = _note_line
        return _main(argv)


def _main(argv: list[str]) -> int:
    try:
        extra = extra_commands().get(argv[0]) if argv else None
        if extra is not None:  # its own parser, so that `napari-ibis sft --help` is that command's help
            return int(extra.load()(argv[1:]) or 0)
        args = build_parser().parse_args(argv)
        return {"segment": cmd_segment, "eval": cmd_eval, "batch": cmd_batch,
                "structures": cmd_structures}[args.command](args)
    except IbisError as exc:
        print(f"napari-ibis: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("napari-ibis: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `napari-ibis structures | head`: the reader took what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error as Python exits
        return 0


if __name__ == "__main__":
    sys.exit(main())
