"""The dock widget: a clinician works with the agent step by step.

:class:`IbisWidget` wires three things together: the panels (the controls,
:mod:`napari_ibis._panels`), the :class:`~napari_ibis.controller.Controller` (the
session and every decision, no Qt) and :class:`~napari_ibis._layers.SessionLayers`
(the only code that touches layers). Loading, embedding and every agent or
segmenter step run as controller jobs on napari worker threads, with napari's
progress bar; the GUI thread only applies what they yield. When the widget opens
it loads the model libraries, the segmenter and the bundled agent in the
background (:mod:`napari_ibis._runtime` says what that changes in the process).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import QSettings, Qt, QTimer
from qtpy.QtGui import QKeySequence, QTextCursor
from qtpy.QtWidgets import QFileDialog, QMessageBox, QShortcut, QVBoxLayout, QWidget

from ._layers import (
    CLICKS_NAME,
    MASK_NAME,
    SessionLayers,
    adopt_geometry,
    clear_beyond,
    current_slice_index,
    go_to_slice,
    labels_on_image_grid,
    layer_slice,
    layer_volume_slice,
    paint_slice,
    slice_pixel_aspect,
    slice_spacing_of,
    spatial_shape,
    turn_camera,
    view_axes,
    volume_layer,
)
from ._panels import RestoreBar, ResultPanel, RunPanel, StepsPanel, VolumePanel
from ._runtime import MODEL_CACHE, ModelCache, freeze_long_lived_objects, hide_triton, import_model_libraries
from .autosave import Autosave
from .controller import CONTINUE_STEPS, Controller, RunSpec
from .errors import IbisError
from .geometry import geometry_of, oriented, plane_of, slice_at
from .inbox import SETTINGS_KEY as KEEP_SETTING
from .inbox import TrainingInbox, target_of
from .segmenters import default_segmenter

hide_triton()  # before anything imports torch in this process (see _runtime)

NEW_LAYER = "(new layer)"
NO_LAYER = "(none)"
SUFFIX_OF_FORMAT = {"nifti": ".nii.gz", "dicom": ".nii.gz", "nrrd": ".nrrd", "metaimage": ".mha", "tiff": ".tif"}
STEP_WORDS = {"click": "click", "edit": "brush edit", "placed": "placed mask", "answer": "answer"}  # the steps list


def slice_words(index: tuple[int, ...]) -> str:
    """A slice index as a person reads it: "12", or "3,12" for a 4-D layer."""
    return ",".join(str(int(i)) for i in index)


class IbisWidget(QWidget):
    """Run the IBIS agent on the current slice, steer it, and export the result."""

    def __init__(self, napari_viewer, warm_up: bool = True, autosave: Autosave | None = None,
                 models: ModelCache = MODEL_CACHE, inbox: TrainingInbox | None = None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.settings = QSettings("napari-ibis", "widget")
        self.layers = SessionLayers(napari_viewer)
        self.controller = Controller(self, models, autosave if autosave is not None else Autosave(),
                                     inbox if inbox is not None else TrainingInbox())
        self.worker = None
        self.warm_worker = None
        self.click_positive = True
        self.restore_bar = RestoreBar()
        self.run_panel = RunPanel()
        self.steps_panel = StepsPanel()
        self.result_panel = ResultPanel()
        self.volume_panel = VolumePanel()
        self.volume_undo: list[tuple[str, np.ndarray]] = []  # (layer name, its data before) per propagation or clear
        self.volume_name = ""
        self.propagation_run: tuple[str, int] = ("both", 0)  # (direction, start slice) of the last Propagate
        self.find_run: tuple[str, tuple[int, ...], tuple[int, ...]] = ("", (), ())  # (layer, slice index, axes) of Find slice
        layout = QVBoxLayout(self)
        for panel in (self.restore_bar, self.run_panel, self.steps_panel, self.result_panel, self.volume_panel):
            layout.addWidget(panel)
        self._load_settings()
        self._suggest_structures()
        self._connect()
        self._refresh_layer_choices()
        self._turn_camera()
        self._offer_restore()
        self.changed()
        if warm_up:
            self.warm_up()
            QTimer.singleShot(0, self.prepare_layers)

    # -- the view the controller talks to -------------------------------------------------
    def session_started(self, spec: RunSpec) -> None:
        if spec.layer in self.viewer.layers:
            self.layers.bind(self.viewer.layers[spec.layer], spec.index, spec.axes)
            self.layers.clear_mask()  # an earlier session's mask on another slice is not this one's
        self.restore_bar.hide()

    def show_step(self, step) -> None:
        if self.controller.session is None or self.layers.image_layer is None:
            return
        if self.layers.image_layer not in self.viewer.layers:
            return  # the image layer was deleted: keep the session, show nothing
        count = len(self.viewer.layers)
        self.layers.show(step.mask, step.clicks, self.controller.owners(step))
        if len(self.viewer.layers) != count:  # a working layer was (re)created
            self._refresh_layer_choices()

    def changed(self) -> None:
        """Status, step list and buttons follow the controller."""
        self.steps_panel.status.setText(self.controller.status)
        self._sync_step_list()
        enabled = self.controller.enabled()
        for widget in self.run_panel.inputs:
            widget.setEnabled(enabled["inputs"])
        panel, steps, result = self.run_panel, self.steps_panel, self.result_panel
        for name, button in (("run", panel.run_button), ("find", panel.find_button), ("stop", panel.stop_button), ("continue", panel.continue_button),
                             ("undo", steps.undo_button), ("redo", steps.redo_button), ("accept", steps.accept_button),
                             ("reject", steps.reject_button), ("brush", steps.brush_button),
                             ("export", result.export_button), ("save", result.save_button),
                             ("propagate", self.volume_panel.propagate_button)):
            button.setEnabled(enabled[name])
        idle = not self.controller.running
        self.volume_panel.undo_button.setEnabled(idle and bool(self.volume_undo))
        self.volume_panel.clear_button.setEnabled(idle and self.volume_name in self.viewer.layers)

    def transcript_reset(self) -> None:
        self.steps_panel.transcript.setPlainText(self.controller.transcript.text(raw=self.steps_panel.raw_box.isChecked()))

    def transcript_append(self, readable: str, raw: str) -> None:
        text = raw if self.steps_panel.raw_box.isChecked() else readable
        if text:
            view = self.steps_panel.transcript
            view.moveCursor(QTextCursor.MoveOperation.End)
            view.insertPlainText(text)
            view.ensureCursorVisible()

    def error(self, message: str) -> None:
        from napari.utils.notifications import show_error

        show_error(message)

    def warn(self, message: str) -> None:
        from napari.utils.notifications import show_warning

        show_warning(message)

    # -- wiring ---------------------------------------------------------------------------
    def _load_settings(self) -> None:
        value = self.settings.value
        self.run_panel.model_edit.setText(value("model_folder", "", str))
        self.run_panel.segmenter_combo.setCurrentText(value("segmenter", default_segmenter(), str))
        self.run_panel.profile_combo.setCurrentText(value("profile", "ibis-release", str))
        self.run_panel.device_combo.setCurrentText(value("device", "auto", str))
        self.run_panel.max_steps.setValue(int(value("max_steps", 20)))
        self.result_panel.remove_working.setChecked(value("remove_working", False, bool))
        self.result_panel.keep_box.setChecked(value(KEEP_SETTING, False, bool))
        self.controller.keep_for_training = self.result_panel.keep_box.isChecked()

    def _save_settings(self) -> None:
        """Remember what the person left in the fields, empty values included."""
        panel = self.run_panel
        for key, text in (("model_folder", panel.model_edit.text().strip()),
                          ("segmenter", panel.segmenter_combo.currentText()),
                          ("profile", panel.profile_combo.currentText()),
                          ("device", panel.device_combo.currentText())):
            self.settings.setValue(key, text)
        self.settings.setValue("max_steps", panel.max_steps.value())

    def _connect(self) -> None:
        run, steps, result = self.run_panel, self.steps_panel, self.result_panel
        run.run_button.clicked.connect(self.run)
        run.find_button.clicked.connect(self.find_slice)
        run.query_edit.returnPressed.connect(self.run)
        run.stop_button.clicked.connect(self.stop)
        run.continue_button.clicked.connect(self.continue_run)
        run.browse_button.clicked.connect(self._browse_model)
        run.model_edit.editingFinished.connect(self._save_settings)
        run.model_edit.editingFinished.connect(self._suggest_structures)
        steps.undo_button.clicked.connect(self.undo)
        steps.redo_button.clicked.connect(self.redo)
        steps.accept_button.clicked.connect(self.accept)
        steps.reject_button.clicked.connect(self.reject)
        steps.brush_button.clicked.connect(self.use_brush_edit)
        steps.step_list.currentRowChanged.connect(self._preview_step)
        steps.sign_box.toggled.connect(self._set_sign)
        steps.raw_box.toggled.connect(lambda _on: self.transcript_reset())
        result.export_button.clicked.connect(lambda: self.export_to_layer())
        result.save_button.clicked.connect(self._save_dialog)
        result.remove_working.toggled.connect(lambda on: self.settings.setValue("remove_working", on))
        result.keep_box.toggled.connect(self._set_keep_for_training)
        volume = self.volume_panel
        volume.propagate_button.clicked.connect(self.propagate)
        volume.undo_button.clicked.connect(self.undo_propagation)
        volume.clear_button.clicked.connect(self.clear_volume_slice)
        volume.review_list.itemClicked.connect(lambda item: self.go_to(int(item.text().split()[1])))
        self.restore_bar.restore_button.clicked.connect(self.restore)
        self.restore_bar.discard_button.clicked.connect(self.discard_restore)
        for keys, slot in (("Ctrl+Z", self.undo), ("Ctrl+Shift+Z", self.redo)):
            shortcut = QShortcut(QKeySequence(keys), self)
            shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)  # only while the widget has focus
            shortcut.activated.connect(slot)
        self.viewer.dims.events.order.connect(self._turn_camera)
        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self.viewer.layers.events.removed.connect(self._refresh_layer_choices)
        self.viewer.bind_key("t", lambda _viewer: self.steps_panel.sign_box.toggle(), overwrite=True)

    def _turn_camera(self, event=None) -> None:
        name = self.run_panel.image_combo.currentText()
        if name in self.viewer.layers:
            turn_camera(self.viewer, self.viewer.layers[name])

    def _on_layer_inserted(self, event=None) -> None:
        from napari.layers import Labels

        layer = getattr(event, "value", None)
        if isinstance(layer, Labels) and layer.name not in (MASK_NAME,):
            adopt_geometry(self.viewer, layer)
        if not self.layers.syncing:
            self.layers.raise_working()
        self._refresh_layer_choices()
        if self.controller.session is None:
            self._offer_restore()

    def _refresh_layer_choices(self, *_args) -> None:
        from napari.layers import Image, Labels

        def fill(combo, names, first=()):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            for name in list(first) + names:
                combo.addItem(name)
                combo.setItemData(combo.count() - 1, name, Qt.ItemDataRole.ToolTipRole)
            if current in list(first) + names:
                combo.setCurrentText(current)
            combo.blockSignals(False)

        images = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        labels = [layer.name for layer in self.viewer.layers if isinstance(layer, Labels) and layer.name != MASK_NAME]
        fill(self.run_panel.image_combo, images)
        fill(self.run_panel.init_combo, labels, (NO_LAYER,))
        fill(self.result_panel.target_combo, labels, (NEW_LAYER,))
        clicks = self.viewer.layers[CLICKS_NAME] if CLICKS_NAME in self.viewer.layers else None
        if clicks is not None and not getattr(clicks, "_ibis_connected", False):
            clicks.events.data.connect(self._on_points_changed)
            clicks._ibis_connected = True

    def _set_keep_for_training(self, on: bool) -> None:
        self.controller.keep_for_training = on
        self.settings.setValue(KEEP_SETTING, on)
        if on:
            self.controller.set_status(f"Exported and saved sessions will be kept for training in {self.controller.inbox.folder}.")

    def _set_sign(self, positive: bool) -> None:
        self.click_positive = positive

    def _browse_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder", self.run_panel.model_edit.text())
        if folder:
            self.run_panel.model_edit.setText(folder)
            self._save_settings()
            self._suggest_structures()

    def _suggest_structures(self) -> None:
        """Let the query box suggest the structures the chosen agent was taught (none for a
        language model, which is asked in words, or a folder that cannot be read)."""
        from .policies import vocabulary_of

        try:
            vocabulary = vocabulary_of(self.run_panel.model_edit.text().strip() or None)
        except IbisError:
            vocabulary = None
        self.run_panel.suggest(vocabulary.suggestions() if vocabulary is not None else [])

    # -- background work --------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.worker is not None

    def _start(self, job, *args, description: str = "IBIS agent", total: int = 0) -> None:
        """Run ``job`` on a worker thread with napari's progress bar (counting the job's
        yields up to ``total`` when given, else indeterminate)."""
        from napari.qt.threading import create_worker

        self.controller.begin()
        worker = create_worker(job, *args, _progress={"desc": description, "total": total})
        worker.yielded.connect(self.controller.handle)
        worker.errored.connect(lambda exc: self.controller.report_error(f"{type(exc).__name__}: {exc}"))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.changed()
        worker.start()

    def _on_finished(self) -> None:
        self.worker = None
        self.controller.finish()

    def prepare_layers(self) -> None:
        """Make the working layers for the chosen image ahead of the first Run (see SessionLayers.prepare)."""
        name = self.run_panel.image_combo.currentText()
        if self.controller.session is None and name in self.viewer.layers:
            self.layers.prepare(self.viewer.layers[name])
            self._refresh_layer_choices()

    def warm_up(self) -> None:
        """Import the model libraries and load the chosen segmenter (and the bundled agent,
        when the model field is empty) in the background, so that the first Run is quick."""
        from napari.qt.threading import create_worker

        spec = self.run_panel.segmenter_combo.currentText()
        segmenter = spec if spec != "sam2" else None
        bundled = not self.run_panel.model_edit.text().strip()
        models, device = self.controller.models, self.run_panel.device_combo.currentText()

        def job():
            yield "Getting ready: loading the model libraries…"
            from ._runtime import backend_modules

            import_model_libraries(backend_modules(segmenter or ""))
            if segmenter is not None:
                yield f"Getting ready: loading the {segmenter} segmenter…"
                models.segmenter(segmenter, device)
            if bundled:
                yield "Getting ready: loading the bundled agent…"
                models.policy(None, device)
            freeze_long_lived_objects()
            yield "Ready."

        def say(text: str) -> None:
            if not self.running and (not self.controller.status or self.controller.status.startswith("Getting ready")):
                self.controller.set_status(text if text != "Ready." or self.controller.session else "")

        def failed(exc: Exception) -> None:  # nothing is lost: Run reports the same problem in its own words
            say(f"Getting ready failed ({type(exc).__name__}); Run will try again.")

        worker = create_worker(job, _progress={"desc": "IBIS agent: getting ready"})
        worker.yielded.connect(say)
        worker.errored.connect(failed)
        worker.finished.connect(lambda: setattr(self, "warm_worker", None))
        self.warm_worker = worker
        worker.start()

    @property
    def ready(self) -> bool:
        """Whether getting ready in the background is over (or was never asked for)."""
        return self.warm_worker is None

    # -- actions ----------------------------------------------------------------------------
    def gather(self) -> RunSpec:
        """Everything a run needs, read on the GUI thread; IbisError for anything missing."""
        panel = self.run_panel
        image_layer, query, untaught = self._layer_and_query()
        if self.viewer.dims.ndisplay == 3 and len(spatial_shape(image_layer)) > 2:
            raise IbisError("the viewer shows the volume in 3-D: switch to the 2-D view (the square button at the "
                            "bottom left) and go to the slice to segment")
        axes = view_axes(image_layer, self.viewer)
        index = current_slice_index(image_layer, self.viewer, axes)
        image = layer_slice(image_layer, index, axes)
        init_mask = None
        if panel.init_combo.currentText() not in ("", NO_LAYER):
            labels = self.viewer.layers[panel.init_combo.currentText()]
            data = labels_on_image_grid(labels, image_layer)
            if index and data.ndim > 2:  # a volume of labels (one for every frame of a scan): the same slice
                data = slice_at(data, axes, index)
            data = np.asarray(data)
            if data.shape != image.shape[:2]:
                raise IbisError(f"the labels layer '{labels.name}' is {data.shape}; the image slice is {image.shape[:2]}")
            label = panel.init_label.value()
            init_mask = data != 0 if label == 0 else data == label
            if not init_mask.any():
                raise IbisError(f"'{labels.name}' has no labelled pixel in this slice" if label == 0 else
                                f"'{labels.name}' has no pixel with label {label} in this slice")
        segmenter = panel.segmenter_combo.currentText()
        if segmenter == "sam2":
            checkpoint = panel.checkpoint_edit.text().strip()
            if not checkpoint:
                raise IbisError("the sam2 segmenter needs a checkpoint file (SAM 2, SAM 2.1 or MedSAM2 .pt)")
            segmenter = f"sam2:{checkpoint}"
        return RunSpec(
            image=image, query=query, model=panel.model_edit.text().strip() or None, segmenter=segmenter,
            profile=panel.profile_combo.currentText(), max_steps=panel.max_steps.value(),
            history=panel.history_box.isChecked(), device=panel.device_combo.currentText(), init_mask=init_mask,
            layer=image_layer.name, index=index, axes=axes, layer_shape=spatial_shape(image_layer),
            geometry=geometry_of(image_layer), pixel_aspect=slice_pixel_aspect(image_layer, axes),
            slice_spacing=slice_spacing_of(image_layer, axes),
            modality=str(image_layer.metadata.get("ibis_modality", "")), untaught=untaught,
            volume=layer_volume_slice(image_layer, axes, index),
        )

    def _layer_and_query(self):
        """The chosen image layer, the query (a misspelt structure's name put right, said in a
        warning: "read 'livr' as the liver"), and the note where the query names a structure the
        chosen agent was not taught (its answer will be a guess: also shown as a warning), else "";
        IbisError where the layer or the query is missing or the query names a lesion the agent
        was never taught."""
        name = self.run_panel.image_combo.currentText()
        if not name or name not in self.viewer.layers:
            raise IbisError("open an image first and choose it as the image layer")
        query = self.run_panel.query_edit.text().strip()
        if not query:
            raise IbisError("type a query first, e.g. 'segment the liver tumour'")
        from .errors import ModelError
        from .policies import check_query, read_query

        model = self.run_panel.model_edit.text().strip() or None
        try:
            query, read_as = read_query(model, query)
            untaught = check_query(model, query)
        except ModelError:
            read_as = untaught = None  # a model that cannot be read: the run says so as it loads it
        for note in (read_as, untaught):
            if note:
                self.warn(note[0].upper() + note[1:])
        return self.viewer.layers[name], query, untaught or ""

    def run(self) -> None:
        """Start a new session on the current slice (the previous one stays until it exists)."""
        if self.running:
            return
        self._save_settings()
        self._turn_camera()
        try:
            spec = self.gather()
        except IbisError as exc:
            self.controller.report_error(str(exc))
            return
        self.controller.set_status("Starting…")
        self._start(self.controller.new_session_job, spec)

    def find_slice(self) -> None:
        """Let the agent look through the chosen volume for the query's structure (in the plane on
        screen), then go to the slice where it sees it best (:mod:`napari_ibis.key_slice`)."""
        if self.running:
            return
        self._save_settings()
        panel = self.run_panel
        try:
            layer, query, _ = self._layer_and_query()
        except IbisError as exc:
            self.controller.report_error(str(exc))
            return
        name = layer.name
        axes = view_axes(layer, self.viewer)
        index = current_slice_index(layer, self.viewer, axes)
        if not index:
            self.controller.report_error(f"'{name}' is one slice: Find slice looks through a volume")
            return
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        volume = oriented(data, axes)[index[:-1]]  # a file of several volumes: the frame on screen
        self.find_run = (name, index, axes)
        self._start(self.controller.find_slice_job, volume, query, panel.model_edit.text().strip() or None,
                    panel.device_combo.currentText(), slice_pixel_aspect(layer, axes),
                    layer_volume_slice(layer, axes, index), description="IBIS: looking for the slice")

    def show_found(self, key) -> None:
        """Go to the slice the search chose, and say what it found."""
        name, index, axes = self.find_run
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        geometry = None if layer is None else geometry_of(layer)
        plane = "" if geometry is None else f"{plane_of(axes, geometry)} "
        said = key.describe(f"the {target_of(self.run_panel.query_edit.text())}", plane)
        if not key.found:
            self.controller.set_status(said[0].upper() + said[1:] + ". Go to a slice yourself and press Run to let "
                                       "the agent look there.")
            return
        if layer is not None:
            along = len(index) - 1
            go_to_slice(self.viewer, layer, key.index, axes[along] if axes else along)
        self.controller.set_status(said[0].upper() + said[1:] + (
            ". It is shown now." if key.unsure else ": shown now. Press Run to segment it there."))

    def continue_run(self) -> None:
        """Let the agent go on from the current step (after undo, a user click or a stop)."""
        if self.running or self.controller.session is None:
            return
        self._start(self.controller.continue_job, self.run_panel.max_steps.value() or CONTINUE_STEPS)

    def stop(self) -> None:
        self.controller.stop()

    def undo(self) -> None:
        self.controller.undo()

    def redo(self) -> None:
        self.controller.redo()

    def reject(self) -> None:
        self.controller.reject()

    def accept(self) -> None:
        self.controller.accept()

    def _on_points_changed(self, event=None) -> None:
        """A point a person added to the clicks layer becomes a user step."""
        session = self.controller.session
        if self.layers.syncing or session is None or self.running:
            return
        points = self.viewer.layers[CLICKS_NAME]
        if len(points.data) <= len(session.current.clicks):
            return
        index, row, col = self.layers.locate(points.data[-1])
        if index != tuple(self.layers.index):
            self.show_step(session.current)  # the click is taken back off the layer
            plane = self._plane_words()
            self.controller.report_error(
                f"that click is on {plane}slice {slice_words(index)}, but this session works on {plane}slice "
                f"{slice_words(self.layers.index)}: go back to that slice to click, or press Run to start on this one")
            return
        self._start(self.controller.click_job, row, col, self.click_positive)

    def use_brush_edit(self) -> None:
        """Take the working mask layer, as painted by a person, as a new step."""
        if self.running or self.controller.session is None or MASK_NAME not in self.viewer.layers:
            return
        elsewhere = self.layers.painted_elsewhere()
        if elsewhere is not None:
            self.controller.report_error(
                f"you painted on {self._plane_words()}slice {slice_words(elsewhere)}, but this session works on "
                f"{self._plane_words()}slice {slice_words(self.layers.index)}: paint there (that paint is left as it is)")
            return
        data = self.viewer.layers[MASK_NAME].data
        self.controller.brush_edit(np.asarray(self.layers.slice_of(data)) > 0)

    def _plane_words(self) -> str:
        """The session's plane for a message ("axial ", "coronal "; "" where the volume is no scan):
        which plane a slice number counts in matters to someone looking at another one."""
        spec = self.controller.spec
        return f"{plane_of(spec.axes, spec.geometry)} " if spec is not None and spec.geometry is not None else ""

    def _sync_step_list(self) -> None:
        session = self.controller.session
        step_list = self.steps_panel.step_list
        step_list.blockSignals(True)
        step_list.clear()
        if session is not None:
            step_list.addItem(f"0  start ({session.initial.area:,} px)")
            for step in session.steps:
                what = STEP_WORDS.get(step.kind, step.kind)
                step_list.addItem(f"{step.index}  {'you' if step.source == 'user' else step.source} {what}  {step.area:,} px")
            step_list.setCurrentRow(session.cursor)
        step_list.blockSignals(False)

    def _preview_step(self, row: int) -> None:
        session = self.controller.session
        if session is not None and 0 <= row <= len(session.steps):
            self.show_step(session.step_at(row))

    # -- recovery ---------------------------------------------------------------------------
    def _image_layers(self) -> list:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _offer_restore(self) -> None:
        found = self.controller.recoverable(
            [(layer.name, spatial_shape(layer), lambda index, axes, layer=layer: layer_slice(layer, index, axes))
             for layer in self._image_layers()]
        )
        if not found:
            return
        entry, layer_name = found[0]
        bar = self.restore_bar
        bar.entry, bar.layer_name = entry, layer_name
        bar.message.setText(f"An unfinished session was kept: {entry.describe()}. Restore it?")
        bar.show()

    def restore(self) -> None:
        bar = self.restore_bar
        if bar.entry is None or self.running or bar.layer_name not in self.viewer.layers:
            return
        meta, layer = bar.entry.meta, self.viewer.layers[bar.layer_name]
        index, axes = bar.entry.slice_index, bar.entry.slice_axes
        spec = RunSpec(
            image=layer_slice(layer, index, axes), query=meta["query"], model=meta.get("model"),
            segmenter=meta.get("segmenter", default_segmenter()), profile=meta.get("profile", "ibis-release"),
            max_steps=int(meta.get("max_steps", 20)), history=bool(meta.get("history", False)),
            device=meta.get("device", "auto"), layer=layer.name, index=index, axes=axes,
            layer_shape=spatial_shape(layer), geometry=geometry_of(layer), pixel_aspect=slice_pixel_aspect(layer, axes),
            slice_spacing=slice_spacing_of(layer, axes), volume=layer_volume_slice(layer, axes, index),
        )
        if index:  # show the slice as it was seen: the same axes on screen, the same position
            offset = self.viewer.dims.ndim - len(spatial_shape(layer))
            sliced = axes[:len(index)] if axes else tuple(range(len(index)))
            if axes:
                self.viewer.dims.order = tuple(range(offset)) + tuple(offset + a for a in axes)
            for axis, position in zip(sliced, index):
                go_to_slice(self.viewer, layer, position, axis)
        self._start(self.controller.restore_job, bar.entry, spec, description="IBIS agent: restoring")

    def discard_restore(self) -> None:
        if self.restore_bar.entry is not None:
            self.controller.discard(self.restore_bar.entry)
        self.restore_bar.entry = None
        self.restore_bar.hide()

    # -- results ----------------------------------------------------------------------------
    def export_to_layer(self, target: str | None = None, value: int | None = None):
        """Write the accepted mask into a Labels layer (other labels untouched); returns the layer."""
        controller = self.controller
        if controller.session is None or self.layers.image_layer is None or not controller.enabled()["export"]:
            return None
        target = target or self.result_panel.target_combo.currentText()
        value = value or self.result_panel.target_label.value()
        mask = controller.result_mask()
        if target in ("", NEW_LAYER) or target not in self.viewer.layers:
            layer = self.layers.result_layer(f"IBIS result: {controller.session.query}")
        else:
            layer = self.viewer.layers[target]
            if tuple(layer.data.shape) != spatial_shape(self.layers.image_layer):
                controller.report_error(f"'{layer.name}' is {layer.data.shape}; the image is {spatial_shape(self.layers.image_layer)}")
                return None
        self.layers.write_result(layer, mask, value, controller.record())
        controller.exported(f"Exported {int(mask.sum()):,} px as label {value} into '{layer.name}'.")
        if self.result_panel.remove_working.isChecked():
            self.layers.remove()
        self._refresh_layer_choices()
        return layer

    # -- volumes ----------------------------------------------------------------------------
    def propagate(self) -> None:
        """Carry the accepted result from its slice through the volume into a 3-D Labels layer."""
        if self.running or not self.controller.enabled()["propagate"] or self.layers.image_layer is None:
            return
        spec = self.controller.spec
        image_layer = self.layers.image_layer
        data = image_layer.data[0] if getattr(image_layer, "multiscale", False) else image_layer.data
        data = oriented(data, spec.axes)  # slices along the axis the session's slice was taken across
        mask = self.controller.result_mask()
        layer = volume_layer(self.layers, f"IBIS volume: {self.controller.session.query}")
        self.volume_name = layer.name
        self.volume_undo.append((layer.name, np.array(layer.data, copy=True)))
        paint_slice(layer, spec.index, mask, self.result_panel.target_label.value(), spec.axes)
        self.volume_panel.review_list.clear()
        self._refresh_layer_choices()
        panel = self.volume_panel
        data = data[spec.index[:-1]]  # a file of several volumes: the frame's (propagation runs along the last index)
        direction, start, depth = panel.direction_combo.currentText(), spec.index[-1], int(data.shape[0])
        self.propagation_run = (direction, start)
        reachable = {"up": depth - 1 - start, "down": start}.get(direction, depth - 1)  # slices it may visit
        self._start(self.controller.propagate_job, np.asarray(data), mask, direction,
                    panel.check_combo.currentText(), description="IBIS propagation: slices", total=reachable + 1)

    def show_propagated(self, event) -> None:
        """One propagated slice (painted into the volume layer), or the end of the run."""
        from .propagation import PropagationDone

        if self.volume_name not in self.viewer.layers:
            return
        layer = self.viewer.layers[self.volume_name]
        if isinstance(event, PropagationDone):
            layer.metadata["ibis_propagation"] = {"flagged": event.flagged, "cancelled": event.cancelled,
                                                  "slices": [r.index for r in event.slices]}
            review_list = self.volume_panel.review_list
            for index, why in event.review():
                review_list.addItem(f"slice {index} ({why})")
                review_list.item(review_list.count() - 1).setToolTip(why)  # the whole reason in a narrow dock
            if not event.cancelled:  # the structure ends where this run ended it: an earlier run's labels beyond go
                direction, start = self.propagation_run
                visited = [start] + [r.index for r in event.slices]
                clear_beyond(layer, self.controller.spec.index[:-1], self.result_panel.target_label.value(),
                             below=min(visited) if direction != "up" else None,
                             above=max(visited) if direction != "down" else None, axes=self.controller.spec.axes)
            occupied = np.nonzero(event.labels.any(axis=(1, 2)))[0]
            where = f"slices {occupied[0]}-{occupied[-1]}" if len(occupied) else "no slice"
            self.controller.set_status(f"{'Stopped' if event.cancelled else 'Propagated'}: the structure is on {where} "
                                       f"of '{layer.name}'; {len(event.flagged)} slice(s) to review.")
            return
        spec = self.controller.spec
        paint_slice(layer, spec.index[:-1] + (event.index,), event.mask if event.mask.any() else None,
                    self.result_panel.target_label.value(), spec.axes)
        note = f" ({event.stopped})" if event.stopped else ""
        self.controller.set_status(f"Propagating: slice {event.index}, {int(event.mask.sum()):,} px{note}")

    def undo_propagation(self) -> None:
        """Put the volume layer back as it was before the last propagation or slice clear."""
        if self.running or not self.volume_undo:
            return
        name, before = self.volume_undo.pop()
        if name in self.viewer.layers:
            self.viewer.layers[name].data = before
            self.controller.set_status(f"'{name}' is back as it was.")
        self.changed()

    def clear_volume_slice(self) -> None:
        """Clear the current slice of the volume layer (undoable)."""
        if self.running or self.volume_name not in self.viewer.layers or self.layers.image_layer is None:
            return
        layer = self.viewer.layers[self.volume_name]
        axes = view_axes(self.layers.image_layer, self.viewer)
        index = current_slice_index(self.layers.image_layer, self.viewer, axes)
        if not index:
            return
        self.volume_undo.append((layer.name, np.array(layer.data, copy=True)))
        paint_slice(layer, index, None, self.result_panel.target_label.value(), axes)
        self.controller.set_status(f"Slice {index[-1]} of '{layer.name}' cleared (Undo propagation brings it back).")
        self.changed()

    def go_to(self, index: int) -> None:
        """Show slice ``index`` along the axis the last propagation ran along."""
        spec = self.controller.spec
        if self.layers.image_layer is not None and spec is not None and spec.index:
            along = len(spec.index) - 1  # propagation runs along the last sliced axis
            go_to_slice(self.viewer, self.layers.image_layer, index, spec.axes[along] if spec.axes else along)

    def default_save_name(self) -> str:
        spec = self.controller.spec
        geometry = spec.geometry if spec is not None else None
        suffix = SUFFIX_OF_FORMAT.get(geometry.format, ".tif") if geometry is not None else ".tif"
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in (spec.layer if spec else "labels"))
        return f"{stem}_labels{suffix}"

    def save_result(self, path: str | Path, confirmed: bool = False) -> Path | None:
        """Write the result in the source's geometry and its trajectory; existing files are
        overwritten only if the person agrees (``confirmed``: the labels file was already agreed)."""
        path = Path(path)

        def may_overwrite(existing: Path) -> bool:
            if confirmed and existing == path:
                return True
            answer = QMessageBox.question(self, "Overwrite?", f"{existing.name} exists. Overwrite it?",
                                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                          QMessageBox.StandardButton.No)
            return answer == QMessageBox.StandardButton.Yes

        try:
            return self.controller.save(path, self.result_panel.target_label.value(), may_overwrite)
        except IbisError as exc:
            self.controller.report_error(str(exc))
            return None

    def _save_dialog(self) -> None:
        if self.controller.session is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save labels", self.default_save_name(),
                                              "Labels (*.nii.gz *.nii *.nrrd *.tif *.npy *.png);;DICOM-SEG (*.dcm)")
        if path:
            self.save_result(path, confirmed=True)
