"""The brain atlas registered onto a whole brain volume (napari_ibis.grounding.brain_atlas), and
the pointer agent, the CLI and the widget handing it the volume a slice is from."""

from pathlib import Path

import numpy as np
import pytest

from napari_ibis.grounding.brain_atlas import VolumeAtlas
from napari_ibis.policies.base import VolumeSlice, volume_slice

SHIPPED = Path(__file__).resolve().parent.parent / "resources/models/pointer/brain_atlas.npz"


def _available(*names) -> bool:
    from napari_ibis import assets

    return all(assets.available(n) for n in names)


def moved(atlas: VolumeAtlas, variant: str = "head", degrees: float = 6.0, shift_mm=(6.0, -8.0, 5.0), slice_mm=4.0):
    """The atlas's own grey and labels turned, shifted and cut into ``slice_mm`` axial slices."""
    import SimpleITK as sitk

    from napari_ibis.grounding.brain_atlas import _image

    source = _image(atlas.greys[variant].astype(np.float32), (atlas.spacing,) * 3)
    centre = np.array(source.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in source.GetSize()]))
    transform = sitk.Euler3DTransform(tuple(centre), 0.0, 0.0, np.deg2rad(degrees), tuple(shift_mm))
    depth, rows, cols = atlas.greys[variant].shape
    spacing = (slice_mm, atlas.spacing, atlas.spacing)
    grid = _image(np.zeros((int(depth * atlas.spacing / slice_mm), rows, cols), np.float32), spacing)
    grey = sitk.GetArrayFromImage(sitk.Resample(source, grid, transform, sitk.sitkLinear, 0.0))
    labels = sitk.GetArrayFromImage(sitk.Resample(_image(atlas.labels.astype(np.float32), (atlas.label_spacing,) * 3), grid,
                                                  transform, sitk.sitkNearestNeighbor, 0.0)).astype(int)
    return grey, labels, spacing


def test_the_shipped_brain_atlas_fitted_onto_a_moved_brain_finds_its_regions_where_they_went():
    atlas = VolumeAtlas.load(SHIPPED)
    assert set(atlas.greys) == {"head", "brain"} and atlas.holds("left thalamus") and not atlas.holds("liver")
    grey, labels, spacing = moved(atlas)
    fit = atlas.register(grey, spacing)
    assert fit.trusted and fit.variant == "head"
    for name in ("left thalamus", "right putamen", "left precentral"):
        truth = labels == atlas.code(name)
        found = fit.region_volume(name)
        assert 2 * (found & truth).sum() / (found.sum() + truth.sum()) > 0.7, name
    z = int(np.argmax((labels == atlas.code("left thalamus")).sum(axis=(1, 2))))
    cut = fit.region("left thalamus", "axial", z)
    assert np.argwhere(cut)[:, 1].mean() > cut.shape[1] / 2  # the patient's left on the image's right
    top = len(labels) - 1  # the top of the head holds no thalamus: nothing is cut there
    assert not fit.region("left thalamus", "axial", top).any()
    coronal = fit.region("left thalamus", "coronal", int(np.argwhere(cut)[:, 0].mean()))
    assert coronal.shape == (labels.shape[0], labels.shape[2]) and coronal.any()


def test_a_volume_that_is_no_head_is_not_trusted():
    from napari_ibis.phantoms import phantom_volume

    fit = VolumeAtlas.load(SHIPPED).register(phantom_volume(0).image, (2.5, 0.8, 0.8))
    assert not fit.trusted


def test_a_brain_atlas_keeps_its_variants_and_names_and_refuses_grids_that_differ(tmp_path):
    labels = np.zeros((6, 8, 8), np.uint8)
    labels[2:4, 2:5, 5:7] = 3
    atlas = VolumeAtlas({"head": np.full((6, 8, 8), 90, np.uint8)}, labels, {3: "left blob", 4: "nowhere"}, 2.0)
    atlas.save(tmp_path / "brain_atlas.npz")
    again = VolumeAtlas.load(tmp_path / "brain_atlas.npz")
    assert again.names == {3: "left blob", 4: "nowhere"} and again.spacing == 2.0 and set(again.greys) == {"head"}
    with pytest.raises(ValueError, match="one 3-D grid"):
        VolumeAtlas({"head": np.zeros((6, 8, 12), np.uint8)}, labels, {3: "left blob"}, 2.0)
    finer = VolumeAtlas({"head": np.zeros((3, 4, 4), np.uint8)}, labels, {3: "left blob"}, 4.0, label_spacing=2.0)
    assert finer.label_spacing == 2.0 and finer.spacing == 4.0


