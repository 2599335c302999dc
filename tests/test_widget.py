"""The dock widget under a real napari viewer (run under xvfb-run)."""

import threading

import numpy as np
import pytest

from conftest import TERMINATE, ScriptedPolicy, disk_image, point

pytest.importorskip("napari")
pytestmark = pytest.mark.gui


@pytest.fixture
def widget(make_napari_viewer, qtbot, tmp_path):
    from qtpy.QtCore import QSettings

    from napari_ibis._widget import MODEL_CACHE, IbisWidget

    # remembered choices go to a temporary folder, not the person's own settings
    QSettings.setPath(QSettings.Format.NativeFormat, QSettings.Scope.UserScope, str(tmp_path))
    QSettings("napari-ibis", "widget").clear()
    viewer = make_napari_viewer()
    image, mask = disk_image(96, centre=(40, 52), radius=14)
    viewer.add_image(image, name="scan")
    w = IbisWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.segmenter_combo.setCurrentText("classical")
    w.query_edit.setText("segment the disk")

    def use(policy, key="scripted"):
        MODEL_CACHE._items[("policy", key, "auto")] = policy
        w.model_edit.setText(key)
        return policy

    w.use_policy = use
    w.truth = mask
    yield w
    w.cancel.set()
    qtbot.waitUntil(lambda: not w.running, timeout=10_000)


def run_and_wait(w, qtbot, action=None):
    (action or w.run)()
    qtbot.waitUntil(lambda: not w.running, timeout=20_000)


INSIDE = (52.5 / 96, 40.5 / 96)


def test_a_run_streams_text_shows_layers_and_records_steps(widget, qtbot):
    from napari_ibis._layers import CLICKS_NAME, MASK_NAME

    release = threading.Event()

    class Held(ScriptedPolicy):
        def respond(self, request, on_text=None, cancel=None):
            if self.calls == 0:
                on_text("<think>\nthe bright disk ")
                release.wait(10)
            return super().respond(request, on_text, cancel)

    widget.use_policy(Held([point(True, *INSIDE, "is the target"), TERMINATE]))
    widget.run()
    qtbot.waitUntil(lambda: "the bright disk" in widget.transcript.toPlainText(), timeout=10_000)
    assert widget.session is not None and widget.session.steps == []  # text arrived before the step ended
    assert not widget.run_button.isEnabled() and widget.stop_button.isEnabled()
    release.set()
    qtbot.waitUntil(lambda: not widget.running, timeout=20_000)
    viewer = widget.viewer
    assert widget.status.text().startswith("stopped: answered")
    points = viewer.layers[CLICKS_NAME]
    assert points.data.shape == (1, 2) and tuple(points.data[0]) == (40, 52)
    assert bool(points.features["positive"][0]) and points.features["step"][0] == 1
    mask = viewer.layers[MASK_NAME].data
    assert mask[40, 52] == 1 and (mask.astype(bool) & widget.truth).sum() / (mask.astype(bool) | widget.truth).sum() > 0.6
    assert widget.step_list.count() == 3  # start, click, answer
    assert widget.run_button.isEnabled()


def test_undo_redo_reject_accept_update_layers_and_timeline(widget, qtbot):
    from napari_ibis._layers import CLICKS_NAME

    widget.use_policy(ScriptedPolicy([point(True, *INSIDE), point(False, 0.1, 0.1), TERMINATE]))
    run_and_wait(widget, qtbot)
    points = widget.viewer.layers[CLICKS_NAME]
    assert len(points.data) == 2
    widget.undo()
    widget.undo()
    assert widget.session.cursor == 1 and len(points.data) == 1
    widget.redo()
    assert widget.session.cursor == 2 and len(points.data) == 2
    widget.reject()
    assert widget.session.cursor == 1 and not widget.redo_button.isEnabled() and len(points.data) == 1
    widget.accept()
    assert widget.session.accepted == 1


def test_a_user_click_becomes_a_step_and_the_agent_continues(widget, qtbot):
    from napari_ibis._layers import CLICKS_NAME

    policy = widget.use_policy(ScriptedPolicy([point(True, *INSIDE), TERMINATE]))
    widget.max_steps.setValue(1)
    run_and_wait(widget, qtbot)
    points = widget.viewer.layers[CLICKS_NAME]
    points.add([5, 5])  # the person clicks into the clicks layer
    qtbot.waitUntil(lambda: not widget.running and len(widget.session.steps) == 2, timeout=10_000)
    assert widget.session.steps[-1].source == "user"
    widget.max_steps.setValue(5)
    run_and_wait(widget, qtbot, widget.continue_run)
    assert policy.requests[-1].clicks[-1].source == "user"
    assert [s.source for s in widget.session.steps] == ["agent", "user", "agent"]
    assert list(points.features["source"]) == ["agent", "user"]


