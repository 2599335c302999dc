"""The dock widget under a real napari viewer (run under xvfb-run)."""

import threading

import nibabel as nib
import numpy as np
import pytest
from conftest import LARGEST, TERMINATE, Locating, ScriptedPolicy, SeesItEverywhere, ball_volume, disk_image, point

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

INSIDE = (52.5 / 96, 40.5 / 96)


@pytest.fixture
def make_widget(make_napari_viewer, qtbot, tmp_path):
    from qtpy.QtCore import QSettings

    from napari_ibis._runtime import ModelCache
    from napari_ibis._widget import IbisWidget
    from napari_ibis.autosave import Autosave
    from napari_ibis.inbox import TrainingInbox

    # remembered choices and autosaves go to a temporary folder, not the person's own
    QSettings.setPath(QSettings.Format.NativeFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    QSettings("napari-ibis", "widget").clear()
    made = []

    def make(viewer=None, image=None, name="scan", models=None):
        viewer = viewer or make_napari_viewer()
        if image is None:
            image, _ = disk_image(96, centre=(40, 52), radius=14)
        if name not in viewer.layers:
            viewer.add_image(image, name=name)
        w = IbisWidget(viewer, warm_up=False, autosave=Autosave(tmp_path / "autosave"), models=models or ModelCache(),
                       inbox=TrainingInbox(tmp_path / "inbox"))
        viewer.window.add_dock_widget(w)
        w.run_panel.segmenter_combo.setCurrentText("classical")
        w.run_panel.query_edit.setText("segment the disk")

        def use(policy, key="scripted"):
            w.controller.models.provide(key, policy)
            w.run_panel.model_edit.setText(key)
            return policy

        w.use_policy = use
        made.append(w)
        return w

    yield make
    for w in made:
        w.controller.cancel.set()
        qtbot.waitUntil(lambda: not w.running, timeout=10_000)


@pytest.fixture
def widget(make_widget):
    w = make_widget()
    w.truth = disk_image(96, centre=(40, 52), radius=14)[1]
    return w


def run_and_wait(w, qtbot, action=None):
    (action or w.run)()
    qtbot.waitUntil(lambda: not w.running, timeout=20_000)


def test_a_run_streams_readable_text_shows_layers_and_records_steps(widget, qtbot):
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
    transcript = widget.steps_panel.transcript
    qtbot.waitUntil(lambda: "the bright disk" in transcript.toPlainText(), timeout=10_000)
    assert widget.controller.session is not None and widget.controller.session.steps == []  # text before the step ended
    assert "<think>" not in transcript.toPlainText()
    assert not widget.run_panel.run_button.isEnabled() and widget.run_panel.stop_button.isEnabled()
    release.set()
    qtbot.waitUntil(lambda: not widget.running, timeout=20_000)
    viewer = widget.viewer
    assert widget.steps_panel.status.text().startswith("Finished: the agent answered")
    assert "positive click at row 40, col 52" in transcript.toPlainText()
    points = viewer.layers[CLICKS_NAME]
    assert points.data.shape == (1, 2) and tuple(points.data[0]) == (40, 52)
    assert bool(points.features["positive"][0]) and points.features["step"][0] == 1
    mask = viewer.layers[MASK_NAME].data
    assert mask[40, 52] == 1 and (mask.astype(bool) & widget.truth).sum() / (mask.astype(bool) | widget.truth).sum() > 0.6
    assert widget.steps_panel.step_list.count() == 3  # start, click, answer
    assert widget.run_panel.run_button.isEnabled()
    widget.steps_panel.raw_box.setChecked(True)  # the raw model text is one click away
    assert "<think>" in transcript.toPlainText() and "Positive Point (0.5469, 0.4219)" in transcript.toPlainText()


def test_undo_redo_reject_accept_update_layers_timeline_and_status(widget, qtbot):
    from napari_ibis._layers import CLICKS_NAME

    widget.use_policy(ScriptedPolicy([point(True, *INSIDE), point(False, 0.1, 0.1), TERMINATE]))
    run_and_wait(widget, qtbot)
    points = widget.viewer.layers[CLICKS_NAME]
    session = widget.controller.session
    assert len(points.data) == 2
    widget.undo()
    widget.undo()
    assert session.cursor == 1 and len(points.data) == 1
    assert widget.steps_panel.status.text().startswith("Undo: back to step 1")  # not the old "Finished"
    widget.redo()
    assert session.cursor == 2 and len(points.data) == 2
    widget.reject()
    assert session.cursor == 1 and not widget.steps_panel.redo_button.isEnabled() and len(points.data) == 1
    widget.accept()
    assert session.accepted == 1 and widget.steps_panel.status.text().startswith("Accepted step 1")


def test_a_user_click_becomes_a_step_and_the_agent_continues(widget, qtbot):
    from napari_ibis._layers import CLICKS_NAME

    policy = widget.use_policy(ScriptedPolicy([point(True, *INSIDE), TERMINATE]))
    widget.run_panel.max_steps.setValue(1)
    run_and_wait(widget, qtbot)
    points = widget.viewer.layers[CLICKS_NAME]
    points.add([5, 5])  # the person clicks into the clicks layer
    session = widget.controller.session
    qtbot.waitUntil(lambda: not widget.running and len(session.steps) == 2, timeout=10_000)
    assert session.steps[-1].source == "user"
    assert "Step 2 (you): positive click at row 5, col 5" in widget.steps_panel.transcript.toPlainText()
    widget.run_panel.max_steps.setValue(5)
    run_and_wait(widget, qtbot, widget.continue_run)
    assert policy.requests[-1].clicks[-1].source == "user"
    assert [s.source for s in session.steps] == ["agent", "user", "agent"]
    assert list(points.features["source"]) == ["agent", "user"]


def test_max_steps_0_lets_the_person_click_first_on_an_imported_mask(widget, qtbot):
    """Correcting a mask (a propagated slice, a colleague's draft) without the agent touching it:
    Run with max steps 0 sets up the session on the imported mask and waits for the person's
    clicks; Continue then lets the agent go on."""
    from napari_ibis._layers import CLICKS_NAME

    labels = np.zeros((96, 96), np.uint8)
    labels[widget.truth] = 1
    labels[:10, :10] = 1  # a stray part to take away
    widget.viewer.add_labels(labels, name="draft")
    policy = widget.use_policy(ScriptedPolicy([TERMINATE]))
    widget.run_panel.init_combo.setCurrentText("draft")
    widget.run_panel.max_steps.setValue(0)
    assert widget.run_panel.max_steps.text() == "0: you click"
    run_and_wait(widget, qtbot)
    session = widget.controller.session
    assert not policy.requests and session.cursor == 0 and session.current.area == labels.sum()
    assert "Your turn (max steps 0)" in widget.controller.status
    widget.steps_panel.sign_box.setChecked(False)
    widget.viewer.layers[CLICKS_NAME].add([4, 4])  # a negative click on the stray part
    qtbot.waitUntil(lambda: not widget.running and session.cursor == 1, timeout=10_000)
    assert not session.mask[:10, :10].any() and session.mask[widget.truth].all()
    run_and_wait(widget, qtbot, widget.continue_run)
    assert len(policy.requests) == 1 and [s.source for s in session.steps] == ["user", "agent"]


def test_a_new_session_starts_its_transcript_afresh(widget, qtbot):
    """The transcript shows the session on screen, as the raw view and the autosave hold it, not
    the previous session's steps above it."""
    widget.use_policy(ScriptedPolicy([point(True, *INSIDE), TERMINATE]))
    widget.run_panel.query_edit.setText("segment the first thing")
    run_and_wait(widget, qtbot)
    widget.use_policy(ScriptedPolicy([point(True, *INSIDE), TERMINATE]), key="second")
    widget.run_panel.query_edit.setText("segment the second thing")
    run_and_wait(widget, qtbot)
    text = widget.steps_panel.transcript.toPlainText()
    assert "Query: segment the second thing" in text and "first thing" not in text
    widget.steps_panel.raw_box.setChecked(True)
    widget.steps_panel.raw_box.setChecked(False)
    assert widget.steps_panel.transcript.toPlainText() == text


def test_clicks_on_one_spot_stay_visible_with_one_label(widget, qtbot):
    from napari_ibis._layers import CLICKS_NAME

    widget.use_policy(ScriptedPolicy([point(True, *INSIDE), TERMINATE]))
    widget.run_panel.max_steps.setValue(1)
    run_and_wait(widget, qtbot)
    points = widget.viewer.layers[CLICKS_NAME]
    points.add([41, 52])  # the person clicks next to the agent's click
    qtbot.waitUntil(lambda: not widget.running and len(widget.controller.session.steps) == 2, timeout=10_000)
    assert list(points.features["label"]) == ["1,2", ""]  # one label, not two printed over each other
    assert points.size[1] > points.size[0]  # the later click is a larger ring around the first


def test_refine_an_imported_labels_layer(widget, qtbot):
    labels = np.zeros((96, 96), np.uint8)
    labels[widget.truth] = 3
    labels[:4, :4] = 5  # another structure of the same label map
    widget.viewer.add_labels(labels, name="draft")
    policy = widget.use_policy(ScriptedPolicy([TERMINATE]))
    widget.run_panel.init_combo.setCurrentText("draft")
    widget.run_panel.init_label.setValue(3)
    run_and_wait(widget, qtbot)
    assert np.array_equal(widget.controller.session.mask, widget.truth)
    assert "refinement step" in policy.requests[0].messages[-1]["content"][1]["text"]
    # 'any' (the default): every labelled pixel, as a liver labelled with its tumour is one structure
    widget.use_policy(ScriptedPolicy([TERMINATE]))
    widget.run_panel.init_label.setValue(0)
    assert widget.run_panel.init_label.text() == "any"
    run_and_wait(widget, qtbot)
    assert np.array_equal(widget.controller.session.mask, labels != 0)


def test_start_from_labels_on_another_grid_or_for_a_scan_of_several_volumes(make_widget, make_napari_viewer, qtbot,
                                                                            tmp_path):
    """Labels opened from a file cropped to the organ (another grid of the scan) start the session
    where they lie in the patient; one labels volume serves every frame of a two-sequence scan."""
    from napari_ibis._reader import get_reader
    from napari_ibis.phantoms import phantom_volume

    volume = phantom_volume(0)
    liver = volume.masks["liver"]
    to_file = lambda display: np.ascontiguousarray(display.transpose(2, 1, 0)[::-1, ::-1])  # noqa: E731
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(np.stack([to_file(volume.image)] * 2, axis=-1), affine), tmp_path / "mri.nii.gz")
    filed = to_file(liver.astype(np.uint8))
    low = np.argwhere(filed).min(axis=0) - 1  # the liver's box, as some tools save a mask
    high = np.argwhere(filed).max(axis=0) + 2
    crop_affine = affine.copy()
    crop_affine[:3, 3] = low * [0.8, 0.8, 2.5]
    nib.save(nib.Nifti1Image(filed[low[0]:high[0], low[1]:high[1], low[2]:high[2]], crop_affine),
             tmp_path / "liver_seg.nii.gz")
    viewer = make_napari_viewer()
    for path in (tmp_path / "mri.nii.gz", tmp_path / "liver_seg.nii.gz"):
        for data, kwargs, kind in get_reader(str(path))(str(path)):
            viewer._add_layer_from_data(data, kwargs, kind)
    assert viewer.layers["liver_seg"].data.shape != liver.shape
    z = int(np.argmax(liver.sum(axis=(1, 2))))
    viewer.dims.set_current_step(0, 1)
    viewer.dims.set_current_step(1, z)
    w = make_widget(viewer, name="mri")
    w.use_policy(ScriptedPolicy([TERMINATE]))
    w.run_panel.init_combo.setCurrentText("liver_seg")
    run_and_wait(w, qtbot)
    assert w.controller.spec.index == (1, z)
    assert np.array_equal(w.controller.session.mask, liver[z])


