"""The widget's controls, in three panels plus a recovery bar. Layout only: no logic,
no napari; :mod:`napari_ibis._widget` connects them to the controller and the layers."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QCompleter,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

SEGMENTERS = ("mobilesam", "litemedsam", "classical", "sam2")
PROFILES = ("ibis-release", "paper")
DEVICES = ("auto", "cpu", "cuda", "mps")
COMBO_CHARACTERS = 14  # combos show about this many characters; longer layer names are elided


def narrow_combo(items=()) -> QComboBox:
    """A combo box whose width does not follow its longest item (long layer names are
    elided), so that the dock stays narrow and the canvas keeps its room."""
    combo = QComboBox()
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(COMBO_CHARACTERS)
    combo.view().setTextElideMode(Qt.TextElideMode.ElideMiddle)
    combo.addItems(list(items))
    return combo


def row(*widgets) -> QHBoxLayout:
    layout = QHBoxLayout()
    for widget in widgets:
        layout.addWidget(widget)
    return layout


class RunPanel(QWidget):
    """What to segment, with which agent, and Run / Stop / Continue."""

    def __init__(self) -> None:
        super().__init__()
        self.image_combo = narrow_combo()
        self.query_edit = QLineEdit()
        self.query_edit.setPlaceholderText("e.g. segment the liver tumour")
        self.model_edit = QLineEdit()
        self.model_edit.setPlaceholderText("empty: the bundled agent; or a folder, http://host:port/v1")
        self.browse_button = QPushButton("…")
        self.browse_button.setMaximumWidth(30)
        self.profile_combo = narrow_combo(PROFILES)
        self.segmenter_combo = narrow_combo(SEGMENTERS)
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("SAM 2 checkpoint (.pt), for sam2")
        self.max_steps = QSpinBox()
        self.max_steps.setRange(0, 100)
        self.max_steps.setValue(20)
        self.max_steps.setSpecialValueText("0: you click")
        self.max_steps.setToolTip("The agent's steps per Run or Continue. 0: Run only sets up the slice (and the mask "
                                  "you start from) for your own clicks and brush; Continue then lets the agent go on.")
        self.history_box = QCheckBox("keep history")
        self.device_combo = narrow_combo(DEVICES)
        self.init_combo = narrow_combo()
        self.init_label = QSpinBox()
        self.init_label.setRange(0, 65535)
        self.init_label.setSpecialValueText("any")  # 0: every labelled pixel (a liver with its tumour, a 255 mask)
        self.init_label.setToolTip("which label of the layer to start from; 'any': every labelled pixel")
        self.find_button = QPushButton("Find slice")
        self.find_button.setToolTip("the agent looks through the volume for what the query names and goes to the "
                                    "slice where it sees it best; then press Run")
        self.run_button = QPushButton("Run")
        self.stop_button = QPushButton("Stop")
        self.continue_button = QPushButton("Continue")

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("image", self.image_combo)
        form.addRow("query", self.query_edit)
        form.addRow("model", row(self.model_edit, self.browse_button))
        form.addRow("profile", self.profile_combo)
        form.addRow("segmenter", self.segmenter_combo)
        form.addRow("checkpoint", self.checkpoint_edit)
        form.addRow("max steps", self.max_steps)
        form.addRow("device", self.device_combo)
        form.addRow("", self.history_box)
        form.addRow("start from", row(self.init_combo, QLabel("label"), self.init_label))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addLayout(row(self.find_button, self.run_button, self.stop_button, self.continue_button))

    def suggest(self, names) -> None:
        """Offer "segment the NAME" for each of ``names`` as the query is typed (any part of it
        matches: "kid" offers the left and the right kidney); none for an empty list."""
        completer = None
        if names:
            completer = QCompleter([f"segment the {name}" for name in names], self.query_edit)
            completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
            completer.setFilterMode(Qt.MatchFlag.MatchContains)
        self.query_edit.setCompleter(completer)

    @property
    def inputs(self) -> tuple:
        return (self.image_combo, self.query_edit, self.model_edit, self.browse_button, self.profile_combo,
                self.segmenter_combo, self.checkpoint_edit, self.max_steps, self.device_combo, self.history_box,
                self.init_combo, self.init_label)


class StepsPanel(QWidget):
    """The status, the transcript, the step list and the timeline edits."""

    def __init__(self) -> None:
        super().__init__()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        # two lines always: a squeezed dock must not clip what happened
        self.status.setMinimumHeight(2 * self.status.fontMetrics().lineSpacing() + 4)
        self.status.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        self.raw_box = QCheckBox("raw model text")
        self.raw_box.setToolTip("show exactly what the model wrote (tags, 0-1 coordinates)")
        self.transcript = QPlainTextEdit()
        self.transcript.setReadOnly(True)
        self.transcript.setMinimumHeight(140)
        self.step_list = QListWidget()
        self.step_list.setMaximumHeight(120)
        self.undo_button = QPushButton("Undo")
        self.redo_button = QPushButton("Redo")
        self.accept_button = QPushButton("Accept")
        self.reject_button = QPushButton("Reject")
        self.sign_box = QCheckBox("my clicks are positive (T toggles)")
        self.sign_box.setChecked(True)
        self.brush_button = QPushButton("Use my brush edit")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.status)
        heading = QHBoxLayout()
        heading.addWidget(QLabel("transcript"))
        heading.addStretch()
        heading.addWidget(self.raw_box)
        layout.addLayout(heading)
        layout.addWidget(self.transcript)
        layout.addWidget(QLabel("steps"))
        layout.addWidget(self.step_list)
        layout.addLayout(row(self.undo_button, self.redo_button, self.accept_button, self.reject_button))
        layout.addWidget(self.sign_box)
        layout.addWidget(self.brush_button)


class ResultPanel(QGroupBox):
    """Where the result goes: a Labels layer or a file."""

    def __init__(self) -> None:
        super().__init__("result")
        self.target_combo = narrow_combo()
        self.target_label = QSpinBox()
        self.target_label.setRange(1, 65535)
        self.remove_working = QCheckBox("remove the working layers after export")
        self.keep_box = QCheckBox("keep for training (on this machine)")
        self.keep_box.setToolTip("on Export or Save, the slice, the accepted mask and the steps go to the training "
                                 "inbox (no names or patient fields); `napari-ibis data from-sessions` reads it")
        self.export_button = QPushButton("Export to layer")
        self.save_button = QPushButton("Save file…")
        layout = QVBoxLayout(self)
        layout.addLayout(row(self.target_combo, QLabel("label"), self.target_label))
        layout.addWidget(self.remove_working)
        layout.addWidget(self.keep_box)
        layout.addLayout(row(self.export_button, self.save_button))


CHECKS = ("none", "every", "2", "5")


class VolumePanel(QGroupBox):
    """Carry the accepted result through a volume's slices, and review what changed."""

    def __init__(self) -> None:
        super().__init__("volume")
        self.direction_combo = narrow_combo(("both", "up", "down"))
        self.check_combo = narrow_combo(CHECKS)
        self.check_combo.setToolTip("the agent checks every propagated slice, every Nth, or none: it may repair a "
                                     "slice or answer 'not present' to end that direction (the bundled agent's repairs "
                                     "cost a little Dice on real scans: keep 'none' unless your agent is strong)")
        self.propagate_button = QPushButton("Propagate")
        self.undo_button = QPushButton("Undo propagation")
        self.clear_button = QPushButton("Clear this slice")
        self.review_list = QListWidget()
        self.review_list.setMaximumHeight(90)
        self.review_list.setToolTip("slices the agent changed, where the structure ended, or where the mask starts "
                                    "to look unlike the structure (a drift onto a neighbour): click to go there")
        layout = QVBoxLayout(self)
        form = QFormLayout()
        form.addRow("direction", self.direction_combo)
        form.addRow("agent checks", self.check_combo)
        layout.addLayout(form)
        layout.addWidget(self.propagate_button)
        layout.addWidget(QLabel("slices to review"))
        layout.addWidget(self.review_list)
        layout.addLayout(row(self.undo_button, self.clear_button))


class RestoreBar(QFrame):
    """Offers an autosaved session that was not exported (shown only when there is one)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.restore_button = QPushButton("Restore")
        self.discard_button = QPushButton("Discard")
        layout = QVBoxLayout(self)
        layout.addWidget(self.message)
        layout.addLayout(row(self.restore_button, self.discard_button))
        self.entry = None
        self.layer_name = ""
        self.hide()