def test_refine_an_imported_labels_layer(widget, qtbot):
    labels = np.zeros((96, 96), np.uint8)
    labels[widget.truth] = 3
    widget.viewer.add_labels(labels, name="draft")
    policy = widget.use_policy(ScriptedPolicy([TERMINATE]))
    widget.init_combo.setCurrentText("draft")
    widget.init_label.setValue(3)
    run_and_wait(widget, qtbot)
    assert np.array_equal(widget.session.mask, widget.truth)
    assert "refinement step" in policy.requests[0].messages[-1]["content"][1]["text"]


def test_export_to_a_new_and_an_existing_layer_keeps_other_labels(widget, qtbot, tmp_path):
    widget.use_policy(ScriptedPolicy([point(True, *INSIDE), TERMINATE]))
    run_and_wait(widget, qtbot)
    fresh = widget.export_to_layer()
    assert fresh.data.max() == 1 and fresh.data[40, 52] == 1
    existing = np.zeros((96, 96), np.uint16)
    existing[80:90, 80:90] = 7
    widget.viewer.add_labels(existing, name="atlas")
    layer = widget.export_to_layer("atlas", 4)
    assert (layer.data == 7).sum() == 100 and layer.data[40, 52] == 4
    assert "ibis_trajectory" in layer.metadata
    saved = widget.save_result(tmp_path / "result.tif")
    assert saved.exists() and (tmp_path / "result.ibis.json").exists()
    from napari_ibis._layers import MASK_NAME

    assert MASK_NAME in widget.viewer.layers  # kept by default
    widget.remove_working.setChecked(True)
    widget.export_to_layer("atlas", 5)
    assert MASK_NAME not in widget.viewer.layers


def test_a_volume_gets_only_the_current_slice(make_napari_viewer, qtbot):
    from napari_ibis._layers import MASK_NAME
    from napari_ibis._widget import MODEL_CACHE, IbisWidget

    viewer = make_napari_viewer()
    slice_, _ = disk_image(64)
    volume = np.stack([slice_ // 3, slice_, slice_ // 2])
    viewer.add_image(volume, name="vol")
    viewer.dims.set_current_step(0, 1)
    w = IbisWidget(viewer)
    MODEL_CACHE._items[("policy", "scripted-vol", "auto")] = ScriptedPolicy([point(True, 52.5 / 64, 40.5 / 64), TERMINATE])
    w.model_edit.setText("scripted-vol")
    w.segmenter_combo.setCurrentText("classical")
    w.query_edit.setText("segment the disk")
    run_and_wait(w, qtbot)
    mask = viewer.layers[MASK_NAME].data
    assert mask.shape == (3, 64, 64) and mask[1].any() and not mask[0].any() and not mask[2].any()
    result = w.export_to_layer()
    assert result.data[1].any() and not result.data[0].any() and not result.data[2].any()


def test_stop_during_generation(widget, qtbot):
    widget.use_policy(ScriptedPolicy([point(True, *INSIDE, " ".join(["word"] * 2000))], delay=0.005))
    widget.run()
    qtbot.waitUntil(lambda: "word" in widget.transcript.toPlainText(), timeout=10_000)
    widget.stop()
    qtbot.waitUntil(lambda: not widget.running, timeout=2_000)  # within a second or two
    assert widget.status.text().startswith("stopped: cancelled") and widget.session.steps == []
    assert widget.run_button.isEnabled()


def test_a_policy_that_raises_leaves_the_gui_usable(widget, qtbot):
    widget.use_policy(ScriptedPolicy([point(True, *INSIDE), TERMINATE], fail_at=2))
    run_and_wait(widget, qtbot)
    assert "error" in widget.status.text() and len(widget.session.steps) == 1
    assert widget.run_button.isEnabled() and widget.continue_button.isEnabled()
    run_and_wait(widget, qtbot, widget.continue_run)
    assert widget.status.text().startswith("stopped: answered")


def test_missing_model_and_empty_query_are_reported_not_raised(widget, qtbot):
    widget.model_edit.setText("/nonexistent/model")
    run_and_wait(widget, qtbot)
    assert "not found" in widget.status.text() and widget.run_button.isEnabled()
    widget.query_edit.setText("")
    widget.run()
    assert "query" in widget.status.text() and not widget.running


def test_deleting_the_working_layers_mid_run_does_not_crash(widget, qtbot):
    from napari_ibis._layers import CLICKS_NAME, MASK_NAME

    replies = [point(True, *INSIDE), point(False, 0.1, 0.1), point(True, 0.55, 0.45), TERMINATE]
    widget.use_policy(ScriptedPolicy(replies, delay=0.05))
    widget.run()
    qtbot.waitUntil(lambda: MASK_NAME in widget.viewer.layers, timeout=10_000)
    assert widget.running
    widget.viewer.layers.remove(MASK_NAME)
    if CLICKS_NAME in widget.viewer.layers:
        widget.viewer.layers.remove(CLICKS_NAME)
    qtbot.waitUntil(lambda: not widget.running, timeout=20_000)
    assert widget.status.text().startswith("stopped: answered")
    assert MASK_NAME in widget.viewer.layers  # recreated by the next update
