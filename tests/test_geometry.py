"""Geometry travels with the image: readers, the display convention, writers that land on
the source's voxel grid (NIfTI, NRRD, DICOM series, TIFF stacks)."""

import warnings

import nibabel as nib
import numpy as np
import pytest

from napari_ibis import io
from napari_ibis._reader import get_reader
from napari_ibis._writer import write_labels as napari_write_labels
from napari_ibis.geometry import GEOMETRY_KEY, GeometryWarning


def oblique_flipped_affine() -> np.ndarray:
    """Voxel axes (i, j, k) running to P, I and L, tilted by about 10 degrees, spacing 0.8/1.2/2.0 mm."""
    from scipy.spatial.transform import Rotation

    axes = np.column_stack([[0, -1, 0], [0, 0, -1], [-1, 0, 0]]).astype(float)  # i: P, j: I, k: L (RAS world)
    tilt = Rotation.from_euler("xyz", [10, -6, 4], degrees=True).as_matrix()
    affine = np.eye(4)
    affine[:3, :3] = tilt @ axes @ np.diag([0.8, 1.2, 2.0])
    affine[:3, 3] = [31.5, -17.25, 44.0]
    return affine


def world_of(affine: np.ndarray, voxel) -> np.ndarray:
    return (affine @ np.r_[np.asarray(voxel, float), 1.0])[:3]


