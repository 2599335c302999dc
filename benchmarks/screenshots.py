"""README screenshots from a real run of the widget under Xvfb.

widget-mid-run.png and widget-after-export.png: the oracle policy (the click
simulator with stardist's hand-drawn mask) stands in for a strong agent, with the
MobileSAM segmenter, on stardist's real fluorescence nuclei, to show the widget's
controls. widget-brain.png: the Colin27 MRI opened through the napari-ibis reader
(axial, anterior up, the patient's left on the right), the oracle with the AAL
left thalamus. widget-hippocampus.png: the default agent asked for the left hippocampus on
the MNI152 template (a brain it never saw) through the reader: it registers its atlas brain
onto the volume. widget-default-agent.png: the bundled default agent itself
(empty model field) on a held-out synthetic phantom. widget-volume.png: TotalSegmentator's
upper-abdomen CT series (a DICOM folder, 512 x 512 x 20) through the reader, the oracle
with TotalSegmentator's liver label on the liver's largest slice, then Propagate both
ways with MobileSAM. widget-tumour.png: pyradiomics' lung2 chest CT (NRRD, a real lung
tumour with a drawn mask), the oracle with that mask on its largest slice, then Propagate
both ways: the appearance rule ends it where the mask would slide onto the aorta.
widget-spleen.png: the default agent itself (empty model field: v8 with its atlas) asked
for the spleen on slice 10 of the same CT series, then Propagate both ways.
widget-kidney-mr.png: the default agent asked for the right kidney on slice 9 of
TotalSegmentator's held-out abdominal MR (its CT atlas fitted by the slice's edges).
widget-both-kidneys.png: the default agent asked for "both kidneys" on slice 4 of the same MR:
one mask of the two, a click in each, decoded apart (segmenters/parts.py).
widget-brain-mri.png: the default agent asked for the left thalamus on slice 12 of pyradiomics'
brain1, a clinical contrast T1 MRI with its skull (NRRD, 6.5 mm slices): it registers its
brain atlas onto the whole volume and places the region (no truth: AAL is not drawn on it).
widget-chest.png: the default agent asked for the left lung on slice 30 of lung2 (it reads the
CT's Hounsfield units); widget-lungs.png: the same, then Propagate both ways, seen on slice 45.

    xvfb-run -a -s "-screen 0 1400x900x24" python benchmarks/screenshots.py
    xvfb-run -a -s "-screen 0 1400x900x24" python benchmarks/screenshots.py --only volume
    xvfb-run -a -s "-screen 0 1400x900x24" python benchmarks/screenshots.py --only tumour
    xvfb-run -a -s "-screen 0 1400x900x24" python benchmarks/screenshots.py --only spleen
    xvfb-run -a -s "-screen 0 1400x900x24" python benchmarks/screenshots.py --only hippocampus
    xvfb-run -a -s "-screen 0 1400x900x24" python benchmarks/screenshots.py --only kidney-mr
    xvfb-run -a -s "-screen 0 1400x900x24" python benchmarks/screenshots.py --only chest
    xvfb-run -a -s "-screen 0 1400x900x24" python benchmarks/screenshots.py --only lungs
    xvfb-run -a -s "-screen 0 1400x900x24" python benchmarks/screenshots.py --only brain-mri
    xvfb-run -a -s "-screen 0 1400x900x24" python benchmarks/screenshots.py --only cartilages
    xvfb-run -a -s "-screen 0 1400x900x24" python benchmarks/screenshots.py --only find-guess
    xvfb-run -a -s "-screen 0 1400x900x24" python benchmarks/screenshots.py --only both-kidneys
    xvfb-run -a -s "-screen 0 1400x900x24" python benchmarks/screenshots.py --only vertebra
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    import argparse

    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication
    from stardist.data import test_image_nuclei_2d

    from napari_ibis._widget import IbisWidget
    from napari_ibis.policies.oracle import OraclePolicy

    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["default-agent", "volume", "tumour", "spleen", "hippocampus", "kidney-mr", "both-kidneys",
                                           "chest", "lungs", "heart", "cord", "aorta", "cartilages", "brain-mri", "find-guess",
                                           "vertebra"],
                        help="only that screenshot")
    args = parser.parse_args()
    out = ROOT / "docs" / "images"
    out.mkdir(parents=True, exist_ok=True)

    def wait(condition, seconds=120):
        import time

        end = time.time() + seconds
        while not condition() and time.time() < end:
            QApplication.instance().processEvents()  # the viewer made the application
            time.sleep(0.02)

    if args.only == "default-agent":
        return default_agent(out, wait)
    if args.only == "volume":
        return volume(out, wait)
    if args.only == "tumour":
        return tumour(out, wait)
    if args.only == "spleen":
        return spleen(out, wait)
    if args.only == "hippocampus":
        return hippocampus(out, wait)
    if args.only == "kidney-mr":
        return kidney_mr(out, wait)
    if args.only == "both-kidneys":
        return both_kidneys(out, wait)
    if args.only == "chest":
        return chest(out, wait)
    if args.only == "lungs":
        return lungs(out, wait)
    if args.only == "heart":
        return heart(out, wait)
    if args.only == "cord":
        return cord(out, wait)
    if args.only == "aorta":
        return aorta(out, wait)
    if args.only == "cartilages":
        return cartilages(out, wait)
    if args.only == "brain-mri":
        return brain_mri(out, wait)
    if args.only == "find-guess":
        return find_guess(out, wait)
    if args.only == "vertebra":
        return vertebra(out, wait)
    image, labels = test_image_nuclei_2d(return_mask=True)
    target = labels == 119
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    viewer.add_image(image, name="nuclei")
    widget = IbisWidget(viewer)
    viewer.window.add_dock_widget(widget, name="IBIS agent", area="right")
    widget.controller.models.provide("oracle (ground truth)", OraclePolicy(target, stop_iou=0.85))
    panel = widget.run_panel
    panel.model_edit.setText("oracle (ground truth)")
    panel.segmenter_combo.setCurrentText("mobilesam")
    panel.query_edit.setText("segment the nucleus")
    rows, cols = np.nonzero(target)
    viewer.scene.camera.center = (rows.mean(), cols.mean())
    viewer.scene.camera.zoom = 6
    panel.max_steps.setValue(2)
    widget.run()
    wait(lambda: not widget.running)
    QApplication.instance().processEvents()
    viewer.window.screenshot(str(out / "widget-mid-run.png"), canvas_only=False)
    panel.max_steps.setValue(20)
    widget.continue_run()
    wait(lambda: not widget.running)
    widget.export_to_layer()
    viewer.layers["IBIS mask"].visible = False
    QApplication.instance().processEvents()
    viewer.window.screenshot(str(out / "widget-after-export.png"), canvas_only=False)
    print(widget.steps_panel.transcript.toPlainText())
    print(widget.steps_panel.status.text())
    viewer.close()
    brain(out, wait)
    default_agent(out, wait)
    volume(out, wait)


def _through_reader(image: str, labels: str, model: str, query: str, z: int | None, max_steps: int, wait,
                    truth_label: int):
    """``image`` and its ``labels`` through the reader (labels hidden), slice ``z`` (None:
    where ``truth_label`` is largest), the widget run with ``model`` ("": the default agent;
    an oracle of ``truth_label`` when it names one); (viewer, widget, labels layer, z)."""
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_ibis._reader import get_reader
    from napari_ibis._widget import IbisWidget
    from napari_ibis.policies.oracle import OraclePolicy

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    for path in (image, labels):
        for data, kwargs, kind in get_reader(path)(path):
            viewer._add_layer_from_data(data, kwargs, kind)
    atlas = viewer.layers[-1]
    atlas.visible = False
    z = int(np.argmax((atlas.data == truth_label).sum(axis=(1, 2)))) if z is None else z
    viewer.dims.set_current_step(0, z)
    widget = IbisWidget(viewer)
    viewer.window.add_dock_widget(widget, name="IBIS agent", area="right")
    if model.startswith("oracle"):
        widget.controller.models.provide(model, OraclePolicy(atlas.data[z] == truth_label, stop_iou=0.85))
    panel = widget.run_panel
    panel.image_combo.setCurrentText(viewer.layers[0].name)
    panel.model_edit.setText(model)  # "": the default agent (the field is remembered between runs)
    panel.segmenter_combo.setCurrentText("mobilesam")
    panel.query_edit.setText(query)
    panel.max_steps.setValue(max_steps)
    widget.run()
    wait(lambda: not widget.running, 300)
    QApplication.instance().processEvents()
    return viewer, widget, atlas, z


def _colin27(model: str, query: str, z: int | None, max_steps: int, wait, truth_label: int):
    """Colin27 and its AAL labels through :func:`_through_reader`."""
    return _through_reader("/usr/share/mricron/templates/ch2.nii.gz", "/usr/share/mricron/templates/aal.nii.gz",
                           model, query, z, max_steps, wait, truth_label)


def _dice_report(viewer, widget, truth, z: int, what: str) -> None:
    """The transcript, the status and the Dice of the widget's mask with ``truth`` (2-D) on slice ``z``."""
    mask = viewer.layers["IBIS mask"].data > 0
    mask = mask[z] if mask.ndim == 3 else mask
    print(widget.steps_panel.transcript.toPlainText())
    print(widget.steps_panel.status.text(), f"Dice with {what}: {2 * (mask & truth).sum() / (mask.sum() + truth.sum()):.3f}")


