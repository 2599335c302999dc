"""Slices whose rows and columns are unequally spaced (a coronal acquisition shown axially):
the agent and the segmenter see them at square pixels, the person keeps the slice's own grid."""

import nibabel as nib
import numpy as np
import pytest
from conftest import TERMINATE, ScriptedPolicy, point

from napari_ibis.metrics import iou
from napari_ibis.segmenters import build_segmenter
from napari_ibis.segmenters.base import Click
from napari_ibis.session import Session
from napari_ibis.square_pixels import SquareGrid, SquarePixelSegmenter, pixel_aspect, square_pixels


def squashed_disk(factor=4, size=96, radius=26):
    """A bright disk on a dark slice, every ``factor`` rows averaged into one (an ellipse four
    times wider than tall), and its mask on that grid."""
    rows, cols = np.mgrid[:size, :size]
    disk = (rows - size / 2) ** 2 + (cols - size / 2) ** 2 < radius**2
    image = np.where(disk, 200, 40).astype(np.float32).reshape(size // factor, factor, size).mean(axis=1)
    rgb = np.repeat(image.astype(np.uint8)[..., None], 3, axis=2)
    return rgb, disk[factor // 2::factor]


def test_a_mask_goes_through_the_square_grid_and_back_unchanged():
    grid = SquareGrid((24, 96), 4.0)
    assert grid.square == (96, 96)
    _, mask = squashed_disk()
    assert np.array_equal(grid.mask_out(grid.mask_in(mask)), mask)
    click = grid.click_in(Click(5, 40, True))
    assert (click.row, click.col) == (22, 40)  # the middle of the four square rows that row 5 covers
    assert SquareGrid((24, 96), 1.05).identity  # within 10%: left as it is
    assert SquareGrid((96, 24), 0.25).square == (96, 96)  # columns coarser than rows


def test_the_pixel_aspect_is_read_in_display_order():
    assert pixel_aspect((2.0, 4.0, 1.0)) == 4.0  # (slice, row, column)
    assert pixel_aspect((0.5, 0.5)) == 1.0
    assert pixel_aspect(None) == pixel_aspect(()) == pixel_aspect((1.0, 0.0, 1.0)) == 1.0


def test_the_agent_sees_a_squashed_slice_at_square_pixels_and_the_mask_stays_on_its_grid():
    rgb, truth = squashed_disk()
    policy = ScriptedPolicy([point(True, 0.5, 0.5, "the disk"), TERMINATE])
    session = Session(rgb, "segment the disk", policy, build_segmenter("classical"), pixel_aspect=4.0)
    list(session.run())
    seen = policy.requests[0].image
    assert seen.shape[:2] == (96, 96)
    bright = seen[..., 0] > 120
    heights, widths = np.nonzero(bright.any(axis=1))[0], np.nonzero(bright.any(axis=0))[0]
    assert abs(len(heights) - len(widths)) <= 4  # round again, not four times wider than tall
    mask = session.mask
    assert mask.shape == (24, 96) and mask.any() and (mask & truth).sum() > 0.9 * mask.sum()  # inside the disk
    click = session.steps[0].clicks[0]
    assert (click.row, click.col) == (12, 48)  # on the slice's own grid
    assert session.trajectory()["pixel_aspect"] == 4.0
    # the second turn shows the agent the segmenter's own square mask, not a blockier copy
    second = policy.requests[1]
    assert second.mask.shape == (96, 96) and second.mask.sum() > 3.5 * session.mask.sum()


def test_a_square_slice_is_left_to_the_segmenter_as_it_is():
    segmenter = build_segmenter("classical")
    assert square_pixels(segmenter, 1.0) is segmenter
    wrapped = square_pixels(segmenter, 3.0)
    assert isinstance(wrapped, SquarePixelSegmenter) and wrapped.name == segmenter.name
    assert square_pixels(wrapped, 1.0) is segmenter  # never wrapped twice


def test_a_squashed_volume_is_propagated_on_its_own_grid():
    from napari_ibis.propagation import Propagation, PropagationDone

    slices = [squashed_disk(radius=r) for r in (20, 22, 24, 26, 24, 22, 20)]
    volume = np.stack([rgb for rgb, _ in slices])
    propagation = Propagation(volume, build_segmenter("classical"), pixel_aspect=4.0)
    done = [e for e in propagation.run(3, slices[3][1], "both") if isinstance(e, PropagationDone)][0]
    assert done.labels.shape == (7, 24, 96)
    for z, (_, truth) in enumerate(slices):
        assert iou(done.labels[z] > 0, truth) > 0.7, z


def test_loaded_volumes_report_their_pixel_aspect(tmp_path):
    from napari_ibis import io

    data = np.zeros((40, 10, 30), dtype=np.int16)  # R, A, S voxels: 1 mm, 4 mm, 2 mm
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 4.0, 2.0, 1.0])), tmp_path / "coronal.nii.gz")
    loaded = io.read_image(tmp_path / "coronal.nii.gz", 5)
    assert loaded.slice.shape == (10, 40)  # axial: rows run P (4 mm apart), columns L (1 mm)
    assert loaded.pixel_aspect == 4.0


@pytest.mark.skipif(not all(__import__("napari_ibis.assets", fromlist=["available"]).available(n)
                            for n in ("mobile_sam", "minilm", "totalsegmentator")), reason="assets not fetched")