def labelled_volume(shape=(20, 16, 12), seed=0):
    """A random grey volume and a label volume with a few distinct blobs (file voxel order)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 10, shape).astype(np.int16)
    labels = np.zeros(shape, np.uint8)
    labels[3:6, 2:5, 1:4] = 1
    labels[12:15, 9:13, 6:10] = 2
    labels[shape[0] - 3, 1, shape[2] - 2] = 3
    return image, labels


def test_a_nifti_round_trip_keeps_affine_shape_and_every_voxel(tmp_path):
    """Oblique, flipped, permuted axes and a non-zero origin: reader -> labels layer -> writer -> nibabel."""
    affine = oblique_flipped_affine()
    image, labels = labelled_volume()
    for data, name in ((image, "scan"), (labels, "scan_seg")):
        source = nib.Nifti1Image(data, affine)
        source.set_qform(affine, 1)
        source.set_sform(affine, 4)
        nib.save(source, tmp_path / f"{name}.nii.gz")

    (data, kwargs, kind), = get_reader(str(tmp_path / "scan.nii.gz"))(str(tmp_path / "scan.nii.gz"))
    assert kind == "image" and GEOMETRY_KEY in kwargs["metadata"]
    (seg, seg_kwargs, seg_kind), = get_reader(str(tmp_path / "scan_seg.nii.gz"))(str(tmp_path / "scan_seg.nii.gz"))
    assert seg_kind == "labels" and seg.shape == data.shape
    assert np.allclose(kwargs["scale"], seg_kwargs["scale"]) and all(s > 0 for s in kwargs["scale"])
    # napari's sliders name the planes they pick, whatever the file's axis order
    assert kwargs["axis_labels"] == seg_kwargs["axis_labels"] == ("axial", "coronal", "sagittal")

    out = napari_write_labels(str(tmp_path / "out.nii.gz"), seg, seg_kwargs)[0]
    written = nib.load(out)
    assert written.shape == labels.shape and np.allclose(written.affine, affine)
    assert np.array_equal(np.asarray(written.dataobj), labels)  # every voxel where it was in the source
    assert int(written.header["qform_code"]) == 1 and int(written.header["sform_code"]) == 4


def test_a_slice_segmented_on_the_display_lands_on_the_source_voxels(tmp_path):
    """The CLI path: read a slice in display order, write the mask back, find it at the same world points."""
    affine = oblique_flipped_affine()
    image, labels = labelled_volume()
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "scan.nii.gz")
    loaded = io.read_image(tmp_path / "scan.nii.gz", 5)
    geometry = loaded.meta["geometry"]
    mask = np.zeros(loaded.slice.shape, bool)
    mask[4:7, 2:9] = True
    written = nib.load(io.write_labels(tmp_path / "mask.nii.gz", mask, loaded))
    data = np.asarray(written.dataobj)
    assert data.sum() == mask.sum() and np.allclose(written.affine, affine)
    display_affine = geometry.display_affine
    for row, col in zip(*np.nonzero(mask)):
        voxel = np.linalg.solve(affine, np.r_[world_of(display_affine, (5, row, col)), 1.0])[:3]
        assert data[tuple(np.round(voxel).astype(int))] == 1


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "LAS", "PIR", "SRA"])
def test_volumes_are_shown_axial_anterior_up_patient_left_on_the_right(tmp_path, axcodes):
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff, ornt_transform

    # an RAS volume (x to the patient's Right, y Anterior, z Superior) with two anterior-superior
    # markers: 5 on the patient's left (x low), 7 on the patient's right (x high)
    volume = np.zeros((30, 30, 30), np.int16)
    volume[1:5, 25:29, 25:29] = 5
    volume[25:29, 25:29, 25:29] = 7
    ras = np.diag([1.5, 1.5, 1.5, 1.0])
    transform = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(axcodes))
    data = nib.orientations.apply_orientation(volume, transform)
    affine = ras @ inv_ornt_aff(transform, volume.shape)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "v.nii.gz")
    loaded = io.read_image(tmp_path / "v.nii.gz")
    display = loaded.data
    z = int(np.argmax((display == 5).sum(axis=(1, 2))))
    assert z > 20  # superior slices have the higher index
    rows, cols = np.nonzero(display[z] == 5)
    assert rows.mean() < 10  # anterior at the top
    assert cols.mean() > 20  # the patient's left on the image's right
    rows, cols = np.nonzero(display[z] == 7)
    assert cols.mean() < 10  # the patient's right on the image's left
    # and back to the file's own voxels exactly
    assert np.array_equal(loaded.meta["geometry"].to_file(display), data)


def test_nrrd_in_lps_space_round_trips_with_its_header(tmp_path):
    import nrrd

    image, labels = labelled_volume((14, 12, 10))
    header = {"space": "left-posterior-superior", "space directions": np.diag([0.7, 0.7, 2.5]),
              "space origin": np.array([-40.0, 12.0, 7.5])}
    nrrd.write(str(tmp_path / "ct.nrrd"), image, header=header, index_order="F")
    nrrd.write(str(tmp_path / "ct_seg.nrrd"), labels, header=header, index_order="F")
    (_, image_kwargs, _), = get_reader(str(tmp_path / "ct.nrrd"))(str(tmp_path / "ct.nrrd"))
    (seg, kwargs, kind), = get_reader(str(tmp_path / "ct_seg.nrrd"))(str(tmp_path / "ct_seg.nrrd"))
    assert kind == "labels" and np.allclose(kwargs["scale"], (2.5, 0.7, 0.7))
    out = napari_write_labels(str(tmp_path / "out.nrrd"), seg, kwargs)[0]
    data, written = nrrd.read(out, index_order="F")
    assert np.array_equal(data, labels) and written["space"] == "left-posterior-superior"
    assert np.allclose(written["space directions"], header["space directions"])
    assert np.allclose(written["space origin"], header["space origin"])
    # LPS x increases to the patient's left: voxel x low (label 1 at i=3..5) is the patient's right
    cols = np.nonzero(seg == 1)[2]
    assert cols.mean() < seg.shape[2] / 2


def write_dicom_series(folder, volume_zyx, spacing=(0.75, 0.75), thickness=2.5, origin=(-100.0, -120.0, 30.0)):
    """A CT series (one file per slice, shuffled names) in LPS with axial orientation."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir()
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    order = np.random.default_rng(1).permutation(len(volume_zyx))
    for index, z in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"IM{index:04d}"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = series
        ds.Modality = "CT"
        ds.PatientName = "Secret^Person"
        ds.PatientID, ds.StudyInstanceUID, ds.FrameOfReferenceUID = "P1", study, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20261205", "120000", "1", "A1"
        ds.PatientBirthDate, ds.PatientSex, ds.ReferringPhysicianName, ds.SeriesNumber = "", "O", "", 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + z * thickness]
        ds.PixelSpacing = list(spacing)
        ds.SliceThickness = thickness
        ds.InstanceNumber = int(z) + 1
        ds.Rows, ds.Columns = volume_zyx.shape[1:]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = volume_zyx[z].astype(np.int16).tobytes()
        ds.save_as(str(folder / f"IM{index:04d}"), enforce_file_format=True)