def test_a_volume_slice_is_made_only_of_a_grey_volume_with_its_spacing():
    volume = np.zeros((5, 6, 7), np.float32)
    axial = volume_slice(volume, (3, 1, 1), (), 2)
    assert isinstance(axial, VolumeSlice) and axial.volume is volume and (axial.view, axial.index) == ("axial", 2)
    found = volume_slice(volume, (3.0, 1.0, 1.0), (1, 0, 2), 4)
    assert (found.view, found.index, found.spacing) == ("coronal", 4, (3.0, 1.0, 1.0)) and found.at(1).index == 1
    assert volume_slice(volume[0], (1.0, 1.0), (), 0) is None  # a 2-D image
    assert volume_slice(volume, None, (), 0) is None  # no spacing known


def test_a_volume_file_hands_its_slice_the_volume_in_the_display_convention(tmp_path):
    import nibabel as nib

    from napari_ibis import io

    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(20, 16, 12)).astype(np.float32),
                             np.diag([0.8, 0.9, 3.0, 1.0])), tmp_path / "scan.nii.gz")
    axial = io.read_image(tmp_path / "scan.nii.gz", 5).volume_slice()
    assert axial.volume.shape == (12, 16, 20) and axial.spacing == pytest.approx((3.0, 0.9, 0.8))
    assert (axial.view, axial.index) == ("axial", 5)
    coronal = io.read_image(tmp_path / "scan.nii.gz", 7, view="coronal").volume_slice()
    assert (coronal.view, coronal.index) == ("coronal", 7) and coronal.volume.shape == (12, 16, 20)
    from PIL import Image

    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "flat.png")
    assert io.read_image(tmp_path / "flat.png").volume_slice() is None


@pytest.mark.skipif(not _available("mobile_sam", "minilm", "pyradiomics"),
                    reason="mobile_sam, minilm or pyradiomics not fetched")
def test_on_a_real_brain_mri_the_agent_places_a_region_through_the_volume_and_says_where_it_lies(tmp_path):
    """pyradiomics' brain1: a clinical contrast T1 with its skull, 6.5 mm slices. On the slice
    alone the map found no thalamus ("not present"); through the volume it is placed."""
    from napari_ibis import assets, io
    from napari_ibis.policies import load_policy
    from napari_ibis.segmenters import build_segmenter
    from napari_ibis.session import Session

    path = assets.path("pyradiomics", "data/brain1_image.nrrd")
    policy, segmenter = load_policy(None), build_segmenter("mobilesam")
    assert policy.brain is not None

    def run(z: int, volume: bool):
        loaded = io.read_image(path, z)
        session = Session(loaded.slice, "segment the left thalamus", policy, segmenter, max_steps=4,
                          volume=loaded.volume_slice() if volume else None)
        list(session.run())
        return session

    found = run(12, volume=True)
    placed = found.steps[0]
    assert placed.kind == "placed" and "registered an atlas brain" in placed.thought and found.mask.sum() > 300
    cols = np.argwhere(found.mask)[:, 1]
    assert cols.mean() > found.mask.shape[1] / 2  # the patient's left, on the image's right
    seen = policy.locate(found.seen, "segment the left thalamus", found.volume)
    assert seen.present and "registered onto the volume" in seen.basis  # not a confidence it measured
    absent = run(5, volume=True)
    assert absent.current.not_present and "lies on slices" in absent.current.thought
    alone = run(12, volume=False)
    assert not any("registered" in step.thought for step in alone.steps)


@pytest.mark.skipif(not _available("mobile_sam", "minilm", "pyradiomics"),
                    reason="mobile_sam, minilm or pyradiomics not fetched")