def test_the_default_agent_finds_the_liver_on_a_ct_slice_acquired_with_thick_coronal_slices(tmp_path, capsys):
    """A held-out CT slice with every 4 rows averaged (4 mm between rows, 0.98 mm between
    columns), written as NIfTI: without square pixels the agent answered 'not present'."""
    from napari_ibis import io
    from napari_ibis.cli import main

    from napari_ibis import assets

    reference = assets.path("totalsegmentator", "tests/reference_files")
    ct = io.read_image(reference / "example_ct_dicom").data[10]
    liver = io.read_image(reference / "example_seg_dicom.nii.gz").data[10] == 5
    squashed = ct.reshape(128, 4, 512).mean(axis=1)
    truth = liver[2::4]
    # file axes (L, P, S): columns of the display run L, rows P
    affine = np.diag([-0.9765625, -3.90625, 2.0, 1.0])
    nib.save(nib.Nifti1Image(squashed.T[:, :, None].astype(np.int16), affine), tmp_path / "ct.nii.gz")
    assert main(["segment", str(tmp_path / "ct.nii.gz"), "--query", "segment the liver",
                 "--out", str(tmp_path / "liver.nii.gz")]) == 0
    assert "stretched to square pixels" in capsys.readouterr().out
    written = np.asarray(nib.load(tmp_path / "liver.nii.gz").dataobj)[:, :, 0].T > 0
    assert written.shape == truth.shape
    assert iou(written, truth) > 0.3


def test_the_widget_takes_the_pixel_aspect_from_the_layer_as_napari_draws_it(tmp_path):
    from napari.layers import Image

    from napari_ibis._layers import slice_pixel_aspect
    from napari_ibis._runtime import ModelCache
    from napari_ibis.autosave import Autosave
    from napari_ibis.controller import Controller, RunSpec

    assert slice_pixel_aspect(Image(np.zeros((5, 10, 40)), scale=(2.0, 4.0, 1.0))) == 4.0
    assert slice_pixel_aspect(Image(np.zeros((10, 40, 3)), rgb=True)) == 1.0

    class View:
        def __getattr__(self, name):
            return lambda *args: None

    rgb, truth = squashed_disk()
    models = ModelCache()
    models.provide("scripted", ScriptedPolicy([point(True, 0.5, 0.5), TERMINATE]))
    controller = Controller(View(), models, Autosave(tmp_path / "autosave"))
    spec = RunSpec(image=rgb, query="segment the disk", model="scripted", segmenter="classical", layer="scan",
                   layer_shape=rgb.shape[:2], pixel_aspect=4.0)
    controller.begin()
    for item in controller.new_session_job(spec):
        controller.handle(item)
    controller.finish()
    assert controller.session.pixel_aspect == 4.0 and controller.session.mask.shape == (24, 96)
    assert "rows lie 4.0 times farther apart than its columns" in controller.transcript.text()


def test_a_kept_session_of_a_squashed_slice_trains_at_square_pixels(tmp_path):
    from napari_ibis.inbox import TrainingInbox
    from training.grounding.dataset import session_slices

    rgb, truth = squashed_disk()
    policy = ScriptedPolicy([point(True, 0.5, 0.5), TERMINATE])
    session = Session(rgb, "segment the disk", policy, build_segmenter("classical"), max_steps=1, pixel_aspect=4.0)
    list(session.run())
    session.add_click(12, 30, True)  # the person's click, on the slice's own grid
    inbox = TrainingInbox(tmp_path)
    inbox.keep(session, spacing=(2.0, 3.2, 0.8))
    (kept,) = inbox.sessions()
    assert kept.rgb.shape[:2] == (24, 96) and kept.pixel_aspect == 4.0  # kept as the person made it
    square = kept.at_square_pixels()
    assert square.rgb.shape[:2] == square.accepted.shape == (96, 96)
    assert np.array_equal(SquareGrid((24, 96), 4.0).mask_out(square.accepted), kept.accepted)
    person = square.steps[-1].record["clicks"][0]
    assert (person["row"], person["col"]) == (50, 30)
    (slice_,) = session_slices(tmp_path)  # what the pointer agent's fine-tuning reads
    assert slice_.rgb.shape[:2] == (96, 96) and slice_.masks["disk"].shape == (96, 96)


def test_eval_reads_each_cases_pixel_aspect_and_scores_on_its_own_grid(tmp_path):
    import json

    from napari_ibis.evaluation import oracle_case
    from napari_ibis.io import read_manifest

    rgb, truth = squashed_disk()
    affine = np.diag([-1.0, -4.0, 2.0, 1.0])  # file axes (L, P, S): display rows run P, 4 mm apart
    nib.save(nib.Nifti1Image(rgb[..., 0].T[:, :, None].astype(np.int16), affine), tmp_path / "disk.nii.gz")
    nib.save(nib.Nifti1Image(truth.T[:, :, None].astype(np.uint8), affine), tmp_path / "disk_mask.nii.gz")
    (tmp_path / "cases.jsonl").write_text(json.dumps(
        {"image": "disk.nii.gz", "mask": "disk_mask.nii.gz", "target": "disk", "modality": "MRI"}) + "\n")
    (case,) = read_manifest(tmp_path / "cases.jsonl")
    assert case.pixel_aspect == 4.0 and case.image.shape == (24, 96)
    segmenter = build_segmenter("classical")
    row = oracle_case(case, segmenter, max_clicks=5)
    assert segmenter.image_shape == (96, 96)  # the segmenter saw square pixels
    assert row["iou"] > 0.8  # scored on the case's own 24 x 96 grid