def test_a_dicom_series_folder_opens_as_a_volume_and_saves_as_nifti_in_place(tmp_path):
    volume = np.zeros((6, 20, 24), np.int16)
    volume[:, 2:6, 18:22] = 1500  # rows low = anterior, columns high = patient's left (LPS x+)
    write_dicom_series(tmp_path / "series", volume)
    reader = get_reader(str(tmp_path / "series"))
    assert reader is not None
    (data, kwargs, kind), = reader(str(tmp_path / "series"))
    assert data.shape == (6, 20, 24) and kind == "image"
    assert np.array_equal(data + 1024, volume.astype(np.float32))  # HU, sorted by position, not by file name
    assert np.allclose(kwargs["scale"], (2.5, 0.75, 0.75))
    labels = (data > 0).astype(np.uint8)
    out = napari_write_labels(str(tmp_path / "seg.nii.gz"), labels, kwargs)[0]
    written = nib.load(out)
    assert nib.aff2axcodes(written.affine) == ("L", "P", "S")  # DICOM's own voxel order, as converters write it
    corner = written.affine @ np.array([0, 0, 0, 1.0])
    assert np.allclose(corner[:3], [100.0, 120.0, 30.0])  # LPS (-100, -120, 30) in RAS
    assert np.array_equal(np.asarray(written.dataobj).transpose(2, 1, 0), labels)


def test_an_enhanced_multiframe_ct_opens_as_the_same_volume_as_its_series(tmp_path):
    """One file holding every slice (Enhanced / Legacy Converted Enhanced CT, as newer scanners
    export): the same display volume, spacing and world positions as the series it was made from."""
    import highdicom as hd
    import pydicom

    volume = np.zeros((6, 20, 24), np.int16)
    volume[:, 2:6, 18:22] = 1500
    volume[4, 10:14, 3:7] = 900  # a mark on one slice only: the order of the slices is checked
    write_dicom_series(tmp_path / "series", volume)
    datasets = [pydicom.dcmread(p) for p in sorted((tmp_path / "series").iterdir())]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(legacy_datasets=datasets, series_instance_uid=hd.UID(),
                                                        series_number=2, sop_instance_uid=hd.UID(), instance_number=1)
    enhanced.save_as(tmp_path / "enhanced.dcm")
    (series, series_kwargs, _), = get_reader(str(tmp_path / "series"))(str(tmp_path / "series"))
    (data, kwargs, _), = get_reader(str(tmp_path / "enhanced.dcm"))(str(tmp_path / "enhanced.dcm"))
    assert data.shape == series.shape and np.allclose(data, series)
    assert np.allclose(kwargs["scale"], series_kwargs["scale"]) and np.allclose(kwargs["translate"], series_kwargs["translate"])
    labels = (data > 0).astype(np.uint8)
    written = nib.load(napari_write_labels(str(tmp_path / "seg.nii.gz"), labels, kwargs)[0])
    from_series = nib.load(napari_write_labels(str(tmp_path / "seg_series.nii.gz"), labels, series_kwargs)[0])
    world = lambda image: {tuple(np.round(image.affine @ np.r_[v, 1.0], 3)[:3])  # noqa: E731
                           for v in np.argwhere(np.asarray(image.dataobj) > 0)}
    assert world(written) == world(from_series)  # the same voxels in the patient


def test_labels_drawn_on_a_dicom_series_save_as_a_dicom_seg_that_references_it(tmp_path):
    import highdicom as hd
    import pydicom

    from napari_ibis import io

    volume = np.zeros((6, 20, 24), np.int16)
    write_dicom_series(tmp_path / "series", volume)
    loaded = io.read_image(tmp_path / "series")
    labels = np.zeros(loaded.data.shape, np.uint8)
    labels[1:4, 3:9, 15:21] = 1  # display order: axial slices, anterior up, the patient's left on the right
    labels[4, 10:14, 2:6] = 2
    out = io.write_labels(tmp_path / "seg.dcm", labels, loaded, names={1: "liver", 2: "liver tumour"})
    seg = hd.seg.segread(out)
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["liver", "liver tumour"]
    # each source slice's frame equals the labels we see on that slice, in the source's own pixel grid
    sources = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in (tmp_path / "series").iterdir()}
    file_labels = loaded.meta["geometry"].to_file(labels).transpose(2, 1, 0)  # (slice, row, column), sorted by z
    for uid, dataset in sources.items():
        z = int(dataset.InstanceNumber) - 1
        if not file_labels[z].any():
            continue
        frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid], segment_numbers=[1, 2],
                                                   combine_segments=True)
        assert np.array_equal(frames[0], file_labels[z])
    assert seg.PatientID == "P1" and seg.StudyInstanceUID == sources[uid].StudyInstanceUID