def brain(out: Path, wait) -> None:
    """Colin27 through the reader, the oracle asked for the left thalamus (AAL 77)."""
    viewer, widget, _, _ = _colin27("oracle (AAL atlas)", "segment the left thalamus", None, 12, wait, 77)
    viewer.window.screenshot(str(out / "widget-brain.png"), canvas_only=False)
    print(widget.steps_panel.status.text())
    viewer.close()


def hippocampus(out: Path, wait) -> None:
    """The MNI152 template (a brain the agent never saw; Colin27 is its brain atlas's own) through
    the reader, with AAL's labels carried onto it (hidden), the default agent (empty model field)
    asked for the left hippocampus (AAL 37) on slice 61; Dice with the carried label."""
    import tempfile

    from training.grounding.dataset import write_mni152_aal

    labels = Path(tempfile.mkdtemp()) / "mni152_aal.nii.gz"
    template = write_mni152_aal(labels)
    viewer, widget, atlas, z = _through_reader(str(template), str(labels), "", "segment the left hippocampus", 61, 8,
                                               wait, 37)
    viewer.window.screenshot(str(out / "widget-hippocampus.png"), canvas_only=False)
    _dice_report(viewer, widget, atlas.data[z] == 37, z, "AAL's left hippocampus carried onto MNI152")
    viewer.close()