def test_export_to_new_and_existing_layers_keeps_other_labels_and_the_working_layers_on_top(widget, qtbot, tmp_path):
    from napari_ibis._layers import CLICKS_NAME, MASK_NAME

    widget.use_policy(ScriptedPolicy([point(True, *INSIDE), TERMINATE]))
    run_and_wait(widget, qtbot)
    fresh = widget.export_to_layer()
    assert fresh.data.max() == 1 and fresh.data[40, 52] == 1
    names = [layer.name for layer in widget.viewer.layers]
    assert names[-2:] == [MASK_NAME, CLICKS_NAME]  # the export went under the working layers
    existing = np.zeros((96, 96), np.uint16)
    existing[80:90, 80:90] = 7
    widget.viewer.add_labels(existing, name="atlas")
    assert [layer.name for layer in widget.viewer.layers][-2:] == [MASK_NAME, CLICKS_NAME]
    layer = widget.export_to_layer("atlas", 4)
    assert (layer.data == 7).sum() == 100 and layer.data[40, 52] == 4
    assert "ibis_trajectory" in layer.metadata
    saved = widget.save_result(tmp_path / "result.tif", confirmed=True)
    assert saved.exists() and (tmp_path / "result.ibis.json").exists()
    assert MASK_NAME in widget.viewer.layers  # kept by default
    widget.result_panel.remove_working.setChecked(True)
    widget.export_to_layer("atlas", 5)
    assert MASK_NAME not in widget.viewer.layers


