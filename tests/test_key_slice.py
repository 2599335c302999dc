"""Finding the slice to start on: the agent looks through a volume (``--slice auto``)."""

import json
import threading

import nibabel as nib
import numpy as np
import pytest
from conftest import LARGEST, TERMINATE, Locating, ScriptedPolicy, SeesItEverywhere, ball_volume, point

from napari_ibis.cli import main
from napari_ibis.errors import Cancelled, InputError
from napari_ibis.key_slice import find_slice, first_pass
from napari_ibis.policies.base import Located

def test_the_search_closes_in_on_the_slice_where_the_structure_is_largest():
    volume, masks = ball_volume()
    assert LARGEST not in first_pass(len(volume))
    policy = Locating()
    key = find_slice(volume, "segment the disk", policy)
    assert key.index == LARGEST == int(np.argmax(masks.sum(axis=(1, 2))))
    assert policy.looked_at == len(key.looked) < len(volume) // 2  # far fewer looks than slices
    assert "seen clearly around slice 37" in key.describe("the disk")
    assert key.record()["slice"] == LARGEST and len(key.record()["looked"]) == len(key.looked)


def test_a_structure_on_no_slice_is_not_found():
    volume, _ = ball_volume(largest=None)
    key = find_slice(volume, "segment the disk", Locating())
    assert key.index is None and not key.found
    assert "not found on any" in key.describe("the disk")