def _pyradiomics_agent(out: Path, wait, case: str, query: str, z: int, file: str):
    """pyradiomics' ``case`` through the reader (its label loaded, hidden), the default agent asked
    ``query`` on slice ``z``, the window shot into ``file`` and its transcript printed; (viewer, widget)."""
    from napari_ibis import assets

    viewer, widget, _, _ = _through_reader(str(assets.path("pyradiomics", f"data/{case}_image.nrrd")),
                                           str(assets.path("pyradiomics", f"data/{case}_label.nrrd")),
                                           "", query, z, 8, wait, 1)
    viewer.reset_view()
    viewer.window.screenshot(str(out / file), canvas_only=False)
    print(widget.steps_panel.transcript.toPlainText())
    return viewer, widget


def find_guess(out: Path, wait) -> None:
    """pyradiomics' chest CT lung1 through the reader (its tumour label loaded, hidden), the default
    agent's Find slice asked for "the nodule": the map sees one on nearly every slice, so the search
    says its slice is a guess (the tumour lies on 3 of the 48 slices)."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_ibis import assets
    from napari_ibis._reader import get_reader
    from napari_ibis._widget import IbisWidget

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    for name in ("image", "label"):
        path = str(assets.path("pyradiomics", f"data/lung1_{name}.nrrd"))
        for data, kwargs, kind in get_reader(path)(path):
            viewer._add_layer_from_data(data, kwargs, kind)
    viewer.layers[-1].visible = False
    widget = IbisWidget(viewer)
    viewer.window.add_dock_widget(widget, name="IBIS agent", area="right")
    panel = widget.run_panel
    panel.image_combo.setCurrentText(viewer.layers[0].name)
    panel.model_edit.setText("")
    panel.query_edit.setText("segment the nodule")
    widget.find_slice()
    wait(lambda: not widget.running, 300)
    QApplication.instance().processEvents()
    viewer.window.screenshot(str(out / "widget-find-guess.png"), canvas_only=False)
    print(widget.controller.status)
    viewer.close()


def chest(out: Path, wait) -> None:
    """pyradiomics' chest CT lung2 (held out of the atlas's kinds of scan) through the reader,
    the default agent asked for the left lung on slice 30 (before the CT's units were read, its mask
    took in the heart); Dice with the lung by a -400 HU threshold
    (``training.data.sources.threshold_lungs``; the tumour label is loaded, hidden)."""
    from training.data.sources import threshold_lungs

    viewer, widget = _pyradiomics_agent(out, wait, "lung2", "segment the left lung", 30, "widget-chest.png")
    _dice_report(viewer, widget, threshold_lungs(viewer.layers[0].data[30])[1], 30, "the thresholded left lung")
    viewer.close()


def lungs(out: Path, wait) -> None:
    """lung2 again: the default agent asked for the left lung on slice 30, then Propagate both ways
    (the lungs followed from the CT's units, no segmenter); 3-D Dice with the thresholded left lung
    above slice 11 (below it the threshold's "left lung" is the stomach's gas)."""
    import numpy as np

    from napari_ibis import assets, io
    from training.data.sources import threshold_lungs

    path = str(assets.path("pyradiomics", "data/lung2_image.nrrd"))
    truth = np.stack([threshold_lungs(s)[1] for s in io.read_image(path).data])
    truth[:12] = False
    viewer, widget, z, result = _propagated(path, truth, "segment the left lung", None, wait, z=30)
    viewer.layers[0].contrast_limits = (-1000, 400)  # a lung window
    viewer.dims.set_current_step(0, 45)  # 15 slices from where the agent worked
    viewer.reset_view()
    _shoot(viewer, widget, out / "widget-lungs.png", result, truth, "the thresholded left lung (slices 12-60)")


def heart(out: Path, wait) -> None:
    """lung2 again: the default agent asked for the heart on slice 24 (before the CT's units gave
    it, "not present"). No package labels the heart: looked at, not scored."""
    viewer, _ = _pyradiomics_agent(out, wait, "lung2", "segment the heart", 24, "widget-heart.png")
    viewer.close()


def cord(out: Path, wait) -> None:
    """lung2 again: the default agent asked for the spinal cord on slice 30 (before the CT's units gave
    it, "not present"), then Propagate both ways, shown in a sagittal plane through the canal. No
    package labels lung2's cord (looked at; TotalSegmentator's are scored in benchmarks/ct_anatomy.py)."""
    import numpy as np

    from napari_ibis import assets

    path = str(assets.path("pyradiomics", "data/lung2_image.nrrd"))
    viewer, widget, z, result = _propagated(path, np.zeros((61, 512, 512), bool), "segment the spinal cord", None,
                                            wait, z=30)
    print(widget.steps_panel.transcript.toPlainText())
    column = int(np.argwhere(result[z]).mean(axis=0)[1])
    viewer.dims.order = (2, 0, 1)  # a sagittal plane: the slices up, front to back across
    viewer.dims.set_current_step(2, column)
    viewer.layers[0].contrast_limits = (-200, 600)  # a bone window
    viewer.reset_view()
    from qtpy.QtWidgets import QApplication

    QApplication.instance().processEvents()
    viewer.window.screenshot(str(out / "widget-cord.png"), canvas_only=False)
    print(widget.steps_panel.status.text(), f"(sagittal plane at column {column}; {int(result.sum()):,} voxels)")
    viewer.close()


def brain_mri(out: Path, wait) -> None:
    """pyradiomics' brain1 (a clinical contrast T1 with its skull) through the reader, the default
    agent asked for the left thalamus on slice 12; no truth (its label is the tumour, hidden)."""
    viewer, widget = _pyradiomics_agent(out, wait, "brain1", "segment the left thalamus", 12, "widget-brain-mri.png")
    print(widget.steps_panel.status.text(), f"mask {int((viewer.layers['IBIS mask'].data[12] > 0).sum())} px")
    viewer.close()


def _held_out_mr(out: Path, wait, query: str, z: int, max_steps: int, labels_of_truth: tuple[int, ...], name: str,
                 what: str) -> None:
    """TotalSegmentator's held-out abdominal MR through the reader, the default agent asked
    ``query`` on slice ``z``; the screenshot ``name`` and the Dice with its labels ``labels_of_truth``."""
    import numpy as np

    from napari_ibis import assets

    folder = assets.path("totalsegmentator", "tests/reference_files")
    viewer, widget, labels, z = _through_reader(str(folder / "example_mr_sm.nii.gz"),
                                                str(folder / "example_seg_mr.nii.gz"),
                                                "", query, z, max_steps, wait, labels_of_truth[0])
    viewer.reset_view()
    viewer.window.screenshot(str(out / name), canvas_only=False)
    _dice_report(viewer, widget, np.isin(labels.data[z], labels_of_truth), z, what)
    viewer.close()


def kidney_mr(out: Path, wait) -> None:
    """The default agent asked for the right kidney (label 2) on slice 9 of the held-out MR."""
    _held_out_mr(out, wait, "segment the right kidney", 9, 8, (2,), "widget-kidney-mr.png",
                 "TotalSegmentator's right kidney")


def both_kidneys(out: Path, wait) -> None:
    """The default agent asked for both kidneys (labels 2, 3) on slice 4 of the held-out MR: one
    mask of the two (PointerPolicy.pair_asked)."""
    _held_out_mr(out, wait, "segment both kidneys", 4, 6, (2, 3), "widget-both-kidneys.png",
                 "TotalSegmentator's two kidneys")


def default_agent(out: Path, wait) -> None:
    """The bundled agent (empty model field) on a held-out phantom, query naming its largest structure."""
    import napari

    from napari_ibis._widget import IbisWidget
    from napari_ibis.phantoms import phantom

    example = phantom(90003)
    target = max(example.masks, key=lambda name: example.masks[name].sum())
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    viewer.add_image(example.image, name=f"phantom ({example.modality}-like, held out)")
    viewer.reset_view()
    widget = IbisWidget(viewer)
    viewer.window.add_dock_widget(widget, name="IBIS agent", area="right")
    panel = widget.run_panel
    panel.model_edit.setText("")
    panel.segmenter_combo.setCurrentText("mobilesam")
    panel.query_edit.setText(f"segment the {target}")
    panel.max_steps.setValue(6)
    widget.run()
    wait(lambda: not widget.running, 300)
    viewer.window.screenshot(str(out / "widget-default-agent.png"), canvas_only=False)
    print(widget.steps_panel.transcript.toPlainText())
    viewer.close()


def _propagated(path: str, truth, query: str, oracle_name: str | None, wait, z: int | None = None):
    """The volume at ``path`` through the reader, the oracle (``truth``'s largest slice, <= 5
    clicks, MobileSAM) in the widget, then Propagate both ways; (viewer, widget, start slice, 3-D result).
    ``oracle_name`` None: the default agent (empty model field) on slice ``z`` instead."""
    import napari
    import numpy as np

    from napari_ibis._reader import get_reader
    from napari_ibis._widget import IbisWidget
    from napari_ibis.policies.oracle import OraclePolicy

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    for data, kwargs, kind in get_reader(path)(path):
        viewer._add_layer_from_data(data, kwargs, kind)
    viewer.layers[-1].contrast_limits = (-160, 240)
    z = int(np.argmax(truth.sum(axis=(1, 2)))) if z is None else z
    viewer.dims.set_current_step(0, z)
    widget = IbisWidget(viewer)
    viewer.window.add_dock_widget(widget, name="IBIS agent", area="right")
    panel = widget.run_panel
    if oracle_name is not None:
        widget.controller.models.provide(oracle_name, OraclePolicy(truth[z], stop_iou=0.9))
        panel.model_edit.setText(oracle_name)
    else:
        panel.model_edit.setText("")  # the default agent (the field is remembered between runs)
    panel.segmenter_combo.setCurrentText("mobilesam")
    panel.query_edit.setText(query)
    panel.max_steps.setValue(5 if oracle_name is not None else 8)
    widget.run()
    wait(lambda: not widget.running, 300)
    widget.propagate()
    if not widget.volume_name:
        raise SystemExit(f"propagation did not start; the widget says: {widget.steps_panel.status.text()}")
    wait(lambda: not widget.running, 600)
    viewer.layers["IBIS mask"].visible = False
    viewer.layers["IBIS clicks"].visible = False
    return viewer, widget, z, viewer.layers[widget.volume_name].data > 0


def _shoot(viewer, widget, file: Path, result, truth, against: str) -> None:
    from qtpy.QtWidgets import QApplication

    QApplication.instance().processEvents()
    viewer.window.screenshot(str(file), canvas_only=False)
    dice = 2 * (result & truth).sum() / (result.sum() + truth.sum())
    print(widget.steps_panel.status.text(), f"3-D Dice with {against}: {dice:.3f}")
    viewer.close()


def volume(out: Path, wait) -> None:
    """A real CT series through the reader, the liver on its largest slice, propagated both ways."""
    from napari_ibis import assets, io
    from training.data.sources import totalseg_class_maps

    root = assets.path("totalsegmentator", "tests/reference_files")
    labels = io.read_image(root / "example_seg_dicom.nii.gz").data
    liver = labels == next(k for k, v in totalseg_class_maps()["total"].items() if v == "liver")
    viewer, widget, z, result = _propagated(str(root / "example_ct_dicom"), liver, "segment the liver",
                                            "oracle (TotalSegmentator label)", wait)
    viewer.dims.set_current_step(0, max(0, z - 4))
    _shoot(viewer, widget, out / "widget-volume.png", result, liver, "TotalSegmentator's liver")


def vertebra(out: Path, wait) -> None:
    """The default agent asked for the L3 vertebra on slice 76 of the trained-on abdominal CT (NIfTI,
    3 mm slices), then Propagate both ways: it stops 35 mm each side (structure_limits), not at the spine's end."""
    from napari_ibis import assets, io
    from training.data.sources import totalseg_class_maps

    root = assets.path("totalsegmentator", "tests/reference_files")
    labels = io.read_image(root / "example_seg_fast_force_split.nii.gz").data
    l3 = labels == next(k for k, v in totalseg_class_maps()["total"].items() if v == "vertebrae_L3")
    viewer, widget, z, result = _propagated(str(root / "example_ct.nii.gz"), l3, "segment the L3 vertebra", None, wait, z=76)
    occupied = [int(i) for i in (result.any(axis=(1, 2))).nonzero()[0]]
    print(f"labelled slices {occupied[0]}-{occupied[-1]}; L3 on {int(l3.any(axis=(1, 2)).sum())} slices")
    viewer.dims.set_current_step(0, occupied[0])
    _shoot(viewer, widget, out / "widget-vertebra.png", result, l3, "TotalSegmentator's L3")