def test_labels_drawn_on_an_enhanced_multiframe_ct_save_as_a_dicom_seg_placing_them_as_on_its_series(tmp_path):
    """One file holding every slice, its frames stored top-down: the DICOM-SEG references that
    file and puts every labelled voxel where the SEG written from the original series puts it."""
    import highdicom as hd
    import pydicom

    from napari_ibis import io

    volume = np.zeros((6, 20, 24), np.int16)
    volume[:, 2:6, 18:22] = 1500
    write_dicom_series(tmp_path / "series", volume)
    datasets = [pydicom.dcmread(p) for p in sorted((tmp_path / "series").iterdir())][::-1]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(legacy_datasets=datasets, series_instance_uid=hd.UID(),
                                                        series_number=2, sop_instance_uid=hd.UID(), instance_number=1)
    enhanced.save_as(tmp_path / "enhanced.dcm")
    loaded = io.read_image(tmp_path / "enhanced.dcm")
    labels = np.zeros(loaded.data.shape, np.uint8)
    labels[1:4, 3:9, 15:21] = 1
    labels[4, 10:14, 2:6] = 2
    names = {1: "liver", 2: "liver tumour"}
    seg = hd.seg.segread(io.write_labels(tmp_path / "seg.dcm", labels, loaded, names=names))
    from_series = hd.seg.segread(io.write_labels(tmp_path / "series_seg.dcm", labels, io.read_image(tmp_path / "series"),
                                                 names=names))

    def placed(segmentation):  # (x, y, z in the patient, label) of every labelled voxel
        vol = segmentation.get_volume(combine_segments=True)
        return {(*np.round(vol.affine @ np.r_[index, 1.0], 3)[:3], int(vol.array[tuple(index)]))
                for index in np.argwhere(vol.array > 0)}

    assert placed(seg) == placed(from_series) and len(placed(seg)) == int((labels > 0).sum())
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    assert referenced == enhanced.SOPInstanceUID
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["liver", "liver tumour"]


def test_a_dicom_seg_is_refused_in_one_line_for_labels_not_drawn_on_a_dicom_series(tmp_path):
    from napari_ibis import io
    from napari_ibis.errors import InputError

    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.int16), np.eye(4)), tmp_path / "scan.nii.gz")
    loaded = io.read_image(tmp_path / "scan.nii.gz")
    with pytest.raises(InputError, match="DICOM series"):
        io.write_labels(tmp_path / "seg.dcm", np.ones(loaded.data.shape, np.uint8), loaded)
    assert not (tmp_path / "seg.dcm").exists()


def test_tiff_stacks_keep_their_spacing(tmp_path):
    import tifffile

    stack = np.zeros((5, 30, 40), np.uint16)
    stack[2, 10:20, 10:30] = 900
    tifffile.imwrite(tmp_path / "cells.tif", stack, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                     metadata={"spacing": 1.5, "unit": "um", "axes": "ZYX"})
    (data, kwargs, _), = get_reader(str(tmp_path / "cells.tif"))(str(tmp_path / "cells.tif"))
    assert data.shape == stack.shape and np.allclose(kwargs["scale"], (1.5, 0.25, 0.25))
    out = napari_write_labels(str(tmp_path / "labels.tif"), (data > 0).astype(np.uint8), kwargs)[0]
    (_, written, _), = get_reader(out)(out)
    assert np.allclose(written["scale"], (1.5, 0.25, 0.25))


def test_labels_without_geometry_are_written_with_a_warning_not_silently(tmp_path):
    labels = np.zeros((4, 8, 8), np.uint8)
    labels[1, 2:4, 2:4] = 1
    with pytest.warns(GeometryWarning, match="no geometry"):
        napari_write_labels(str(tmp_path / "bare.nii.gz"), labels, {"metadata": {}})
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeometryWarning)
        napari_write_labels(str(tmp_path / "bare.png"), labels[1], {"metadata": {}})  # a 2-D picture needs none


