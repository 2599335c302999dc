"""napari-ibis batch: every image of a folder, every slice of its volumes, every manifest line."""

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import disk_image, point
from fake_openai import FakeServer
from PIL import Image

from napari_ibis.cli import EXIT_BAD_INPUT, main

INSIDE = point(True, 30.5 / 64, 30.5 / 64)


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(disk_image(64, centre=(30, 30), radius=10)[0]).save(folder / "photo.png")
    volume = np.stack([disk_image(64, centre=(30, 30), radius=r, seed=r)[0] for r in (5, 9, 12)]).astype(np.float32)
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = (-20, 10, 30)
    nib.save(nib.Nifti1Image(volume.transpose(2, 1, 0), affine), folder / "scan.nii.gz")
    return folder


def run(capsys, *args):
    code = main(["batch", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_folder_gets_labels_per_file_in_its_geometry_and_a_rerun_skips_them(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    server = FakeServer(INSIDE)
    try:
        code, printed, err = run(capsys, inputs, "--query", "segment the disk", "--out", out, "--model", server.url,
                                 "--segmenter", "classical", "--max-steps", "1", "--concurrency", "2")
        assert code == 0, err
        assert len(server.seen) == 4  # the 2-D image and the volume's three slices
        code, printed, err = run(capsys, inputs, "--query", "segment the disk", "--out", out, "--model", server.url,
                                 "--segmenter", "classical", "--max-steps", "1")
    finally:
        server.close()
    assert code == 0 and "resuming: 2 of 2" in err and len(server.seen) == 4  # nothing asked twice
    source, labels = nib.load(inputs / "scan.nii.gz"), nib.load(out / "scan.ibis.nii.gz")
    assert labels.shape == source.shape and np.allclose(labels.affine, source.affine)
    assert all(labels.get_fdata()[30, 30, z] == 1 for z in range(3))  # the disk on every slice
    trace = json.loads((out / "scan.ibis.json").read_text())
    assert [s["slice"] for s in trace["sessions"]] == [[0], [1], [2]] and trace["image"]["whole_volume"]
    photo = np.asarray(Image.open(out / "photo.ibis.tif"))
    assert photo.shape == (64, 64) and photo[30, 30] == 1
    summary = [json.loads(line) for line in (out / "batch.jsonl").read_text().splitlines()]
    assert sorted(line["input"] for line in summary) == ["photo", "scan"]


def test_a_manifest_gives_a_query_and_a_slice_per_line(inputs, tmp_path, capsys):
    manifest = inputs / "cases.jsonl"
    manifest.write_text(json.dumps({"image": "scan.nii.gz", "slice": 2, "target": "disk"}) + "\n"
                        + json.dumps({"image": "photo.png", "query": "find the bright disk"}) + "\n")
    server = FakeServer(INSIDE)
    try:
        code, _, err = run(capsys, manifest, "--out", tmp_path / "out", "--model", server.url, "--segmenter",
                           "classical", "--max-steps", "1")
    finally:
        server.close()
    assert code == 0, err
    asked = [seen["body"]["messages"][-1]["content"][-1]["text"] for seen in server.seen]
    assert any("segment the disk" in text for text in asked) and any("find the bright disk" in text for text in asked)
    labels = nib.load(tmp_path / "out" / "scan_slice2.ibis.nii.gz").get_fdata()
    assert labels[..., 2].any() and not labels[..., :2].any()  # only the line's slice


def test_a_local_model_runs_the_slices_in_worker_processes(inputs, tmp_path, capsys, tiny_vlm_folder):
    (inputs / "photo.png").unlink()
    code, _, err = run(capsys, inputs, "--query", "segment the disk", "--out", tmp_path / "out", "--model",
                       tiny_vlm_folder, "--segmenter", "classical", "--max-steps", "1", "--concurrency", "2")
    assert code == 0, err
    trace = json.loads((tmp_path / "out" / "scan.ibis.json").read_text())
    assert len(trace["sessions"]) == 3 and trace["sessions"][0]["policy"]["folder"] == str(tiny_vlm_folder)


def test_bad_batch_input_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for args, words in (((tmp_path / "empty", "--query", "x"), "holds no image"),
                        ((tmp_path / "empty",), "needs --query"),
                        ((tmp_path / "notes.txt", "--query", "x"), "a manifest .jsonl")):
        code, _, err = run(capsys, *args, "--out", tmp_path / "out", "--segmenter", "classical")
        assert code == EXIT_BAD_INPUT and words in err and err.count("\n") == 1


def test_a_batch_asking_the_default_agent_for_an_untaught_lesion_is_refused_before_any_input(inputs, tmp_path, capsys):
    from napari_ibis import assets

    if not all(assets.available(n) for n in ("mobile_sam", "minilm")):
        pytest.skip("the pointer agent's files were not fetched")
    code, _, err = run(capsys, inputs, "--query", "segment the lung tumour", "--out", tmp_path / "out",
                       "--segmenter", "classical")
    assert code == EXIT_BAD_INPUT and "was not taught the lung tumour" in err and err.count("\n") == 1
    assert not list((tmp_path / "out").glob("*.ibis*"))


def test_a_batch_with_a_misspelt_name_runs_the_name_meant_and_keeps_what_was_typed(inputs, tmp_path, capsys):
    from napari_ibis import assets

    if not all(assets.available(n) for n in ("mobile_sam", "minilm")):
        pytest.skip("the pointer agent's files were not fetched")
    (tmp_path / "one").mkdir()
    (inputs / "photo.png").rename(tmp_path / "one" / "photo.png")
    code, _, err = run(capsys, tmp_path / "one", "--query", "segment the gallblader", "--out", tmp_path / "out",
                       "--segmenter", "classical", "--max-steps", "1")
    assert code == 0 and "note: read 'gallblader' as the gallbladder" in err and "not taught" not in err
    line = json.loads((tmp_path / "out" / "batch.jsonl").read_text().splitlines()[0])
    assert line["query"] == "segment the gallbladder" and line["query_as_typed"] == "segment the gallblader"
    trace = json.loads((tmp_path / "out" / "photo.ibis.json").read_text())
    assert trace["query"] == "segment the gallbladder" and trace["query_as_typed"] == "segment the gallblader"


def test_a_dicom_series_folder_without_suffixes_is_one_input(tmp_path, capsys):
    from test_geometry import write_dicom_series

    volume = np.stack([disk_image(64, centre=(30, 30), radius=10, seed=z)[0] for z in range(3)]).astype(np.int16) * 4
    (tmp_path / "in").mkdir()
    write_dicom_series(tmp_path / "in" / "series", volume)  # files named IM0000..., no suffix
    server = FakeServer(INSIDE)
    try:
        code, _, err = run(capsys, tmp_path / "in", "--query", "segment the disk", "--out", tmp_path / "out",
                           "--model", server.url, "--segmenter", "classical", "--max-steps", "1")
    finally:
        server.close()
    assert code == 0, err
    labels = nib.load(tmp_path / "out" / "series.ibis.nii.gz")
    assert labels.shape == (64, 64, 3) and len(server.seen) == 3
    assert "Secret" not in (tmp_path / "out" / "series.ibis.json").read_text()


def test_an_unreadable_file_is_reported_and_the_others_are_segmented(inputs, tmp_path, capsys):
    (inputs / "broken.nii.gz").write_bytes(b"not a NIfTI file")
    server = FakeServer(INSIDE)
    try:
        code, printed, err = run(capsys, inputs, "--query", "segment the disk", "--out", tmp_path / "out",
                                 "--model", server.url, "--segmenter", "classical", "--max-steps", "1")
    finally:
        server.close()
    assert code == 0 and "2 input(s) segmented" in printed and "1 unreadable" in printed
    lines = [json.loads(line) for line in (tmp_path / "out" / "batch.jsonl").read_text().splitlines()]
    assert [line["input"] for line in lines if "error" in line] == ["broken"]
    assert (tmp_path / "out" / "scan.ibis.nii.gz").is_file() and (tmp_path / "out" / "photo.ibis.tif").is_file()


def test_a_nifti_of_several_volumes_is_taken_whole_in_its_first_frame(tmp_path, capsys):
    """A two-sequence MRI in the folder: every slice of its first frame, the labels on the 3-D grid."""
    folder = tmp_path / "in"
    folder.mkdir()
    volume = np.stack([disk_image(64, centre=(30, 30), radius=r, seed=r)[0] for r in (5, 9, 12)]).astype(np.float32)
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    nib.save(nib.Nifti1Image(np.stack([volume.transpose(2, 1, 0), -volume.transpose(2, 1, 0)], axis=-1), affine),
             folder / "mri.nii.gz")
    server = FakeServer(INSIDE)
    try:
        code, _, err = run(capsys, folder, "--query", "segment the disk", "--out", tmp_path / "out", "--model",
                           server.url, "--segmenter", "classical", "--max-steps", "1")
    finally:
        server.close()
    assert code == 0, err
    assert len(server.seen) == 3  # the first frame's three slices
    labels = nib.load(tmp_path / "out" / "mri.ibis.nii.gz")
    assert labels.shape == volume.transpose(2, 1, 0).shape and np.allclose(labels.affine, affine)
    assert all(labels.get_fdata()[30, 30, z] == 1 for z in range(3))
    trace = json.loads((tmp_path / "out" / "mri.ibis.json").read_text())
    assert [s["slice"] for s in trace["sessions"]] == [[0, 0], [0, 1], [0, 2]]