def test_both_members_of_a_pair_on_a_brain_volume_are_the_two_registered_regions_as_one_mask():
    """"the left and right caudate" on pyradiomics' brain2 (real MRI): both registered regions
    placed as one mask, found through the volume and carried through it together; the query
    names "right caudate" too, which must not take the run over as a single region."""
    from napari_ibis import assets, io
    from napari_ibis.policies import load_policy
    from napari_ibis.segmenters import build_segmenter
    from napari_ibis.session import Session

    loaded = io.read_image(assets.path("pyradiomics", "data/brain2_image.nrrd"), 11)
    policy, volume = load_policy(None), loaded.volume_slice()
    session = Session(loaded.slice, "segment the left and right caudate", policy, build_segmenter("mobilesam"),
                      max_steps=4, volume=volume)
    list(session.run())
    members = [policy.brain_region(session.seen, f"segment the {side} caudate", volume)[0] for side in ("left", "right")]
    assert session.steps[0].kind == "placed" and session.steps[0].thought.startswith("You asked for both")
    assert all(m.sum() > 100 for m in members) and np.array_equal(session.mask, members[0] | members[1])
    assert not any(step.clicks and not step.clicks[-1].positive for step in session.steps)  # no cut into either
    assert policy.locate(session.seen, "segment the left and right caudate", volume).score == sum(
        policy.locate(session.seen, f"segment the {side} caudate", volume).score for side in ("left", "right"))
    through = policy.region_through(session.seen, "segment the left and right caudate", volume)
    singles = [policy.region_through(session.seen, f"segment the {side} caudate", volume) for side in ("left", "right")]
    assert np.array_equal(through(12), singles[0](12) | singles[1](12)) and through(12).any()


@pytest.mark.skipif(not _available("mobile_sam", "minilm", "pyradiomics"),
                    reason="mobile_sam, minilm or pyradiomics not fetched")
def test_a_brain_region_propagated_through_a_real_mri_follows_the_registered_region(tmp_path, capsys):
    """``--propagate`` on a region the atlas registered onto the volume takes that region slice by
    slice (a segmenter follows a region without edges for a few slices at most), and the
    labels go back in the NRRD's geometry."""
    import json

    import SimpleITK as sitk

    from napari_ibis import assets
    from napari_ibis.cli import main

    path = assets.path("pyradiomics", "data/brain2_image.nrrd")
    out = tmp_path / "caudate.nii.gz"
    code = main(["segment", str(path), "--query", "segment the left caudate", "--slice", "11", "--segmenter",
                 "mobilesam", "--max-steps", "4", "--propagate", "both", "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0 and "registered onto this volume" in stdout
    record = json.loads(out.with_name("caudate.ibis.json").read_text())["propagation"]
    assert "atlas brain" in record["followed"]
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out))) > 0
    image = sitk.ReadImage(str(path))
    assert written.shape == sitk.GetArrayFromImage(image).shape
    assert 3 <= written.any(axis=(1, 2)).sum() <= 8  # the caudate over a few of the 6.5 mm slices, not the head


def test_stop_ends_a_fit_of_the_brain_atlas_in_the_middle():
    import threading

    from napari_ibis.errors import Cancelled

    atlas = VolumeAtlas.load(SHIPPED)
    grey, _, spacing = moved(atlas)
    cancel = threading.Event()
    threading.Timer(0.1, cancel.set).start()  # a person presses Stop while it fits
    with pytest.raises(Cancelled, match="stopped while fitting"):
        atlas.register(grey, spacing, cancel)


@pytest.mark.skipif(not _available("mobile_sam", "minilm", "pyradiomics"),
                    reason="mobile_sam, minilm or pyradiomics not fetched")