def test_the_brain_sample_carries_its_geometry_and_is_radiological():
    from napari_ibis._sample_data import brain

    layers = brain()
    if not layers:
        pytest.skip("mricron-data is not installed")
    (volume, meta, _), (atlas, atlas_meta, _) = layers
    assert GEOMETRY_KEY in meta["metadata"] and GEOMETRY_KEY in atlas_meta["metadata"]
    z = int(np.argmax((atlas == 37).sum(axis=(1, 2))))  # AAL 37 = Hippocampus_L
    assert np.nonzero(atlas[z] == 37)[1].mean() > atlas.shape[2] / 2  # the left hippocampus on the image's right


def test_the_slice_on_screen_is_taken_in_the_display_convention_however_napari_turns_it():
    """napari's roll and transpose buttons: the session's axes name the plane sliced across, its
    rows and columns in the volume's own order (so the agent sees an axial slice upright)."""
    from types import SimpleNamespace

    from napari_ibis._layers import view_axes
    from napari_ibis.geometry import Geometry, plane_of
    from napari_ibis.transcript import plane_note

    volume = SimpleNamespace(data=np.zeros((4, 5, 6)), rgb=False)
    seen = lambda order: view_axes(volume, SimpleNamespace(dims=SimpleNamespace(ndim=len(order), order=order)))  # noqa: E731
    assert seen((0, 1, 2)) == () and seen((0, 2, 1)) == ()  # axial, transposed on screen: the same slice
    assert seen((1, 0, 2)) == (1, 0, 2) and seen((1, 2, 0)) == (1, 0, 2)  # coronal
    assert seen((2, 0, 1)) == (2, 0, 1)  # sagittal
    assert seen((0, 2, 1, 3)) == (1, 0, 2)  # a 3-D layer in a viewer with a 4th axis from another layer
    assert view_axes(SimpleNamespace(data=np.zeros((5, 6, 3)), rgb=True), SimpleNamespace(dims=SimpleNamespace(
        ndim=2, order=(1, 0)))) == ()
    geometry = Geometry(format="nifti", file_shape=(6, 5, 4))
    assert [plane_of(a, geometry) for a in ((), (1, 0, 2), (2, 0, 1))] == ["axial", "coronal", "sagittal"]
    assert plane_of((1, 0, 2), None) == "axial"  # a TIFF stack has no anatomy to name
    assert "learnt from axial slices" in plane_note("coronal", bundled_agent=True)
    assert plane_note("coronal", bundled_agent=False) is None and plane_note("axial", bundled_agent=True) is None


def test_a_coronal_view_has_the_head_up_and_maps_points_and_writes_back():
    from napari_ibis.geometry import VIEWS, data_to_view, oriented, view_to_data

    volume = np.arange(4 * 5 * 6).reshape(4, 5, 6)  # display order (S, P, L)
    coronal, sagittal = oriented(volume, VIEWS["coronal"]), oriented(volume, VIEWS["sagittal"])
    assert np.array_equal(coronal[2], volume[::-1, 2, :]) and np.array_equal(sagittal[1], volume[::-1, :, 1])
    coronal[2, 0, 0] = -1  # a view: the top row of a coronal slice is the top of the volume
    assert volume[3, 2, 0] == -1
    for axes in (VIEWS["coronal"], VIEWS["sagittal"], (0, 1, 2)):
        point = view_to_data(np.array([[1.0, 0.0, 3.0]]), axes, volume.shape)[0]
        assert oriented(volume, axes)[1, 0, 3] == volume[tuple(point.astype(int))]
        assert np.allclose(data_to_view(point, axes, volume.shape), [1.0, 0.0, 3.0])


