"""The widget's controller without Qt: runs, failures that keep the previous session,
timeline edits with their words, enabled actions, autosave and restore, saving."""

import json

import numpy as np
import pytest
from conftest import TERMINATE, ScriptedPolicy, disk_image, point

from napari_ibis._runtime import ModelCache
from napari_ibis.autosave import Autosave
from napari_ibis.controller import Controller, RunSpec
from napari_ibis.io import trace_path


class RecordingView:
    def __init__(self):
        self.shown, self.errors, self.text = [], [], ""
        self.started = []

    def session_started(self, spec):
        self.started.append(spec)

    def show_step(self, step):
        self.shown.append(step)

    def changed(self):
        pass

    def transcript_reset(self):
        self.text = ""

    def transcript_append(self, readable, raw):
        self.text += readable

    def error(self, message):
        self.errors.append(message)


INSIDE = (52.5 / 96, 40.5 / 96)


@pytest.fixture
def setup(tmp_path):
    image, truth = disk_image(96, centre=(40, 52), radius=14)
    models = ModelCache()
    view = RecordingView()
    controller = Controller(view, models, Autosave(tmp_path / "autosave"))

    def spec(model="scripted", **kw):
        return RunSpec(image=image, query="segment the disk", model=model, segmenter="classical",
                       layer="scan", layer_shape=image.shape, **kw)

    def drive(job):
        controller.begin()
        for item in job:
            controller.handle(item)
        controller.finish()

    return controller, models, view, spec, drive, truth


def test_a_run_that_fails_to_start_keeps_the_previous_session(setup):
    controller, models, view, spec, drive, _ = setup
    models.provide("scripted", ScriptedPolicy([point(True, *INSIDE), TERMINATE]))
    drive(controller.new_session_job(spec()))
    session, steps = controller.session, list(controller.session.steps)
    transcript = controller.transcript.text()
    assert controller.enabled()["undo"] and controller.enabled()["export"]
    drive(controller.new_session_job(spec(model="/nonexistent/model")))
    assert "not found" in controller.status and view.errors
    assert controller.session is session and controller.session.steps == steps
    assert controller.transcript.text() == transcript
    assert all(controller.enabled()[name] for name in ("undo", "accept", "export", "save", "continue"))


def test_the_transcript_is_readable_and_the_raw_text_is_kept(setup):
    controller, models, view, spec, drive, _ = setup
    models.provide("scripted", ScriptedPolicy([point(True, *INSIDE, "the bright disk is the target"), TERMINATE]))
    drive(controller.new_session_job(spec()))
    readable, raw = controller.transcript.text(), controller.transcript.text(raw=True)
    assert "<think>" not in readable and "<action>" not in readable and "Positive Point" not in readable
    assert "the bright disk is the target" in readable and "positive click at row 40, col 52" in readable
    assert "answer: Done." in readable
    assert "<think>" in raw and "Positive Point (0.5469, 0.4219)" in raw
    assert controller.status.startswith("Finished: the agent answered at step 2")


def test_the_persons_steps_and_edits_are_in_the_transcript_and_the_status_follows(setup):
    controller, models, view, spec, drive, _ = setup
    models.provide("scripted", ScriptedPolicy([point(True, *INSIDE), TERMINATE]))
    drive(controller.new_session_job(spec(max_steps=1)))
    assert controller.status.startswith("Stopped after 1 step without an answer")
    drive(controller.click_job(5, 5, False))
    assert "Step 2 (you): negative click at row 5, col 5" in controller.transcript.text()
    assert controller.status.startswith("Your click is step 2")
    controller.undo()
    assert controller.status == f"Undo: back to step 1 ({controller.session.current.area:,} px)."
    assert "Undo: back to step 1" in controller.transcript.text()
    controller.redo()
    assert controller.status.startswith("Redo: forward to step 2")


def test_a_repeated_click_that_changes_nothing_reads_as_finished(setup):
    controller, models, view, spec, drive, truth = setup
    models.provide("scripted", ScriptedPolicy([point(True, *INSIDE)]))
    drive(controller.new_session_job(spec()))
    assert controller.status.startswith("Finished: the agent repeated a click that would not change the mask")
    assert "Stopped" not in controller.transcript.text()


def test_stop_on_an_empty_session_leaves_nothing_to_export(setup):
    controller, models, view, spec, drive, _ = setup
    models.provide("scripted", ScriptedPolicy([point(False, 0.1, 0.1)]))  # a negative click: still 0 px
    drive(controller.new_session_job(spec(max_steps=1)))
    assert controller.session.current.area == 0
    enabled = controller.enabled()
    assert not enabled["accept"] and not enabled["export"] and not enabled["save"]
    assert enabled["run"] and enabled["undo"]


def test_every_step_is_autosaved_and_restores_with_undone_steps_and_transcript(setup, tmp_path):
    controller, models, view, spec, drive, _ = setup
    models.provide("scripted", ScriptedPolicy([point(True, *INSIDE), point(False, 0.1, 0.1), TERMINATE]))
    drive(controller.new_session_job(spec()))
    controller.undo()
    controller.autosave.flush()
    before = controller.session
    entries = controller.autosave.entries()
    assert len(entries) == 1 and entries[0].meta["cursor"] == before.cursor == 2
    # a new controller (napari restarted) finds it for the same slice and rebuilds the timeline
    fresh = Controller(RecordingView(), models, Autosave(tmp_path / "autosave"))
    found = fresh.recoverable([("scan", before.rgb.shape[:2], lambda index, axes: spec().image)])
    assert [name for _, name in found] == ["scan"]
    fresh.begin()
    for item in fresh.restore_job(found[0][0], spec()):
        fresh.handle(item)
    fresh.finish()
    restored = fresh.session
    assert restored.cursor == 2 and len(restored.timeline) == 3 and restored.can_redo
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(restored.timeline, before.timeline))
    assert [c for c in restored.current.clicks] == [c for c in before.current.clicks]
    assert fresh.transcript.text() == controller.transcript.text()
    assert fresh.status.startswith("Restored")
    # other slices are not offered
    assert not fresh.recoverable([("other", before.rgb.shape[:2], lambda index, axes: spec().image[::-1].copy())])


def test_an_exported_session_is_no_longer_offered(setup, tmp_path):
    controller, models, view, spec, drive, _ = setup
    models.provide("scripted", ScriptedPolicy([point(True, *INSIDE), TERMINATE]))
    drive(controller.new_session_job(spec()))
    controller.save(tmp_path / "result.tif", 1, lambda path: True)
    controller.autosave.flush()
    assert controller.autosave.entries() == []
    assert len(controller.autosave.entries(include_exported=True)) == 1


def test_saving_never_overwrites_without_asking(setup, tmp_path):
    controller, models, view, spec, drive, _ = setup
    models.provide("scripted", ScriptedPolicy([point(True, *INSIDE), TERMINATE]))
    drive(controller.new_session_job(spec()))
    first = controller.save(tmp_path / "x.tif", 1, lambda path: True)
    record = (tmp_path / "x.ibis.json").read_text()
    asked = []
    refused = controller.save(tmp_path / "x.nii.gz", 1, lambda path: asked.append(path.name) or False)
    assert first is not None and refused is None and asked == ["x.ibis.json"]
    assert not (tmp_path / "x.nii.gz").exists() and (tmp_path / "x.ibis.json").read_text() == record
    assert controller.status.startswith("Not saved: x.ibis.json exists")
    assert controller.save(tmp_path / "x.nii.gz", 1, lambda path: True) is not None
    assert json.loads(trace_path(tmp_path / "x.nii.gz").read_text())["query"] == "segment the disk"