def test_batch_hands_each_volume_to_the_agent_so_a_brain_region_goes_through_the_registered_atlas(tmp_path, capsys):
    import json
    import shutil

    from napari_ibis import assets
    from napari_ibis.cli import main

    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(assets.path("pyradiomics", "data/brain2_image.nrrd"), scans / "patient.nrrd")
    code = main(["batch", str(scans), "--query", "segment the left caudate", "--propagate", "both",
                 "--segmenter", "mobilesam", "--max-steps", "4", "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "out" / "patient.ibis.json").read_text())
    text = json.dumps(record)
    assert "registered an atlas brain" in text and "where an atlas brain (Colin27, AAL) registered" in text


@pytest.mark.skipif(not _available("mobile_sam", "minilm", "pyradiomics"),
                    reason="mobile_sam, minilm or pyradiomics not fetched")
def test_a_coronal_slice_of_a_real_brain_mri_gets_the_region_from_the_volume_too():
    """The kind-of-scan rule was learnt on axial slices; on a coronal slice the fit's own match
    decides, and the region is cut in that plane (head up, the patient's left on the right)."""
    from napari_ibis import assets, io
    from napari_ibis.policies import load_policy
    from napari_ibis.segmenters import build_segmenter
    from napari_ibis.session import Session

    path = assets.path("pyradiomics", "data/brain2_image.nrrd")
    policy = load_policy(None)
    axial = io.read_image(path, 11).volume_slice()
    fit = policy.brain.register(axial.volume, axial.spacing)
    thalamus = np.asarray(fit.region_volume("left thalamus"))
    row = int(np.argwhere(thalamus)[:, 1].mean())  # a coronal slice through it
    loaded = io.read_image(path, row, view="coronal")
    session = Session(loaded.slice, "segment the left thalamus", policy, build_segmenter("mobilesam"), max_steps=3,
                      pixel_aspect=loaded.pixel_aspect, volume=loaded.volume_slice())
    list(session.run())
    assert session.steps[0].kind == "placed" and not session.current.not_present
    assert np.argwhere(session.mask)[:, 1].mean() > session.mask.shape[1] / 2


@pytest.mark.skipif(not _available("mobile_sam", "minilm", "pyradiomics"),
                    reason="mobile_sam, minilm or pyradiomics not fetched")
def test_eval_propagate_hands_a_volume_case_to_the_agent_too(tmp_path, capsys):
    """A manifest volume case (the truth here: the left caudate where the atlas registered onto
    the volume puts it) is segmented and propagated as `segment` does: through the registered atlas."""
    import json

    import SimpleITK as sitk

    from napari_ibis import assets, io
    from napari_ibis.cli import main
    from napari_ibis.policies import load_policy

    path = assets.path("pyradiomics", "data/brain2_image.nrrd")
    axial = io.read_image(path, 11).volume_slice()
    caudate = load_policy(None).brain.register(axial.volume, axial.spacing).region_volume("left caudate")
    truth = io.read_image(path)
    written = io.write_labels(tmp_path / "caudate.nrrd", caudate.astype(np.uint8), like=truth)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(written))).any()
    (tmp_path / "cases.jsonl").write_text(json.dumps({"image": str(path), "mask": str(written), "target": "left caudate",
                                                      "modality": "MRI"}) + "\n")
    code = main(["eval", str(tmp_path / "cases.jsonl"), "--propagate", "both", "--policy", "default", "--segmenter",
                 "mobilesam", "--json", str(tmp_path / "report.json")])
    assert code == 0, capsys.readouterr().err
    row = json.loads((tmp_path / "report.json").read_text())["cases"][0]
    assert "atlas brain" in row["followed"] and row["dice_3d"] > 0.9  # the registered region, taken slice by slice


@pytest.mark.skipif(not _available("mobile_sam", "minilm"), reason="mobile_sam or minilm not fetched")
def test_the_agent_says_beforehand_when_a_run_will_fit_the_brain_atlas():
    """The widget's status names the few seconds of a fit before the first step (once a volume)."""
    from napari_ibis.policies import load_policy

    policy = load_policy(None)
    volume = volume_slice(np.zeros((6, 32, 32), np.float32), (5.0, 1.0, 1.0), (), 3)
    assert policy.will_fit("segment the left thalamus", volume) and policy.will_fit("segment the thalamus", volume)
    assert not policy.will_fit("segment the liver", volume) and not policy.will_fit("segment the left thalamus", None)