def test_a_nifti_of_several_volumes_shows_each_in_the_display_convention_and_saves_on_their_grid(tmp_path):
    """A multi-sequence MRI or a dynamic series: (i, j, k, t) in the file. Each frame is oriented
    like a 3-D volume, the frames come first, and labels drawn on a frame go back to the 3-D grid."""
    affine = oblique_flipped_affine()
    image, labels = labelled_volume()
    frames = np.stack([image, image * 2, image // 2], axis=-1)
    nib.save(nib.Nifti1Image(frames, affine), tmp_path / "dce.nii.gz")
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "one.nii.gz")
    nib.save(nib.Nifti1Image(image[..., None], affine), tmp_path / "single.nii.gz")  # (i, j, k, 1)

    (data, kwargs, _), = get_reader(str(tmp_path / "dce.nii.gz"))(str(tmp_path / "dce.nii.gz"))
    (one, one_kwargs, _), = get_reader(str(tmp_path / "one.nii.gz"))(str(tmp_path / "one.nii.gz"))
    assert data.shape == (3,) + one.shape
    assert np.array_equal(data[1], 2 * one)  # the second frame, oriented as the 3-D file is
    assert tuple(kwargs["scale"]) == (1.0,) + tuple(one_kwargs["scale"])
    assert kwargs["axis_labels"] == ("frame",) + one_kwargs["axis_labels"]
    (single, single_kwargs, _), = get_reader(str(tmp_path / "single.nii.gz"))(str(tmp_path / "single.nii.gz"))
    assert np.array_equal(single, one) and np.allclose(single_kwargs["scale"], one_kwargs["scale"])

    drawn = np.zeros(data.shape, np.uint8)
    drawn[2] = kwargs["metadata"][GEOMETRY_KEY].to_display(labels)  # the labels drawn on the third frame
    out = napari_write_labels(str(tmp_path / "out.nii.gz"), drawn, kwargs)[0]
    written = nib.load(out)
    assert written.shape == image.shape and np.allclose(written.affine, affine)
    assert np.array_equal(np.asarray(written.dataobj), labels)


def test_a_metaimage_opens_like_the_same_nifti_and_its_labels_land_on_its_voxels(tmp_path):
    """.mha and .mhd (ITK's format, grand-challenge.org's standard): the same display array,
    spacing and position as the NIfTI of the same voxels and affine; labels saved as .mha keep
    the source's size, spacing, origin and direction and mark the same voxels."""
    import SimpleITK as sitk

    affine = oblique_flipped_affine()
    image, labels = labelled_volume()
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "scan.nii.gz")
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    itk = sitk.GetImageFromArray(image.transpose(2, 1, 0))  # SimpleITK's arrays are (z, y, x)
    itk.SetSpacing(tuple(spacing))
    itk.SetOrigin(tuple(lps[:3, 3]))
    itk.SetDirection(tuple((lps[:3, :3] / spacing).ravel()))
    sitk.WriteImage(itk, str(tmp_path / "scan.mha"), useCompression=True)
    sitk.WriteImage(itk, str(tmp_path / "scan.mhd"))

    (nifti, nifti_kwargs, _), = get_reader(str(tmp_path / "scan.nii.gz"))(str(tmp_path / "scan.nii.gz"))
    for name in ("scan.mha", "scan.mhd"):
        (data, kwargs, kind), = get_reader(str(tmp_path / name))(str(tmp_path / name))
        assert kind == "image" and np.array_equal(data, nifti)
        assert np.allclose(kwargs["scale"], nifti_kwargs["scale"]) and np.allclose(kwargs["translate"], nifti_kwargs["translate"])
    drawn = kwargs["metadata"][GEOMETRY_KEY].to_display(labels)
    out = napari_write_labels(str(tmp_path / "seg.mha"), drawn, kwargs)[0]
    written = sitk.ReadImage(out)
    assert written.GetSize() == itk.GetSize() and np.allclose(written.GetSpacing(), itk.GetSpacing())
    assert np.allclose(written.GetOrigin(), itk.GetOrigin()) and np.allclose(written.GetDirection(), itk.GetDirection())
    assert np.array_equal(sitk.GetArrayFromImage(written).transpose(2, 1, 0), labels)