def test_keep_for_training_is_off_by_default_remembered_and_keeps_exported_sessions(make_widget, qtbot, tmp_path):
    from napari_ibis.inbox import TrainingInbox

    first = make_widget()
    inbox = TrainingInbox(tmp_path / "inbox")
    first.use_policy(ScriptedPolicy([point(True, *INSIDE), point(False, 0.1, 0.1), TERMINATE]))
    run_and_wait(first, qtbot)
    first.export_to_layer()
    assert not first.result_panel.keep_box.isChecked() and inbox.ids() == []  # nothing kept unless asked
    first.result_panel.keep_box.setChecked(True)
    first.reject()  # the person drops the agent's answer (the accepted step: no longer accepted)
    first.export_to_layer()
    assert "Kept for training" in first.steps_panel.status.text()
    (kept,) = inbox.sessions()
    assert kept.query == "segment the disk" and kept.target == "disk"
    assert np.array_equal(kept.accepted, first.controller.session.mask)
    assert [s.status for s in kept.steps] == ["active", "active", "rejected"]  # the answer was rejected
    assert kept.meta["names"] == {}  # the layer's name ("scan") is not written
    assert make_widget(first.viewer).result_panel.keep_box.isChecked()  # remembered


def test_the_working_mask_is_drawn_in_the_green_the_agent_sees(widget, qtbot):
    from napari_ibis._layers import MASK_NAME

    widget.use_policy(ScriptedPolicy([point(True, *INSIDE), TERMINATE]))
    run_and_wait(widget, qtbot)
    colour = widget.viewer.layers[MASK_NAME].colormap.map(np.array([1]))[0]
    assert np.allclose(colour[:3] * 255, (34, 139, 34), atol=1)