def test_a_lesion_seen_on_most_slices_is_a_guess_and_said_to_be_one(tmp_path, capsys, monkeypatch):
    """A lesion lies on a few slices: where the map finds one on nearly every slice looked at, the
    search says its slice is a guess (and the CLI names --slice); an organ seen as widely is not."""
    volume, _ = ball_volume()
    key = find_slice(volume, "segment the liver tumour", SeesItEverywhere())
    assert key.found and key.unsure and key.record()["unsure"]
    said = key.describe("the liver tumour")
    assert "seen on 16 of the 16 spread through the stack" in said and f"slice {key.index} is a guess" in said
    organ = find_slice(volume, "segment the liver", SeesItEverywhere())
    assert not organ.unsure and "seen clearly" in organ.describe("the liver")
    few = volume.copy()
    few[np.abs(np.arange(len(few)) - LARGEST) > 4] = 30  # the disk on nine slices only: a lesion's extent
    focal = find_slice(few, "segment the tumour", Locating())
    assert focal.found and not focal.unsure and abs(focal.index - LARGEST) <= 4
    stdout, out = _segment_auto(tmp_path, capsys, monkeypatch, volume, SeesItEverywhere([TERMINATE]),
                                "segment the liver tumour")
    assert "is a guess" in stdout and "(--slice N); working there." in stdout
    assert json.loads(out.with_name("disk.ibis.json").read_text())["key_slice"]["unsure"] is True
    folder = tmp_path / "in"
    folder.mkdir()
    _write(folder, volume)
    monkeypatch.setattr("napari_ibis.policies.check_model", lambda *a, **k: None)
    code = main(["batch", str(folder), "--query", "segment the liver tumour", "--out", str(tmp_path / "out"),
                 "--model", "any", "--segmenter", "classical", "--propagate", "both"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads((tmp_path / "out" / "batch.jsonl").read_text())["start_a_guess"] is True
    assert "(a guess: check it)" in captured.out


def test_a_policy_that_cannot_locate_is_refused_in_one_line_and_a_search_can_be_stopped():
    volume, _ = ball_volume()
    with pytest.raises(InputError, match="cannot look for a structure through a volume"):
        find_slice(volume, "segment the disk", ScriptedPolicy([TERMINATE]))
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        find_slice(volume, "segment the disk", Locating(), cancel=stop)


def _write(tmp_path, volume) -> str:
    # display order (Z, rows, cols) -> the file's (x, y, z), as io reads it back
    nib.save(nib.Nifti1Image(np.ascontiguousarray(volume.transpose(2, 1, 0)[::-1, ::-1]), np.diag([1.0, 1.0, 2.0, 1.0])),
             tmp_path / "ball.nii.gz")
    return str(tmp_path / "ball.nii.gz")


def _segment_auto(tmp_path, capsys, monkeypatch, volume, policy, query="segment the disk"):
    """``napari-ibis segment VOLUME --slice auto --query QUERY`` with ``policy``: (stdout, the labels file)."""
    path = _write(tmp_path, volume)
    monkeypatch.setattr("napari_ibis.policies.load_policy", lambda *a, **k: policy)
    monkeypatch.setattr("napari_ibis.policies.can_locate", lambda model: True)
    out = tmp_path / "disk.nii.gz"
    code = main(["segment", path, "--query", query, "--slice", "auto", "--segmenter", "classical",
                 "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    return stdout, out


def test_segment_slice_auto_works_on_the_slice_it_found_and_records_the_search(tmp_path, capsys, monkeypatch):
    volume, masks = ball_volume()
    stdout, out = _segment_auto(tmp_path, capsys, monkeypatch, volume,
                                Locating([point(True, 32.5 / 64, 32.5 / 64), TERMINATE]))
    assert "seen clearly around slice 37" in stdout and "working on the middle one" not in stdout
    written = np.asarray(nib.load(out).dataobj).transpose(2, 1, 0)[:, ::-1, ::-1]  # back to display order
    assert written.any(axis=(1, 2)).nonzero()[0].tolist() == [LARGEST]
    dice = 2 * (written[LARGEST] > 0)[masks[LARGEST]].sum() / ((written[LARGEST] > 0).sum() + masks[LARGEST].sum())
    assert dice > 0.9
    record = json.loads(out.with_name("disk.ibis.json").read_text())
    assert record["key_slice"]["slice"] == LARGEST and record["image"]["slice"] == [LARGEST]


def test_segment_slice_auto_that_finds_nothing_says_so_and_writes_no_labels(tmp_path, capsys, monkeypatch):
    stdout, out = _segment_auto(tmp_path, capsys, monkeypatch, ball_volume(largest=None)[0], Locating())
    assert "not found on any" in stdout and not out.exists()
    assert json.loads(out.with_name("disk.ibis.json").read_text())["key_slice"]["slice"] is None


def test_slice_auto_is_refused_with_an_imported_mask_and_on_a_2d_image(tmp_path, capsys, monkeypatch):
    volume, masks = ball_volume()
    path = _write(tmp_path, volume)
    np.save(tmp_path / "m.npy", masks[LARGEST])
    assert main(["segment", path, "--query", "q", "--slice", "auto", "--init-mask", str(tmp_path / "m.npy")]) == 2
    assert "give the mask's slice" in capsys.readouterr().err
    np.save(tmp_path / "flat.npy", volume[0])
    monkeypatch.setattr("napari_ibis.policies.load_policy", lambda *a, **k: Locating())
    monkeypatch.setattr("napari_ibis.policies.can_locate", lambda model: True)
    assert main(["segment", str(tmp_path / "flat.npy"), "--query", "q", "--slice", "auto"]) == 2
    assert "looks through a 3-D volume" in capsys.readouterr().err


def test_eval_start_auto_scores_the_one_query_protocol(tmp_path, capsys, monkeypatch):
    """``eval --propagate --start auto``: the agent finds the start slice itself; the row says
    where it started and whether the structure is there, then the 3-D Dice as usual."""
    volume, masks = ball_volume()
    nib.save(nib.Nifti1Image(volume.transpose(2, 1, 0).copy(), np.eye(4)), tmp_path / "ball.nii.gz")
    nib.save(nib.Nifti1Image(masks.transpose(2, 1, 0).astype(np.uint8), np.eye(4)), tmp_path / "disk.nii.gz")
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "ball.nii.gz", "mask": "disk.nii.gz", "target": "disk"}) + "\n")
    monkeypatch.setattr("napari_ibis.policies.load_policy",
                        lambda *a, **k: Locating([point(True, 32.5 / 64, 32.5 / 64), TERMINATE]))
    code = main(["eval", str(tmp_path / "m.jsonl"), "--propagate", "both", "--start", "auto", "--policy", "model:any",
                 "--segmenter", "classical", "--json", str(tmp_path / "r.json")])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "r.json").read_text())
    row = report["cases"][0]
    assert row["start_found"] and row["start_on_structure"] and row["start"] == row["largest"] and not row["start_a_guess"]
    assert row["looks"] < 30 and row["dice_3d"] > 0.8
    assert report["summary"]["mean_start_on_structure"] == 1.0
    assert main(["eval", str(tmp_path / "m.jsonl"), "--propagate", "both", "--start", "auto"]) == 2
    assert "needs a model policy" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "m.jsonl"), "--start", "auto"]) == 2
    assert "--start applies to --propagate" in capsys.readouterr().err