def test_a_mask_on_another_grid_of_the_scan_is_taken_by_position_in_the_patient(tmp_path):
    """A label volume cropped to the organ, or drawn on a coarser copy of the scan, lands on the
    image's voxels where it lies in the patient (nearest voxel), with a one-line note; one that
    lies outside the scan is refused in one line."""
    from napari_ibis.errors import InputError
    from napari_ibis.metrics import dice

    shape, spacing = (48, 40, 24), np.array([0.8, 0.8, 2.0])
    affine = np.diag(list(spacing) + [1.0])
    affine[:3, 3] = [-20.0, 15.0, 40.0]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = grid * spacing + affine[:3, 3]
    centre = affine[:3, 3] + np.array([20.0, 16.0, 22.0])
    truth = (np.linalg.norm((world - centre) / [9.0, 7.0, 12.0], axis=-1) < 1).astype(np.uint8)
    image = (truth * 200 + 20).astype(np.int16)
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "scan.nii.gz")
    crop = (slice(10, 40), slice(8, 34), slice(3, 20))  # the organ's box, as some tools save it
    crop_affine = affine.copy()
    crop_affine[:3, 3] += np.array([10, 8, 3]) * spacing
    nib.save(nib.Nifti1Image(truth[crop], crop_affine), tmp_path / "cropped_seg.nii.gz")
    coarse_affine = affine @ np.diag([2.0, 2.0, 1.0, 1.0])  # every second row and column
    nib.save(nib.Nifti1Image(truth[::2, ::2], coarse_affine), tmp_path / "coarse_seg.nii.gz")
    far_affine = affine.copy()
    far_affine[:3, 3] += 500.0
    nib.save(nib.Nifti1Image(truth, far_affine), tmp_path / "elsewhere_seg.nii.gz")

    (display_truth,) = [data for data, _, _ in get_reader(str(tmp_path / "scan.nii.gz"))(str(tmp_path / "scan.nii.gz"))]
    loaded = io.read_image(tmp_path / "scan.nii.gz")
    z = loaded.slice_index[0]
    expected = display_truth[z] > 100
    with pytest.warns(GeometryWarning, match="on another grid than scan.nii.gz"):
        assert np.array_equal(io.read_mask(tmp_path / "cropped_seg.nii.gz", loaded), expected)
    with pytest.warns(GeometryWarning):
        assert dice(io.read_mask(tmp_path / "coarse_seg.nii.gz", loaded), expected) > 0.85
    with pytest.raises(InputError, match="lies outside scan.nii.gz in the patient"):
        io.read_mask(tmp_path / "elsewhere_seg.nii.gz", loaded)


def _relabel_series(folder, number, description):
    import pydicom
    from pydicom.uid import generate_uid

    uid = generate_uid()
    for file in folder.iterdir():
        ds = pydicom.dcmread(file)
        ds.SeriesNumber, ds.SeriesDescription, ds.SeriesInstanceUID = number, description, uid
        ds.save_as(file)


def test_a_study_folder_of_several_series_opens_each_and_the_cli_says_which_it_uses(tmp_path, capsys, tiny_vlm_folder):
    """A study as PACS exports it: series in subfolders beside a localizer and a non-image object.
    The reader opens every series (largest first); the CLI works on the largest, says so and lists
    the others; --series picks one by number or description; DICOM-SEG references the one used."""
    import pydicom

    from napari_ibis.cli import main
    from napari_ibis.errors import InputError

    study = tmp_path / "study"
    study.mkdir()
    axial = np.zeros((6, 20, 24), np.int16)
    axial[:, 2:6, 18:22] = 1500
    write_dicom_series(study / "s2", axial)
    _relabel_series(study / "s2", 2, "AX T1 post")
    other = np.full((3, 20, 24), 200, np.int16)
    other[:, 8:12, 4:8] = 1800
    write_dicom_series(study / "s5", other, thickness=5.0)
    _relabel_series(study / "s5", 5, "AX FLAIR")
    write_dicom_series(study / "loc", axial[:1])
    _relabel_series(study / "loc", 1, "Localizer")
    (study / "notes.txt").write_text("not DICOM")

    layers = get_reader(str(study))(str(study))
    assert [kwargs["name"] for _, kwargs, _ in layers] == ["study 2 AX T1 post", "study 5 AX FLAIR", "study 1 Localizer"]
    assert [data.shape for data, _, _ in layers] == [(6, 20, 24), (3, 20, 24), (20, 24)]

    code = main(["segment", str(study), "--query", "segment the bright block", "--model", str(tiny_vlm_folder),
                 "--segmenter", "classical", "--max-steps", "1", "--out", str(tmp_path / "seg.nii.gz")])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert ("study holds 3 image series: working on 2 'AX T1 post' (6 images); the others: 5 'AX FLAIR' (3 images), "
            "1 'Localizer' (1 images). Pick one with --series NUMBER.") in printed.out
    code = main(["segment", str(study), "--series", "T2", "--query", "q", "--model", str(tiny_vlm_folder)])
    assert code == 2 and "no series matches 'T2'" in capsys.readouterr().err
    loaded = io.read_image(study)
    assert loaded.data.shape == (6, 20, 24) and loaded.meta["series"] == "2 'AX T1 post' (6 images)"
    flair = io.read_image(study, series="flair")
    assert flair.data.shape == (3, 20, 24) and np.array_equal(flair.data, io.read_image(study, series="5").data)
    with pytest.raises(InputError, match="no series matches 'T2'; it holds 2 'AX T1 post' \\(6 images\\), 5 'AX FLAIR'"):
        io.read_image(study, series="T2")
    with pytest.raises(InputError, match="several series match 'ax'"):
        io.read_image(study, series="ax")

    # a manifest line names the series too, for eval and batch
    import json

    from napari_ibis import batch

    np.save(tmp_path / "block.npy", io.read_image(study, 1, series="5").slice > 500)
    line = {"image": "study", "series": 5, "slice": 1, "mask": "block.npy", "target": "bright block"}
    (tmp_path / "cases.jsonl").write_text(json.dumps(line) + "\n")
    (case,) = io.read_manifest(tmp_path / "cases.jsonl")
    assert case.image.shape == (20, 24) and case.mask[8:12, 4:8].all() and case.mask.sum() == 16
    (item,) = batch.items_of(tmp_path / "cases.jsonl", None)
    assert item.name == "study_series5_slice1" and batch.load(item, 0)[0].data.shape == (3, 20, 24)

    labels = (flair.data > 500).astype(np.uint8)  # the bright block (HU: 1800 - 1024)
    out = io.write_labels(tmp_path / "flair_seg.dcm", labels, flair)
    referenced = {item.ReferencedSOPInstanceUID for item in pydicom.dcmread(out).ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(f).SOPInstanceUID for f in (study / "s5").iterdir()}