def test_a_volume_gets_only_the_current_slice(make_widget, make_napari_viewer, qtbot):
    from napari_ibis._layers import MASK_NAME

    viewer = make_napari_viewer()
    slice_, _ = disk_image(64)
    viewer.add_image(np.stack([slice_ // 3, slice_, slice_ // 2]), name="vol")
    viewer.dims.set_current_step(0, 1)
    w = make_widget(viewer, name="vol")
    w.use_policy(ScriptedPolicy([point(True, 52.5 / 64, 40.5 / 64), TERMINATE]))
    run_and_wait(w, qtbot)
    mask = viewer.layers[MASK_NAME].data
    assert mask.shape == (3, 64, 64) and mask[1].any() and not mask[0].any() and not mask[2].any()
    result = w.export_to_layer()
    assert result.data[1].any() and not result.data[0].any() and not result.data[2].any()
    # a person scrolls to slice 2 and clicks there: not a click on the session's slice 1
    from napari_ibis._layers import CLICKS_NAME

    steps = len(w.controller.session.steps)
    viewer.layers[CLICKS_NAME].add([[2, 10, 10]])
    assert len(w.controller.session.steps) == steps and len(viewer.layers[CLICKS_NAME].data) == 1
    assert "that click is on slice 2, but this session works on slice 1" in w.controller.status
    viewer.layers[MASK_NAME].data[0, 5:9, 5:9] = 1  # and paints on slice 0
    w.use_brush_edit()
    assert len(w.controller.session.steps) == steps and "you painted on slice 0" in w.controller.status
    viewer.dims.set_current_step(0, 2)  # a new session on slice 2 shows only its own mask
    w.use_policy(ScriptedPolicy([point(True, 52.5 / 64, 40.5 / 64), TERMINATE]))
    run_and_wait(w, qtbot)
    mask = viewer.layers[MASK_NAME].data
    assert mask[2].any() and not mask[0].any() and not mask[1].any()


def test_a_coronal_view_segments_propagates_and_exports_the_slice_on_screen(make_widget, make_napari_viewer, qtbot,
                                                                            tmp_path):
    """A person who turns the volume to a coronal view (rows: the axial slices) works on what they see."""
    from napari_ibis._layers import CLICKS_NAME, MASK_NAME
    from napari_ibis.metrics import dice

    coronal, disk = disk_image(64, centre=(40, 52), radius=10)  # rows: slice 0-63, columns: x
    volume = np.full((64, 48, 64), 40, np.uint8)
    truth = np.zeros(volume.shape, bool)
    for y in range(20, 29):  # a rod along y, through 9 coronal slices
        volume[:, y, :] = coronal
        truth[:, y, :] = disk
    viewer = make_napari_viewer()
    viewer.add_image(volume, name="vol", scale=(3.0, 1.0, 1.0))
    viewer.dims.order = (1, 0, 2)  # napari's "transpose": z down the screen, x across, y sliced
    viewer.dims.set_point(1, 24.0)
    w = make_widget(viewer, name="vol")
    w.use_policy(ScriptedPolicy([point(True, 52.5 / 64, 23.5 / 64), TERMINATE]))  # z 40: row 23 from the top, head up
    run_and_wait(w, qtbot)
    assert viewer.camera.orientation2d[0] == "up"  # the person sees the slice as the agent does, z up
    spec = w.controller.spec
    assert spec.axes == (1, 0, 2) and spec.index == (24,) and spec.pixel_aspect == 3.0  # z rows are 3 times apart
    mask = viewer.layers[MASK_NAME].data
    assert mask[:, 24, :].astype(bool).sum() > 0.6 * disk.sum() and not np.delete(mask, 24, axis=1).any()
    assert tuple(viewer.layers[CLICKS_NAME].data[0]) == (40, 24, 52)  # (z, y, x): where the person sees it
    assert w.layers.to_pixel(np.array([30.0, 24.0, 50.0])) == (33, 50)  # a person's click read back as (row, col)
    w.controller.autosave.flush()  # napari dies: the session comes back on the same coronal slice, seen the same way
    other = make_napari_viewer()
    other.add_image(volume, name="vol", scale=(3.0, 1.0, 1.0))
    again = make_widget(other, name="vol", models=w.controller.models)
    run_and_wait(again, qtbot, again.restore)
    assert again.controller.spec.axes == (1, 0, 2) and tuple(other.dims.order) == (1, 0, 2)
    assert other.dims.point[1] == pytest.approx(24.0) and np.array_equal(again.controller.session.current.mask,
                                                                         w.controller.session.current.mask)
    run_and_wait(w, qtbot, w.propagate)  # along y, the axis the view slices through
    volume_labels = viewer.layers[w.volume_name].data > 0
    assert dice(truth, volume_labels) > 0.7 and not volume_labels[:, :15, :].any()
    viewer.dims.set_point(1, 22.0)  # the propagated labels as the start of a run on coronal slice 22
    w.run_panel.init_combo.setCurrentText(w.volume_name)
    start = w.gather().init_mask
    assert np.array_equal(start, volume_labels[::-1, 22, :]) and start.any()  # head up, as the agent sees it
    w.run_panel.init_combo.setCurrentIndex(0)
    listed = int(w.volume_panel.review_list.item(0).text().split()[1])  # a coronal slice to review
    w.go_to(listed)
    assert viewer.dims.point[1] == pytest.approx(listed) and tuple(viewer.dims.order) == (1, 0, 2)
    path = w.save_result(tmp_path / "coronal.npy")
    saved = np.load(path)
    assert saved.shape == volume.shape and saved[:, 24, :].any() and not saved[:, 23, :].any()
    viewer.dims.ndisplay = 3  # a volume rendering has no slice on screen: one line says what to do
    w.run()
    assert "switch to the 2-D view" in w.controller.status and not w.running


def test_a_nifti_opened_with_the_reader_is_saved_back_on_its_own_voxels(make_widget, make_napari_viewer, qtbot, tmp_path):
    """Oblique, flipped axes and a non-zero origin: open, segment a slice, save, reload with nibabel."""
    from test_geometry import oblique_flipped_affine

    from napari_ibis._reader import get_reader

    affine = oblique_flipped_affine()
    rng = np.random.default_rng(0)
    volume = rng.normal(50, 5, (40, 36, 9)).astype(np.int16)  # (i: P, j: I, k: L) in the file
    volume[10:26, 12:24, 2:7] += 150  # a bright block
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "scan.nii.gz")
    viewer = make_napari_viewer()
    for data, kwargs, kind in get_reader(str(tmp_path / "scan.nii.gz"))(str(tmp_path / "scan.nii.gz")):
        viewer._add_layer_from_data(data, kwargs, kind)
    layer = viewer.layers["scan"]
    z = int(np.argmax([(layer.data[i] > 120).sum() for i in range(layer.data.shape[0])]))
    viewer.dims.set_current_step(0, z)
    rows, cols = np.nonzero(layer.data[z] > 120)
    height, width = layer.data.shape[1:]
    w = make_widget(viewer)
    w.use_policy(ScriptedPolicy([point(True, (cols.mean() + 0.5) / width, (rows.mean() + 0.5) / height), TERMINATE]))
    looked_through = w.gather().volume  # the agent is handed the volume the slice is from, in the display convention
    assert looked_through.volume.shape == layer.data.shape and (looked_through.view, looked_through.index) == ("axial", z)
    assert looked_through.spacing == pytest.approx(tuple(layer.scale))
    run_and_wait(w, qtbot)
    assert w.default_save_name() == "scan_labels.nii.gz"
    saved = w.save_result(tmp_path / "scan_labels.nii.gz", confirmed=True)
    written = nib.load(saved)
    assert written.shape == volume.shape and np.allclose(written.affine, affine)
    labels = np.asarray(written.dataobj) > 0
    (j,) = np.nonzero(labels.any(axis=(0, 2)))[0]  # one axial slice = one plane of the file's I-S axis j
    assert j == volume.shape[1] - 1 - z  # j runs inferior, the display's slices superior
    block = volume[:, j] > 120
    assert (labels[:, j] & block).sum() / (labels[:, j] | block).sum() > 0.7  # on the block, in the file's voxels


def test_a_run_that_fails_to_start_keeps_the_previous_session(widget, qtbot):
    widget.use_policy(ScriptedPolicy([point(True, *INSIDE), TERMINATE]))
    run_and_wait(widget, qtbot)
    session = widget.controller.session
    rows = widget.steps_panel.step_list.count()
    widget.run_panel.model_edit.setText("/nonexistent/model")
    run_and_wait(widget, qtbot)
    assert "not found" in widget.steps_panel.status.text()
    assert widget.controller.session is session and widget.steps_panel.step_list.count() == rows
    for button in (widget.steps_panel.undo_button, widget.steps_panel.accept_button,
                   widget.result_panel.export_button, widget.result_panel.save_button):
        assert button.isEnabled()


def test_stop_on_an_empty_session_disables_accept_export_and_save(widget, qtbot):
    widget.use_policy(ScriptedPolicy([point(False, 0.1, 0.1, " ".join(["word"] * 2000))], delay=0.005))
    widget.run()
    qtbot.waitUntil(lambda: "word" in widget.steps_panel.transcript.toPlainText(), timeout=10_000)
    widget.stop()
    qtbot.waitUntil(lambda: not widget.running, timeout=2_000)  # within a second or two
    assert widget.steps_panel.status.text().startswith("Stopped by you")
    assert widget.controller.session.steps == [] and widget.run_panel.run_button.isEnabled()
    for button in (widget.steps_panel.accept_button, widget.result_panel.export_button, widget.result_panel.save_button):
        assert not button.isEnabled()


def test_a_policy_that_raises_leaves_the_gui_usable(widget, qtbot):
    widget.use_policy(ScriptedPolicy([point(True, *INSIDE), TERMINATE], fail_at=2))
    run_and_wait(widget, qtbot)
    assert "error" in widget.steps_panel.status.text() and len(widget.controller.session.steps) == 1
    assert widget.run_panel.run_button.isEnabled() and widget.run_panel.continue_button.isEnabled()
    run_and_wait(widget, qtbot, widget.continue_run)
    assert widget.steps_panel.status.text().startswith("Finished: the agent answered")


def test_missing_model_and_empty_query_are_reported_not_raised(widget, qtbot):
    widget.run_panel.model_edit.setText("/nonexistent/model")
    run_and_wait(widget, qtbot)
    assert "not found" in widget.steps_panel.status.text() and widget.run_panel.run_button.isEnabled()
    widget.run_panel.query_edit.setText("")
    widget.run()
    assert "query" in widget.steps_panel.status.text() and not widget.running


def test_the_model_field_remembers_what_was_left_including_empty(make_widget, qtbot):
    first = make_widget()
    first.run_panel.model_edit.setText("/wrong/path")
    run_and_wait(first, qtbot)
    assert make_widget(first.viewer).run_panel.model_edit.text() == "/wrong/path"
    first.run_panel.model_edit.setText("")
    first.run_panel.query_edit.setText("")  # Run refuses at once; the field is remembered anyway
    first.run()
    assert make_widget(first.viewer).run_panel.model_edit.text() == ""  # the bundled agent again


def test_long_layer_names_do_not_widen_the_dock(make_widget, make_napari_viewer):
    viewer = make_napari_viewer()
    long_name = "phantom structures (" + ", ".join(f"{i}=structure number {i}" for i in range(1, 12)) + ")"
    viewer.add_labels(np.zeros((96, 96), np.uint8), name=long_name)
    w = make_widget(viewer, name="a scan with an equally long name " * 4)
    assert w.sizeHint().width() < 420 and w.minimumSizeHint().width() < 420


def test_saving_asks_before_overwriting_the_trajectory(widget, qtbot, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QMessageBox

    widget.use_policy(ScriptedPolicy([point(True, *INSIDE), TERMINATE]))
    run_and_wait(widget, qtbot)
    widget.save_result(tmp_path / "x.tif", confirmed=True)
    record = (tmp_path / "x.ibis.json").read_text()
    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: asked.append(a[2]) or QMessageBox.StandardButton.No)
    assert widget.save_result(tmp_path / "x.nii.gz", confirmed=True) is None
    assert asked and "x.ibis.json" in asked[0]
    assert (tmp_path / "x.ibis.json").read_text() == record and not (tmp_path / "x.nii.gz").exists()


def test_an_unfinished_session_is_offered_and_restored_after_a_crash(make_widget, qtbot):
    first = make_widget()
    first.use_policy(ScriptedPolicy([point(True, *INSIDE), point(False, 0.1, 0.1), TERMINATE]), key="agent")
    run_and_wait(first, qtbot)
    first.undo()
    first.controller.autosave.flush()
    masks = [step.mask for step in first.controller.session.timeline]
    # napari dies; a new widget opens on the same image (same pixels, new viewer)
    models = first.controller.models
    second = make_widget(image=first.viewer.layers["scan"].data.copy(), models=models)
    assert not second.restore_bar.isHidden()
    assert "segment the disk" in second.restore_bar.message.text()
    run_and_wait(second, qtbot, second.restore)
    session = second.controller.session
    assert session.cursor == 2 and session.can_redo
    assert all(np.array_equal(a.mask, b) for a, b in zip(session.timeline, masks))
    assert second.steps_panel.undo_button.isEnabled() and second.steps_panel.step_list.count() == 3
    assert "positive click at row 40, col 52" in second.steps_panel.transcript.toPlainText()


def test_loading_happens_off_the_gui_thread_with_feedback_at_once(widget, qtbot):
    gate = threading.Event()
    loading_thread = []

    def slow_build():
        loading_thread.append(threading.current_thread().name)
        gate.wait(10)
        return ScriptedPolicy([point(True, *INSIDE), TERMINATE])

    models = widget.controller.models
    models.policy = lambda model, device="auto": models.get(("policy", model, device), slow_build)
    widget.run_panel.model_edit.setText("slow")
    widget.run()
    assert widget.steps_panel.status.text()  # feedback before anything has loaded
    qtbot.waitUntil(lambda: "Loading" in widget.steps_panel.status.text(), timeout=5_000)
    assert widget.running and threading.current_thread().name not in loading_thread
    gate.set()
    qtbot.waitUntil(lambda: not widget.running, timeout=20_000)
    assert widget.steps_panel.status.text().startswith("Finished")


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
    assert widget.steps_panel.status.text().startswith("Finished: the agent answered")
    assert MASK_NAME in widget.viewer.layers  # recreated by the next update


def test_the_widget_gets_ready_in_the_background_when_it_opens(make_widget, make_napari_viewer, qtbot, tmp_path):
    from napari_ibis._layers import CLICKS_NAME, MASK_NAME
    from napari_ibis._runtime import ModelCache
    from napari_ibis._widget import IbisWidget
    from napari_ibis.autosave import Autosave

    viewer = make_napari_viewer()
    viewer.add_image(disk_image(96)[0], name="scan")
    models = ModelCache()
    w = IbisWidget(viewer, warm_up=True, autosave=Autosave(tmp_path / "autosave"), models=models)
    assert w.warm_worker is not None  # the constructor returned while loading goes on
    qtbot.waitUntil(lambda: w.ready, timeout=120_000)
    from napari_ibis.segmenters import default_segmenter

    assert models.loaded(("segmenter", default_segmenter())) and models.loaded(("policy", None, "auto"))
    qtbot.waitUntil(lambda: MASK_NAME in viewer.layers and CLICKS_NAME in viewer.layers, timeout=5_000)
    assert w.steps_panel.status.text() in ("", "Ready.")


def test_propagate_fills_a_3d_labels_layer_lists_slices_to_review_and_undoes(make_widget, make_napari_viewer, qtbot):
    from napari_ibis.metrics import dice
    from napari_ibis.phantoms import phantom_volume

    volume = phantom_volume(0)
    truth = volume.masks["left kidney"]
    start = int(np.argmax(truth.sum(axis=(1, 2))))
    viewer = make_napari_viewer()
    viewer.add_image(volume.image, name="ct", scale=(2.5, 0.8, 0.8))
    viewer.dims.set_point(0, start * 2.5)
    w = make_widget(viewer, name="ct")
    rows, cols = np.nonzero(truth[start])
    w.use_policy(ScriptedPolicy([point(True, (cols.mean() + 0.5) / 96, (rows.mean() + 0.5) / 96), TERMINATE]))
    run_and_wait(w, qtbot)
    assert w.volume_panel.propagate_button.isEnabled()
    run_and_wait(w, qtbot, w.propagate)
    layer = viewer.layers[w.volume_name]
    assert layer.data.shape == volume.image.shape and tuple(layer.scale) == (2.5, 0.8, 0.8)
    assert dice(truth, layer.data > 0) > 0.7, dice(truth, layer.data > 0)
    assert w.volume_panel.review_list.count() >= 1 and "Propagated" in w.controller.status
    assert w.volume_panel.review_list.item(0).toolTip().startswith("ended: ")  # why it is listed
    first = int(w.volume_panel.review_list.item(0).text().split()[1])
    w.go_to(first)
    assert viewer.dims.point[0] == pytest.approx(first * 2.5)
    filled = layer.data.sum(axis=(1, 2)).argmax()
    w.go_to(int(filled))
    before = layer.data[filled].copy()
    w.clear_volume_slice()
    assert not layer.data[filled].any() and before.any()
    w.undo_propagation()
    assert np.array_equal(viewer.layers[w.volume_name].data[filled], before)
    w.undo_propagation()
    assert not viewer.layers[w.volume_name].data.any()  # back to before the propagation
    # an earlier run that leaked far beyond the kidney: a new run ends the structure where it ends
    layer = viewer.layers[w.volume_name]
    layer.data[[0, 1, 30, 31]] = 1
    other = layer.data.copy()
    run_and_wait(w, qtbot, w.propagate)
    assert not layer.data[[0, 1, 30, 31]].any() and dice(truth, layer.data > 0) > 0.7
    w.undo_propagation()
    assert np.array_equal(viewer.layers[w.volume_name].data, other)


def test_one_vertebra_is_propagated_only_as_far_as_a_vertebra_reaches_by_the_layers_scale(make_widget,
                                                                                           make_napari_viewer, qtbot):
    """A spine that looks the same from end to end, 3 mm between slices (the layer's scale): asked
    for the L3 vertebra, Propagate stops 35 mm each side and the review list says why."""
    volume = np.full((40, 64, 64), 40, dtype=np.uint8)
    yy, xx = np.mgrid[:64, :64]
    volume[:, (yy - 32) ** 2 + (xx - 32) ** 2 < 12 ** 2] = 220
    viewer = make_napari_viewer()
    viewer.add_image(volume, name="spine", scale=(3.0, 0.8, 0.8))
    viewer.dims.set_point(0, 20 * 3.0)
    w = make_widget(viewer, name="spine")
    w.run_panel.query_edit.setText("segment the L3 vertebra")
    w.use_policy(ScriptedPolicy([point(True, 0.5, 0.5), TERMINATE]))
    run_and_wait(w, qtbot)
    run_and_wait(w, qtbot, w.propagate)
    occupied = np.nonzero(viewer.layers[w.volume_name].data.any(axis=(1, 2)))[0]
    assert (occupied.min(), occupied.max()) == (9, 31)  # 11 slices of 3 mm each way
    tips = [w.volume_panel.review_list.item(i).toolTip() for i in range(w.volume_panel.review_list.count())]
    assert tips.count("ended: a vertebra reaches no more than 35 mm from the slice it started on") == 2


def test_a_scan_of_several_volumes_propagates_within_its_frame_and_saves_on_their_grid(make_widget, make_napari_viewer,
                                                                                        qtbot, tmp_path):
    """A two-sequence MRI (x, y, z, 2) through the reader: the session's frame and slice, the
    propagation through that frame only, the review jumps along the slices, the labels saved on
    the 3-D grid the sequences share."""
    from napari_ibis._reader import get_reader
    from napari_ibis.metrics import dice
    from napari_ibis.phantoms import phantom_volume

    volume = phantom_volume(0)
    truth = volume.masks["left kidney"]
    to_file = lambda display: np.ascontiguousarray(display.transpose(2, 1, 0)[::-1, ::-1])  # noqa: E731
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(np.stack([to_file(volume.image) // 3, to_file(volume.image)], axis=-1), affine),
             tmp_path / "mri.nii.gz")
    viewer = make_napari_viewer()
    for data, kwargs, kind in get_reader(str(tmp_path / "mri.nii.gz"))(str(tmp_path / "mri.nii.gz")):
        viewer._add_layer_from_data(data, kwargs, kind)
    start = int(np.argmax(truth.sum(axis=(1, 2))))
    viewer.dims.set_current_step(0, 1)
    viewer.dims.set_current_step(1, start)
    w = make_widget(viewer, name="mri")
    rows, cols = np.nonzero(truth[start])
    w.use_policy(ScriptedPolicy([point(True, (cols.mean() + 0.5) / 96, (rows.mean() + 0.5) / 96), TERMINATE]))
    run_and_wait(w, qtbot)
    assert w.controller.spec.index == (1, start) and w.volume_panel.propagate_button.isEnabled()
    run_and_wait(w, qtbot, w.propagate)
    layer = viewer.layers[w.volume_name]
    assert layer.data.shape == (2,) + truth.shape and not layer.data[0].any()
    assert dice(truth, layer.data[1] > 0) > 0.7, dice(truth, layer.data[1] > 0)
    first = int(w.volume_panel.review_list.item(0).text().split()[1])
    w.go_to(first)
    assert viewer.dims.current_step[:2] == (1, first)  # the same frame, the listed slice
    layer.save(str(tmp_path / "kidney.nii.gz"), plugin="napari-ibis")
    written = nib.load(tmp_path / "kidney.nii.gz")
    assert written.shape == to_file(truth).shape and np.allclose(written.affine, affine)
    assert dice(to_file(truth), np.asarray(written.dataobj) > 0) > 0.7


def test_propagate_is_off_for_a_2d_image(widget, qtbot):
    widget.use_policy(ScriptedPolicy([point(True, 52.5 / 96, 40.5 / 96), TERMINATE]))
    run_and_wait(widget, qtbot)
    assert not widget.volume_panel.propagate_button.isEnabled()


def test_find_slice_goes_to_where_the_agent_sees_the_structure_best(make_widget, make_napari_viewer, qtbot):
    """A person types the query on any slice; Find slice moves the viewer to the slice where the
    agent sees the structure best, and Run works there. A structure on no slice is said so
    and the viewer stays where it was; a policy that cannot look says so in one line."""
    volume, masks = ball_volume()
    viewer = make_napari_viewer()
    viewer.add_image(volume, name="ct", scale=(2.0, 1.0, 1.0))
    viewer.dims.set_point(0, 5 * 2.0)
    w = make_widget(viewer, name="ct")
    w.use_policy(Locating([point(True, 32.5 / 64, 32.5 / 64), TERMINATE]))
    run_and_wait(w, qtbot, w.find_slice)
    assert viewer.dims.point[0] == pytest.approx(LARGEST * 2.0)
    assert "seen clearly around slice 37" in w.controller.status and "Press Run" in w.controller.status
    run_and_wait(w, qtbot)
    assert w.controller.spec.index == (LARGEST,)
    assert (w.controller.session.mask & masks[LARGEST]).sum() > 0.9 * masks[LARGEST].sum()

    empty = make_napari_viewer()
    empty.add_image(ball_volume(largest=None)[0], name="ct")
    empty.dims.set_point(0, 12)
    w2 = make_widget(empty, name="ct")
    w2.use_policy(Locating(), key="locating")
    run_and_wait(w2, qtbot, w2.find_slice)
    assert "not found on any" in w2.controller.status and empty.dims.point[0] == pytest.approx(12)
    w2.use_policy(ScriptedPolicy([TERMINATE]), key="words")
    run_and_wait(w2, qtbot, w2.find_slice)
    assert "cannot look for a structure through a volume" in w2.controller.status and w2.run_panel.run_button.isEnabled()

    w.use_policy(SeesItEverywhere(), key="everywhere")  # a map that finds a lesion on every slice
    w.run_panel.query_edit.setText("segment the liver tumour")
    run_and_wait(w, qtbot, w.find_slice)
    assert "is a guess: check it, or go to the lesion yourself. It is shown now." in w.controller.status


def test_the_query_box_suggests_what_the_agent_knows_and_an_untaught_lesion_is_refused(make_widget, qtbot, monkeypatch):
    """With the bundled pointer agent: typing part of a name offers "segment the NAME"; Run
    with a lesion it was never taught says so in one line and starts nothing; with a structure
    it was never taught, a warning says its answer will be a guess."""
    from napari_ibis import assets

    if not all(assets.available(n) for n in ("mobile_sam", "minilm")):
        pytest.skip("the pointer agent's files were not fetched")
    w = make_widget()
    w.run_panel.model_edit.setText("")  # the bundled agent
    w._suggest_structures()
    completer = w.run_panel.query_edit.completer()
    completer.setCompletionPrefix("kidn")
    offered = {completer.completionModel().index(i, 0).data() for i in range(completer.completionCount())}
    assert offered == {"segment the left kidney", "segment the right kidney"}
    w.run_panel.query_edit.setText("segment the lung tumour")
    w.run()
    assert not w.running and w.controller.session is None
    assert "was not taught the lung tumour" in w.controller.status
    warned = []
    monkeypatch.setattr(w, "warn", warned.append)
    w.run_panel.query_edit.setText("segment the pancreatic head")
    w.run_panel.max_steps.setValue(2)
    run_and_wait(w, qtbot)  # the bundled agent looks all the same; the status and the record say it guessed
    assert len(warned) == 1 and "not taught the pancreatic head: its answer is a guess" in warned[0]
    assert w.controller.status.startswith("A guess (the agent was not taught what the query names). Finished")
    assert "not taught the pancreatic head" in w.controller.record()["untaught"]
    w.run_panel.query_edit.setText("segment the gallblader")  # a misspelling: read as the name, said, no guess
    run_and_wait(w, qtbot)
    assert warned[1] == "Read 'gallblader' as the gallbladder (a name this agent was taught)" and len(warned) == 2
    assert w.controller.record()["query"] == "segment the gallbladder" and "untaught" not in w.controller.record()
    assert not w.controller.status.startswith("A guess")
    w.use_policy(ScriptedPolicy([TERMINATE]))  # a model the list does not apply to: no suggestions, any query
    w._suggest_structures()
    assert w.run_panel.query_edit.completer() is None
    w.gather()
    assert len(warned) == 2
