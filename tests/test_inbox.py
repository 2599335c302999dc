"""The training inbox: what a kept session holds, and what it never holds."""

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import TERMINATE, ScriptedPolicy, disk_image, point

from napari_ibis import cli
from napari_ibis.inbox import TrainingInbox, target_of
from napari_ibis.segmenters import build_segmenter
from napari_ibis.session import Session

INSIDE = (52.5 / 96, 40.5 / 96)


@pytest.mark.parametrize("query, target", [
    ("Segment the liver.", "liver"),
    ("Please segment the liver tumour in this CT image.", "liver tumour"),
    ("Delineate the boundary of the aorta.", "aorta"),
    ("I need the pancreas masked for volume measurement.", "pancreas"),
    ("Is there a lesion? If so, please segment it.", "lesion"),
    ("I'm wondering if there's a nucleus here; could you show me where it is?", "nucleus"),
    ("Visible polyp? Please provide segmentation.", "polyp"),
    ("left hippocampus", "left hippocampus"),
    ("Where is the spleen?", "spleen"),
    ("where are the kidneys in this scan", "kidneys"),
])
def test_the_target_is_read_from_the_query(query, target):
    assert target_of(query) == target


def test_a_kept_session_holds_every_state_and_the_persons_clicks(tmp_path):
    image, truth = disk_image(96, centre=(40, 52), radius=14)
    policy = ScriptedPolicy([point(True, *INSIDE), point(False, 0.1, 0.1), TERMINATE])
    session = Session(image, "segment the disk", policy, build_segmenter("classical"), max_steps=2)
    list(session.run())
    session.reject()  # the agent's wrong negative click
    session.add_click(30, 52, True)  # the person's own click
    inbox = TrainingInbox(tmp_path)
    inbox.keep(session, raw_slice=image, slice_index=(7,), spacing=(1.0, 0.8, 0.8), names={"layer": "Doe^John"})
    (kept,) = inbox.sessions()
    assert np.array_equal(kept.rgb, session.rgb) and np.array_equal(kept.accepted, session.mask)
    assert [(s.source, s.status) for s in kept.steps] == [("agent", "active"), ("user", "active"), ("agent", "rejected")]
    rejected = kept.steps[2]
    assert np.array_equal(rejected.before, session.step_at(1).mask)  # where the wrong click started from
    assert kept.steps[1].record["clicks"][0] | {"model_xy": None} == {
        "row": 30, "col": 52, "positive": True, "source": "user", "model_xy": None}
    assert kept.meta["slice_index"] == [7] and kept.meta["spacing"] == [1.0, 0.8, 0.8]
    text = (tmp_path / f"{kept.id}.json").read_text()
    assert "Doe" not in text and kept.meta["names"] == {}  # names only with keep_names
    inbox.keep(session)  # the same slice and query again: replaced, not doubled
    assert len(inbox.ids()) == 1


def test_segment_keeps_the_session_without_the_file_name(tmp_path, capsys):
    image, _ = disk_image(64, centre=(30, 30), radius=10)
    volume = np.stack([image] * 3).astype(np.float32)
    path = tmp_path / "Doe_John_2026.nii.gz"
    nib.save(nib.Nifti1Image(volume.transpose(2, 1, 0), np.diag([0.7, 0.7, 2.0, 1.0])), path)
    inbox = tmp_path / "inbox"
    code = cli.main(["segment", str(path), "--query", "segment the disk", "--slice", "1", "--segmenter", "classical",
                     "--keep-for-training", str(inbox), "--out", str(tmp_path / "out.nii.gz"), "--quiet"])
    assert code == 0 and "kept for training" in capsys.readouterr().out
    (kept,) = TrainingInbox(inbox).sessions()
    assert kept.meta["slice_index"] == [1] and kept.rgb.shape[:2] == (64, 64)
    written = "".join(p.read_text() for p in inbox.glob("*.json"))
    assert "Doe" not in written and str(tmp_path) not in written
    assert json.loads(written)["target"] == "disk"


def test_from_sessions_makes_person_dagger_self_reflection_and_answer_samples(tmp_path, capsys, tiny_vlm_folder):
    from training.data.storage import read_dataset

    image, truth = disk_image(96, centre=(40, 52), radius=14)
    policy = ScriptedPolicy([point(True, *INSIDE), point(False, 0.5, 0.45), TERMINATE])
    session = Session(image, "segment the disk", policy, build_segmenter("classical"), max_steps=2)
    list(session.run())
    session.reject()  # the agent's negative click inside the disk was wrong
    session.add_click(30, 52, True)
    session.add_mask_edit(np.pad(truth, 1)[2:, 1:-1] | truth)  # and the person's brush takes in one more row
    TrainingInbox(tmp_path / "inbox").keep(session)
    assert cli.main(["data", "from-sessions", str(tmp_path / "inbox"), str(tmp_path / "data")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "data" / "samples.jsonl").read_text().splitlines()]
    kinds = {row["meta"]["kind"] if "meta" in row else row["kind"]: row for row in rows}
    assert {"session_person", "session_agent_state", "session_self_reflection", "session_answer"} <= set(kinds)
    person = kinds["session_person"]
    reply = person["messages"][-1]["content"]
    assert "Positive point" in reply or "positive" in reply.lower()
    assert all("segment the disk" in row["messages"][1]["content"] for row in rows)  # the person's own words
    assert len(read_dataset(tmp_path / "data")) == len(rows)
    assert cli.main(["data", "from-sessions", str(tmp_path / "inbox"), str(tmp_path / "data")]) == 0
    assert len((tmp_path / "data" / "samples.jsonl").read_text().splitlines()) == len(rows)  # nothing twice
    # the samples fine-tune a VLM agent like any dataset folder, and the result loads as the widget's model
    sft = {"model": str(tiny_vlm_folder), "output": str(tmp_path / "model"), "steps": 2, "log_every": 0,
           "data": [str(tmp_path / "data")]}
    (tmp_path / "sft.json").write_text(json.dumps(sft))
    assert cli.main(["sft", str(tmp_path / "sft.json")]) == 0
    from napari_ibis.policies import load_policy

    assert load_policy(str(tmp_path / "model")).identity()["folder"] == str(tmp_path / "model")


def test_from_sessions_on_an_empty_inbox_says_so_in_one_line(tmp_path, capsys):
    assert cli.main(["data", "from-sessions", str(tmp_path), str(tmp_path / "data")]) == cli.EXIT_BAD_INPUT
    assert "no kept sessions" in capsys.readouterr().err