def test_a_series_with_a_missing_slice_is_noted(tmp_path):
    """Unevenly spaced slices (one lost in transfer, two acquisitions in one series) cannot be
    placed exactly in a NIfTI: said in one line, the volume still opens."""
    volume = np.zeros((6, 20, 24), np.int16)
    write_dicom_series(tmp_path / "series", volume)
    (tmp_path / "series" / sorted(p.name for p in (tmp_path / "series").iterdir())[2]).unlink()
    with pytest.warns(GeometryWarning, match="are not evenly spaced \\(2.50 to 5.00 mm apart\\)"):
        loaded = io.read_image(tmp_path / "series")
    assert loaded.data.shape == (5, 20, 24)


def test_a_nrrd_with_a_list_axis_opens_each_volume_like_the_3d_file(tmp_path):
    """A diffusion or dynamic NRRD (one axis without a space direction, as 3D Slicer writes a DWI):
    its volumes oriented like the 3-D file of the same grid, labels written back on the 3-D grid."""
    import nrrd

    image, labels = labelled_volume()
    directions = np.array([[0.0, 1.2, 0.0], [0.8, 0.0, 0.0], [0.0, 0.0, -2.0]])  # permuted, one axis flipped
    origin = np.array([10.0, -5.0, 30.0])
    three = {"space": "left-posterior-superior", "space directions": directions, "space origin": origin}
    nrrd.write(str(tmp_path / "t1.nrrd"), image, three, index_order="F")
    gradients = np.stack([image, image * 2, image * 3])  # the list axis first, as in a DWI
    four = dict(three, **{"space directions": np.vstack([np.full(3, np.nan), directions]),
                          "kinds": ["list", "domain", "domain", "domain"]})
    nrrd.write(str(tmp_path / "dwi.nrrd"), gradients, four, index_order="F")

    (one, one_kwargs, _), = get_reader(str(tmp_path / "t1.nrrd"))(str(tmp_path / "t1.nrrd"))
    (data, kwargs, _), = get_reader(str(tmp_path / "dwi.nrrd"))(str(tmp_path / "dwi.nrrd"))
    assert data.shape == (3,) + one.shape and np.array_equal(data[2], 3 * one)
    assert np.allclose(kwargs["scale"], (1.0,) + tuple(one_kwargs["scale"]))
    drawn = np.zeros(data.shape, np.uint8)
    drawn[1] = kwargs["metadata"][GEOMETRY_KEY].to_display(labels)
    written, header = nrrd.read(napari_write_labels(str(tmp_path / "seg.nrrd"), drawn, kwargs)[0], index_order="F")
    assert np.array_equal(written, labels)
    lps = np.diag([-1.0, -1.0, 1.0])
    ras_directions = np.asarray(header["space directions"], float)
    assert header["space"] == "right-anterior-superior" and np.allclose(ras_directions, directions @ lps)
    assert np.allclose(header["space origin"], lps @ origin)