def test_batch_propagate_makes_one_structure_per_volume_from_the_slice_the_agent_finds(tmp_path, capsys, monkeypatch):
    """``batch --propagate``: each volume of a folder is one structure through its slices, started
    where the agent finds it; a volume where it finds nothing gets empty labels and says so."""
    folder = tmp_path / "in"
    folder.mkdir()
    volume, masks = ball_volume()
    _write(folder, volume)
    (folder / "ball.nii.gz").rename(folder / "with.nii.gz")
    _write(folder, ball_volume(largest=None)[0])
    (folder / "ball.nii.gz").rename(folder / "without.nii.gz")
    monkeypatch.setattr("napari_ibis.policies.load_policy",
                        lambda *a, **k: Locating([point(True, 32.5 / 64, 32.5 / 64), TERMINATE]))
    monkeypatch.setattr("napari_ibis.policies.check_model", lambda *a, **k: None)
    monkeypatch.setattr("napari_ibis.policies.can_locate", lambda model: True)
    out = tmp_path / "out"
    code = main(["batch", str(folder), "--query", "segment the disk", "--out", str(out), "--model", "any",
                 "--segmenter", "classical", "--propagate", "both"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = {line["input"]: line for line in map(json.loads, (out / "batch.jsonl").read_text().splitlines())}
    assert lines["with"]["start"] == LARGEST and lines["without"]["start"] is None and lines["without"]["not_present"]
    assert not lines["with"]["start_a_guess"] and "a guess" not in captured.out
    labels = np.asarray(nib.load(out / "with.ibis.nii.gz").dataobj).transpose(2, 1, 0)[:, ::-1, ::-1] > 0
    occupied = np.nonzero(labels.any(axis=(1, 2)))[0]
    assert LARGEST in occupied and len(occupied) > 20  # carried through the slices, not the start slice alone
    assert 2 * (labels & masks).sum() / (labels.sum() + masks.sum()) > 0.8
    assert not np.asarray(nib.load(out / "without.ibis.nii.gz").dataobj).any()
    trace = json.loads((out / "with.ibis.json").read_text())["volume"]
    assert trace["key_slice"]["slice"] == LARGEST and trace["propagation"]["slices"]
    assert "with: from slice 37" in captured.out and "without: not found" in captured.out


def test_a_model_that_cannot_look_through_a_volume_is_refused_before_it_loads(tmp_path, capsys, tiny_vlm_folder,
                                                                             monkeypatch):
    volume, _ = ball_volume()
    path = _write(tmp_path, volume)
    monkeypatch.setattr("napari_ibis.policies.load_policy", lambda *a, **k: pytest.fail("loaded the model"))
    assert main(["segment", path, "--query", "q", "--slice", "auto", "--model", str(tiny_vlm_folder)]) == 2
    assert "cannot look for a structure through a volume" in capsys.readouterr().err
    assert main(["batch", str(tmp_path), "--query", "q", "--out", str(tmp_path / "o"), "--model", str(tiny_vlm_folder),
                 "--propagate", "both"]) == 2
    assert "give each volume's start slice in a manifest" in capsys.readouterr().err


def test_one_noisy_slice_at_the_end_does_not_win_over_where_the_structure_looks_clear():
    """On a scan the agent never saw one slice's score can spike (its map takes in a neighbour);
    the search starts from the middle of the slices where the structure looks clear."""
    from napari_ibis.key_slice import middle_of_clear

    scores = {0: 100, 1: 20, 2: 60, 3: 70, 4: 65, 5: 55, 6: 10}
    looked = {z: Located(score=float(s), peak=0.8, present=True) for z, s in scores.items()}
    looked[7] = Located(score=500.0, peak=0.3, present=False)  # not called present: not counted
    assert middle_of_clear(looked) == 3
    assert middle_of_clear({z: Located(1.0, 0.1, False) for z in range(5)}) is None


def test_not_present_on_one_slice_of_a_volume_points_to_the_search(tmp_path, capsys, monkeypatch):
    from napari_ibis.transcript import stop_words

    volume, _ = ball_volume()
    monkeypatch.setattr("napari_ibis.policies.load_policy", lambda *a, **k: Locating())
    code = main(["segment", _write(tmp_path, volume), "--query", "segment the disk", "--slice", "5", "--segmenter",
                 "classical", "--out", str(tmp_path / "d.nii.gz")])
    stdout = capsys.readouterr().out
    assert code == 0 and "not in this slice. --slice auto lets it look through the volume." in stdout

    from types import SimpleNamespace

    stop, session = SimpleNamespace(reason="not_present"), SimpleNamespace(current=SimpleNamespace(area=0), cursor=1)
    assert stop_words(stop, session, volume=True).endswith("Find slice lets it look through the volume.")
    assert stop_words(stop, session).endswith("not in this slice.")