def spleen(out: Path, wait) -> None:
    """The default agent itself (v8 with its atlas) asked for the spleen on the middle slice
    of the same real CT series, then Propagate both ways."""
    _held_out_agent(out, wait, "spleen", 10, "widget-spleen.png")


def aorta(out: Path, wait) -> None:
    """The default agent asked for the aorta on slice 12 of the same real CT series (contrast-filled:
    read from the units since 2026-12-07; before, its map clicked in front of it), then Propagate both
    ways (the segmenter carries it)."""
    _held_out_agent(out, wait, "aorta", 12, "widget-aorta.png")


def cartilages(out: Path, wait) -> None:
    """The default agent asked for the costal cartilages on slice 11 of the same real CT series (read
    from the units where its map finds them since 2026-12-07; before, it clicked outside the body
    wall), then Propagate both ways (the segmenter carries them)."""
    _held_out_agent(out, wait, "costal_cartilages", 11, "widget-cartilages.png")


def _held_out_agent(out: Path, wait, structure: str, z: int, file: str) -> None:
    """The default agent asked for ``structure`` on slice ``z`` of TotalSegmentator's DICOM CT series,
    then Propagate both ways; the transcript and the 3-D Dice with its label printed."""
    from napari_ibis import assets, io
    from training.data.sources import totalseg_class_maps

    root = assets.path("totalsegmentator", "tests/reference_files")
    labels = io.read_image(root / "example_seg_dicom.nii.gz").data
    truth = labels == next(k for k, v in totalseg_class_maps()["total"].items() if v == structure)
    viewer, widget, z, result = _propagated(str(root / "example_ct_dicom"), truth,
                                            f"segment the {structure.replace('_', ' ')}", None, wait, z=z)
    print(widget.steps_panel.transcript.toPlainText())
    viewer.layers["IBIS clicks"].visible = True
    _shoot(viewer, widget, out / file, result, truth, f"TotalSegmentator's {structure.replace('_', ' ')}")


def tumour(out: Path, wait) -> None:
    """pyradiomics' lung2 (a real lung tumour beside the aorta), propagated both ways."""
    import numpy as np

    from napari_ibis import assets
    from training.data.sources import radiomics_volumes

    case = next(radiomics_volumes(["lung2"]))
    viewer, widget, _, result = _propagated(str(assets.path("pyradiomics", "data/lung2_image.nrrd")), case.mask,
                                            "segment the lung tumour", "oracle (drawn tumour mask)", wait)
    viewer.dims.set_current_step(0, int(np.nonzero(result.any(axis=(1, 2)))[0].min()))  # its last slice below
    _shoot(viewer, widget, out / "widget-tumour.png", result, case.mask, "the drawn mask")


if __name__ == "__main__":
    main()
