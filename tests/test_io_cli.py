import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import tifffile
from conftest import disk_image
from PIL import Image

from napari_ibis import io
from napari_ibis.cli import main
from napari_ibis.errors import InputError


def test_reads_png_tiff16_rgb_nifti_nrrd_npy_and_dicom(tmp_path):
    image, _ = disk_image(32)
    Image.fromarray(image).save(tmp_path / "a.png")
    assert np.array_equal(io.read_image(tmp_path / "a.png").slice, image)
    sixteen = (image.astype(np.uint16) * 200)
    tifffile.imwrite(tmp_path / "b.tif", sixteen)
    assert io.read_image(tmp_path / "b.tif").slice.dtype == np.uint16
    rgb = np.stack([image] * 3, axis=-1)
    tifffile.imwrite(tmp_path / "c.tif", rgb)
    assert io.read_image(tmp_path / "c.tif").rgb
    volume = np.random.default_rng(0).random((20, 24, 10)).astype(np.float32)  # x, y, z
    nib.save(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 3.0, 1.0])), tmp_path / "v.nii.gz")
    loaded = io.read_image(tmp_path / "v.nii.gz", 4)
    assert loaded.data.shape == (10, 24, 20) and np.array_equal(loaded.slice, volume[:, :, 4].T[::-1, ::-1])  # anterior up, left on the right
    import nrrd

    nrrd.write(str(tmp_path / "v.nrrd"), volume.transpose(2, 1, 0).copy(), index_order="C")
    assert io.read_image(tmp_path / "v.nrrd", 3).slice.shape == (24, 20)
    np.save(tmp_path / "d.npy", image)
    assert io.read_image(tmp_path / "d.npy").slice.shape == (32, 32)
    from pydicom.data import get_testdata_file

    ct = io.read_image(get_testdata_file("CT_small.dcm"))
    assert ct.slice.shape == (128, 128) and ct.meta["modality"] == "CT" and ct.slice.min() < 0  # Hounsfield units


def test_labels_are_written_in_the_input_geometry_and_never_overwritten(tmp_path):
    volume = np.zeros((20, 24, 10), np.int16)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "v.nii.gz")
    loaded = io.read_image(tmp_path / "v.nii.gz", 4)
    mask = np.zeros((24, 20), bool)
    mask[5:9, 3:7] = True
    out = io.write_labels(tmp_path / "labels.nii.gz", mask, loaded)
    written = nib.load(out)
    assert written.shape == (20, 24, 10) and np.allclose(written.affine, affine)
    data = np.asarray(written.dataobj)
    assert data[:, :, 4].T[::-1, ::-1][5, 3] == 1 and data.sum() == 16  # only slice 4 is set
    with pytest.raises(InputError, match="--force"):
        io.write_labels(tmp_path / "labels.nii.gz", mask, loaded)
    io.write_labels(tmp_path / "labels.nii.gz", mask, loaded, force=True)
    for suffix in (".tif", ".npy", ".png", ".nrrd"):
        io.write_labels(tmp_path / f"m{suffix}", mask, loaded if suffix != ".png" else None)
    assert np.asarray(Image.open(tmp_path / "m.png")).max() == 255
    assert tifffile.imread(tmp_path / "m.tif").shape == (10, 24, 20)
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_masks_must_be_binary_or_label_valued(tmp_path):
    loaded = io.LoadedImage(tmp_path, np.zeros((10, 10)), rgb=False)
    np.save(tmp_path / "float.npy", np.full((10, 10), 0.5))
    with pytest.raises(InputError, match="not binary"):
        io.read_mask(tmp_path / "float.npy", loaded)
    labels = np.zeros((10, 10), np.uint8)
    labels[:3] = 1
    labels[5:] = 2
    np.save(tmp_path / "labels.npy", labels)
    with pytest.raises(InputError, match="--label"):
        io.read_mask(tmp_path / "labels.npy", loaded)
    assert io.read_mask(tmp_path / "labels.npy", loaded, label=2).sum() == 50
    # a structure made of several labels (a liver with its tumour): as --label 1,2 or "label": [1, 2]
    assert io.read_mask(tmp_path / "labels.npy", loaded, label="1,2").sum() == 80
    assert io.read_mask(tmp_path / "labels.npy", loaded, label=[1, 2, 7]).sum() == 80
    with pytest.raises(InputError, match="no pixel with label 3, 7"):
        io.read_mask(tmp_path / "labels.npy", loaded, label=[3, 7])
    for bad in ("liver", "1.5", [1, True], []):
        with pytest.raises(InputError, match="a label is a whole number"):
            io.read_mask(tmp_path / "labels.npy", loaded, label=bad)
    np.save(tmp_path / "small.npy", np.zeros((9, 10), np.uint8))
    with pytest.raises(InputError, match="image slice is"):
        io.read_mask(tmp_path / "small.npy", loaded)


# -- the command line ------------------------------------------------------------------
@pytest.fixture
def files(tmp_path):
    image, mask = disk_image(48, centre=(20, 26), radius=8)
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG not really")
    np.save(tmp_path / "nan.npy", np.full((16, 16), np.nan))
    partly = image.astype(np.float32)
    partly[:, :6] = np.nan  # no data beside the image, as masked scans are written
    np.save(tmp_path / "partly_nan.npy", partly)
    np.save(tmp_path / "tiny.npy", np.zeros((4, 16)))
    np.save(tmp_path / "four_d.npy", np.zeros((2, 3, 16, 16)))
    line = {"image": "img.png", "mask": "mask.png", "target": "disk"}
    (tmp_path / "labels.jsonl").write_text(json.dumps(line | {"label": 255}) + "\n" + json.dumps(line | {"label": "a"}))
    return tmp_path


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "args, message",
    [
        (["segment", "{d}/missing.png", "--query", "q", "--model", "{m}"], "image not found"),
        (["segment", "{d}/corrupt.png", "--query", "q", "--model", "{m}"], "cannot read corrupt.png"),
        (["segment", "{d}/img.png", "--query", " ", "--model", "{m}"], "query is empty"),
        (["segment", "{d}/nan.npy", "--query", "q", "--model", "{m}"], "NaN"),
        (["segment", "{d}/tiny.npy", "--query", "q", "--model", "{m}"], "at least 8x8"),
        (["segment", "{d}/four_d.npy", "--query", "q", "--model", "{m}"], "pick a slice with --slice"),
        (["segment", "{d}/img.png", "--query", "q", "--init-mask", "{d}/tiny.npy", "--model", "{m}"], "image slice is"),
        (["segment", "{d}/img.png", "--query", "q", "--model", "{d}"], "no config.json"),
        (["segment", "{d}/img.png", "--query", "q", "--model", "{m}", "--segmenter", "sam2:{d}/img.png"], "as a SAM 2 checkpoint"),
        (["eval", "{d}/missing.jsonl"], "manifest not found"),
        (["segment", "{d}/img.png", "--query", "q", "--model", "{m}", "--label", "2"], "--label applies to --init-mask"),
        (["segment", "{d}/img.png", "--query", "q", "--model", "{m}", "--init-mask", "{d}/mask.png", "--label", "x"],
         "a label is a whole number"),
        (["eval", "{d}/labels.jsonl"], "labels.jsonl line 2: a label is a whole number"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(files, capsys, tiny_vlm_folder, args, message):
    code, _, err = run_cli(capsys, *[a.replace("{d}", str(files)).replace("{m}", str(tiny_vlm_folder)) for a in args])
    assert code == 2 and err.startswith("napari-ibis: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "{d}/result.xyz"], "cannot write labels as '.xyz'"),
        (["--out", "{d}/no/such/folder/result.tif"], "does not exist"),
        (["--model", "/nonexistent/model"], "model folder not found"),
        (["--window", "ct:abc"], "cannot read the window"),
        (["--segmenter", "nnunet"], "unknown segmenter"),
        (["--slice", "3"], "--slice does not apply"),
        (["--out", "{d}/mask.png"], "exists; pass --force"),
    ],
)
def test_options_are_checked_before_anything_heavy_loads(files, capsys, monkeypatch, args, message):
    import napari_ibis.policies as policies
    import napari_ibis.segmenters as segmenters

    def never(*_args, **_kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(policies, "load_policy", never)
    monkeypatch.setattr(segmenters, "build_segmenter", never)
    code, _, err = run_cli(capsys, "segment", files / "img.png", "--query", "q",
                           *[a.replace("{d}", str(files)) for a in args])
    assert code == 2 and message in err and err.count("\n") == 1


def test_a_lesion_the_default_agent_was_not_taught_is_refused_in_one_line_before_it_loads(files, capsys, monkeypatch):
    """The pointer agent never finds a lesion it was not taught (0 of 27 real tumour slices):
    refused in one line naming those it knows, nothing written; with --max-steps 0 (the
    person's own mask, no agent) the query is only a name and is taken."""
    from napari_ibis import assets
    import napari_ibis.policies as policies
    import napari_ibis.segmenters as segmenters

    if not all(assets.available(n) for n in ("mobile_sam", "minilm")):
        pytest.skip("the pointer agent's files were not fetched")

    def never(*_args, **_kwargs):
        raise AssertionError("a model was loaded before the query was checked")

    monkeypatch.setattr(policies, "load_policy", never)
    monkeypatch.setattr(segmenters, "build_segmenter", never)
    code, _, err = run_cli(capsys, "segment", files / "img.png", "--query", "segment the lung tumour",
                           "--out", files / "tumour.tif")
    assert code == 2 and err.count("\n") == 1
    assert "was not taught the lung tumour" in err and "the lesions it was taught are" in err
    assert not (files / "tumour.tif").exists()
    with pytest.raises(AssertionError, match="loaded"):  # past the check: the run would start
        run_cli(capsys, "segment", files / "img.png", "--query", "segment the lung tumour", "--init-mask",
                files / "mask.png", "--max-steps", "0", "--out", files / "t.tif")


def test_a_structure_the_default_agent_was_not_taught_is_a_guess_said_before_and_recorded(files, capsys):
    from napari_ibis import assets

    if not all(assets.available(n) for n in ("mobile_sam", "minilm")):
        pytest.skip("the pointer agent's files were not fetched")
    code, out, _ = run_cli(capsys, "segment", files / "img.png", "--query", "segment the pancreatic head", "--max-steps",
                           "2", "--segmenter", "classical", "--out", files / "g.tif")
    assert code == 0
    assert out.startswith("Note: This agent was not taught the pancreatic head: its answer is a guess")
    assert "did you mean the pancreas?" in out.splitlines()[0]
    record = json.loads((files / "g.ibis.json").read_text())
    assert "not taught the pancreatic head" in record["untaught"]


def test_a_misspelt_structure_is_read_as_the_one_known_name_spelled_alike_said_and_recorded(files, capsys):
    from napari_ibis import assets

    if not all(assets.available(n) for n in ("mobile_sam", "minilm")):
        pytest.skip("the pointer agent's files were not fetched")
    code, out, _ = run_cli(capsys, "segment", files / "img.png", "--query", "segment the gallblader", "--max-steps", "2",
                           "--segmenter", "classical", "--out", files / "g.tif")
    assert code == 0
    assert out.splitlines()[0] == "Note: Read 'gallblader' as the gallbladder (a name this agent was taught)."
    assert "not taught" not in out and "guess" not in out
    record = json.loads((files / "g.ibis.json").read_text())
    assert record["query"] == "segment the gallbladder" and record["query_as_typed"] == "segment the gallblader"
    assert "untaught" not in record
    code, out, _ = run_cli(capsys, "segment", files / "img.png", "--query", "segment the liver and the spleen",
                           "--max-steps", "1", "--segmenter", "classical", "--out", files / "g.tif", "--force")
    assert code == 0 and out.splitlines()[0] == ("Note: You asked for the liver and the spleen: this agent segments one "
                                                 "structure a run, so it takes the liver; ask for the spleen next.")
    assert json.loads((files / "g.ibis.json").read_text())["query"] == "segment the liver"


def test_structures_lists_what_the_agent_can_be_asked_for(capsys, tiny_vlm_folder, tmp_path):
    from napari_ibis.grounding.head import PointerHead, PointerHeadConfig

    PointerHead(PointerHeadConfig(structures=["left kidney", "right kidney", "liver", "L1 vertebra",
                                              "L2 vertebra"])).save_pretrained(tmp_path / "v8")
    code, out, _ = run_cli(capsys, "structures", "--model", tmp_path / "v8")
    assert code == 0 and "taught 5 structures" in out
    assert "the spinal cord and the back muscles beside it from the Hounsfield units" in out  # on a CT, taught or not
    assert "the aorta below the chest where it is filled with contrast" in out
    assert "left/right kidney" in out and "liver" in out and "by kind, without the level or lobe: vertebra" in out
    code, out, _ = run_cli(capsys, "structures", "--model", tiny_vlm_folder)
    assert code == 0 and "language model" in out


def test_written_files_get_the_mode_the_umask_gives(files):
    import os

    mask = np.zeros((48, 48), bool)
    mask[3:9, 3:9] = True
    previous = os.umask(0o022)
    try:
        labels = io.write_labels(files / "shared.tif", mask)
        record = io.write_json(files / "shared.ibis.json", {"a": 1})
    finally:
        os.umask(previous)
    assert oct(labels.stat().st_mode & 0o777) == oct(0o644) and oct(record.stat().st_mode & 0o777) == oct(0o644)


def test_help_version_and_every_subcommands_help_work(capsys):
    from napari_ibis.cli import extra_commands

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    top = capsys.readouterr().out
    assert done.value.code == 0 and "``" not in top and "from training" not in top
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("napari-ibis 0.")
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    segment = capsys.readouterr().out
    assert "the agent's turns at most" in segment and "ibis-release (the released" in segment
    for name in extra_commands():
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0 and f"napari-ibis {name}" in capsys.readouterr().out


def test_a_missing_default_agent_is_one_clear_line(files, capsys, monkeypatch):
    import napari_ibis.policies as policies

    monkeypatch.setattr(policies, "DEFAULT_MODEL", ("models", "not-there"))
    monkeypatch.setattr(policies, "POINTER_MODEL", ("models", "not-there-either"))
    code, _, err = run_cli(capsys, "segment", files / "img.png", "--query", "q")
    assert code == 2 and "bundled default agent is missing" in err and err.count("\n") == 1


def test_segment_writes_labels_and_trace_with_a_model_folder(files, capsys, tiny_vlm_folder):
    out, trace = files / "out.tif", files / "trace.json"
    code, stdout, _ = run_cli(capsys, "segment", files / "img.png", "--query", "segment the disk", "--model",
                              tiny_vlm_folder, "--segmenter", "classical", "--max-steps", "2", "--out", out, "--trace", trace)
    assert code == 0 and "steps, mask" in stdout.splitlines()[-1] and "<think>" not in stdout
    assert tifffile.imread(out).shape == (48, 48)
    record = json.loads(trace.read_text())
    assert record["query"] == "segment the disk" and record["policy"]["model_type"] == "qwen3_vl"
    code, _, err = run_cli(capsys, "segment", files / "img.png", "--query", "q", "--model", tiny_vlm_folder,
                           "--out", out, "--trace", trace)
    assert code == 2 and "--force" in err
    code, stdout, err = run_cli(capsys, "segment", files / "partly_nan.npy", "--query", "segment the disk", "--model",
                                tiny_vlm_folder, "--segmenter", "classical", "--max-steps", "2", "--out", files / "p.tif")
    assert code == 0, err  # NaN where a masked scan has no data is background, not a reason to refuse it


def test_eval_with_the_oracle_reports_click_metrics(files, capsys):
    manifest = files / "cases.jsonl"
    manifest.write_text(json.dumps({"image": "img.png", "mask": "mask.png", "target": "disk", "modality": "synthetic"}) + "\n")
    code, stdout, _ = run_cli(capsys, "eval", manifest, "--policy", "oracle", "--segmenter", "classical",
                              "--max-clicks", "5", "--json", files / "report.json")
    assert code == 0 and "noc@85" in stdout
    report = json.loads((files / "report.json").read_text())["summary"]
    for key in ("iou", "dice", "f1", "noc@80", "noc@85", "noc@90", "never@85", "miou@1", "miou@5",
                "mean_steps", "seconds_per_step"):
        assert key in report
    assert report["cases"] == 1 and report["iou"] > 0.5


def test_importing_the_core_loads_no_qt_torch_or_napari():
    code = (
        "import sys, napari_ibis.cli, napari_ibis.session, napari_ibis.protocol, napari_ibis.io;"
        "bad = [m for m in ('torch', 'transformers', 'sam2', 'qtpy', 'PyQt6', 'napari') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_napari_manifest_validates():
    result = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-ibis"], capture_output=True, text=True)
    assert result.returncode == 0 and "valid" in result.stdout.lower(), result.stdout + result.stderr


@pytest.mark.slow
def test_a_normal_install_carries_the_manifest_and_the_resources(tmp_path):
    """`pip install .` (not -e): napari.yaml and resources/ must be inside the wheel."""
    import shutil
    from pathlib import Path

    source = tmp_path / "source"  # build from a copy: setuptools writes build/ and *.egg-info
    shutil.copytree(Path(__file__).resolve().parent.parent, source, symlinks=True,
                    ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "benchmarks", "docs", "__pycache__"))
    root = source
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(root)],
                           check=True, capture_output=True, text=True)
    assert "BuildBackendWarning" not in built.stdout + built.stderr  # every data folder is declared
    (wheel,) = wheels.glob("*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import napari_ibis._resources as r, napari_ibis.protocol as p;"
            "print(r.resources_root()); print(p.get_profile('ibis-release').system_prompt()[:20])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert str(target) in result.stdout and "You are a precise" in result.stdout
    assert (target / "napari_ibis" / "napari.yaml").is_file()
    assert (target / "napari_ibis" / "resources" / "prompts" / "ibis-release" / "LICENSE").is_file()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json"):
        assert (target / "napari_ibis" / "resources" / "models" / "default" / name).is_file()  # the bundled agent
    for name in ("config.json", "model.safetensors"):
        assert (target / "napari_ibis" / "resources" / "models" / "pointer" / name).is_file()  # the pointer agent
    for package in ("grounding", "propagation.py", "policies/pointer.py"):
        assert (target / "napari_ibis" / package).exists()


def test_eval_runs_a_model_policy_with_the_manifest_query(files, capsys, tiny_vlm_folder):
    manifest = files / "cases.jsonl"
    entry = {"image": "img.png", "mask": "mask.png", "target": "left disk", "modality": "synthetic", "query": "find the disk"}
    manifest.write_text(json.dumps(entry) + "\n")
    assert io.read_manifest(manifest)[0].query == "find the disk"
    code, stdout, _ = run_cli(capsys, "eval", manifest, "--policy", f"model:{tiny_vlm_folder}", "--segmenter", "classical",
                              "--max-clicks", "2", "--json", files / "model-report.json")
    assert code == 0 and "parsable_share" in stdout
    report = json.loads((files / "model-report.json").read_text())
    assert report["policy"]["model_type"] == "qwen3_vl" and report["cases"][0]["stop"]
    del entry["query"]
    manifest.write_text(json.dumps(entry) + "\n")
    assert io.read_manifest(manifest)[0].query == "segment the left disk"


def test_eval_says_per_case_why_the_agent_refused_it(files, capsys):
    from napari_ibis import assets

    if not all(assets.available(n) for n in ("mobile_sam", "minilm")):
        pytest.skip("the pointer agent's files were not fetched")
    manifest = files / "lesion.jsonl"
    manifest.write_text(json.dumps({"image": "img.png", "mask": "mask.png", "target": "lung tumour"}) + "\n")
    code, _, _ = run_cli(capsys, "eval", manifest, "--policy", "default", "--segmenter", "classical",
                         "--max-clicks", "2", "--json", files / "lesion-report.json")
    case = json.loads((files / "lesion-report.json").read_text())["cases"][0]
    assert code == 0 and case["stop"] == "error" and case["iou"] == 0.0
    assert case["stop_message"].startswith("this agent was not taught the lung tumour")


def test_segment_propagates_through_a_volume_and_writes_3d_labels_in_its_geometry(tmp_path, capsys, tiny_vlm_folder):
    import nibabel as nib

    from napari_ibis.phantoms import phantom_volume

    volume = phantom_volume(0)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    # display order (Z, rows, cols) -> the file's (x, y, z) with an identity-like orientation
    nib.save(nib.Nifti1Image(np.ascontiguousarray(volume.image.transpose(2, 1, 0)[::-1, ::-1]), affine), tmp_path / "ct.nii.gz")
    start = int(np.argmax(volume.masks["liver"].sum(axis=(1, 2))))
    loaded = __import__("napari_ibis.io", fromlist=["io"]).read_image(tmp_path / "ct.nii.gz", start)
    mask = volume.masks["liver"][start]
    assert loaded.slice.shape == mask.shape
    np.save(tmp_path / "start.npy", mask)
    out, trace = tmp_path / "liver.nii.gz", tmp_path / "liver.json"
    code, stdout, err = run_cli(capsys, "segment", tmp_path / "ct.nii.gz", "--query", "segment the liver", "--slice", start,
                                "--init-mask", tmp_path / "start.npy", "--model", tiny_vlm_folder, "--segmenter",
                                "classical", "--max-steps", "1", "--propagate", "both", "--out", out, "--trace", trace)
    assert code == 0, err
    written = nib.load(out)
    assert written.shape == (96, 96, 32) and np.allclose(written.affine, affine)
    assert int((np.asarray(written.dataobj) > 0).any(axis=(0, 1)).sum()) > 3  # labels on several slices
    record = json.loads(trace.read_text())["propagation"]
    assert record["direction"] == "both" and record["start"] == start and len(record["slices"]) > 3
    assert all(r["likeness"] is None for r in record["slices"])  # the classical backend has no embedding to judge by
    assert "propagated both from slice" in stdout


def test_check_without_propagate_and_propagate_on_a_2d_image_are_refused(files, capsys, tiny_vlm_folder):
    code, _, err = run_cli(capsys, "segment", files / "img.png", "--query", "q", "--model", tiny_vlm_folder,
                           "--check", "every")
    assert code == 2 and "--check applies to --propagate" in err
    code, _, err = run_cli(capsys, "segment", files / "img.png", "--query", "q", "--model", tiny_vlm_folder,
                           "--propagate", "both")
    assert code == 2 and "needs a 3-D volume" in err


def test_eval_propagate_scores_volume_cases_in_3d(tmp_path, capsys):
    import nibabel as nib

    from napari_ibis.phantoms import phantom_volume

    volume = phantom_volume(2)
    lines = []
    for name in ("liver", "left kidney"):
        stem = name.replace(" ", "_")
        nib.save(nib.Nifti1Image(volume.image.transpose(2, 1, 0).copy(), np.eye(4)), tmp_path / "ct.nii.gz")
        nib.save(nib.Nifti1Image(volume.masks[name].transpose(2, 1, 0).astype(np.uint8), np.eye(4)),
                 tmp_path / f"{stem}.nii.gz")
        lines.append(json.dumps({"image": "ct.nii.gz", "mask": f"{stem}.nii.gz", "target": name, "modality": "CT"}))
    (tmp_path / "volumes.jsonl").write_text("\n".join(lines) + "\n")
    code, stdout, err = run_cli(capsys, "eval", tmp_path / "volumes.jsonl", "--propagate", "both", "--segmenter",
                                "classical", "--max-clicks", "5", "--json", tmp_path / "report.json")
    assert code == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["summary"]["cases"] == 2 and report["summary"]["mean_dice_3d"] > 0.7, report["summary"]
    assert all(case["clicks"] <= 5 and case["slices_propagated"] > 5 for case in report["cases"])
    assert "mean_dice_3d" in stdout
    # what the start slice leaves of 3 clicks goes to the slices propagation got most wrong
    code, stdout, err = run_cli(capsys, "eval", tmp_path / "volumes.jsonl", "--propagate", "both", "--segmenter",
                                "classical", "--max-clicks", "3", "--corrections", "rest", "--json",
                                tmp_path / "corrected.json")
    assert code == 0, err
    corrected = json.loads((tmp_path / "corrected.json").read_text())
    assert all(case["clicks"] <= 3 and case["corrections"] == len(case["corrected_slices"]) for case in corrected["cases"])
    assert "mean_corrections" in corrected["summary"]
    code, _, err = run_cli(capsys, "eval", tmp_path / "volumes.jsonl", "--corrections", "2")
    assert code == 2 and "--corrections applies to --propagate" in err


def _volume_manifest(folder, count=2):
    from napari_ibis.phantoms import phantom_volume

    lines = []
    for seed in range(count):
        volume = phantom_volume(seed)
        nib.save(nib.Nifti1Image(volume.image.transpose(2, 1, 0).copy(), np.diag([0.8, 0.8, 2.5, 1])),
                 folder / f"ct{seed}.nii.gz")
        nib.save(nib.Nifti1Image(volume.masks["liver"].transpose(2, 1, 0).astype(np.uint8), np.diag([0.8, 0.8, 2.5, 1])),
                 folder / f"liver{seed}.nii.gz")
        lines.append({"image": f"ct{seed}.nii.gz", "mask": f"liver{seed}.nii.gz", "target": "liver", "modality": "CT"})
    return lines


def test_eval_propagate_keeps_each_volume_as_it_ends_and_resumes(tmp_path, capsys):
    lines = _volume_manifest(tmp_path)
    lines.append(lines[0] | {"slice": 12})  # a single slice: not a volume case
    lines.append({"image": "ct0.nii.gz", "mask": "broken.nii.gz", "target": "liver"})
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    manifest = tmp_path / "volumes.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = tmp_path / "report.json"
    args = ["eval", manifest, "--propagate", "both", "--segmenter", "classical", "--json", report]
    # the broken file on line 4 ends the run with one line; the volumes before it are kept
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "volumes.jsonl line 4" in err and "broken.nii.gz" in err and "Traceback" not in err
    kept = [json.loads(line) for line in (tmp_path / "report.json.partial.jsonl").read_text().splitlines()]
    assert sorted(entry["case"] for entry in kept) == [0, 1, 2]
    assert kept[0]["row"]["cm3"] == pytest.approx(
        nib.load(tmp_path / "liver0.nii.gz").get_fdata().sum() * 0.8 * 0.8 * 2.5 / 1000, abs=0.01)
    # fixed, the run resumes: only the repaired line is computed
    (tmp_path / "broken.nii.gz").unlink()
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines[:3] + [lines[1]]))
    code, stdout, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "resuming: 3 of 4 cases were done" in err and "1 line(s) of volumes.jsonl are single slices" in err
    result = json.loads(report.read_text())
    assert result["summary"]["cases"] == 3 and result["cases"][0]["dice_3d"] == kept[0]["row"]["dice_3d"]
    assert result["cases"][2]["source"] == "volumes.jsonl:4"
    assert result["cases"][2]["dice_3d"] == result["cases"][1]["dice_3d"]
    assert not (tmp_path / "report.json.partial.jsonl").exists()


def test_eval_propagate_in_worker_processes_matches_one_process(tmp_path, capsys):
    manifest = tmp_path / "volumes.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in _volume_manifest(tmp_path)))
    reports = []
    for concurrency in (1, 2):
        out = tmp_path / f"report{concurrency}.json"
        code, _, err = run_cli(capsys, "eval", manifest, "--propagate", "both", "--segmenter", "classical",
                               "--concurrency", concurrency, "--json", out)
        assert code == 0, err
        reports.append(json.loads(out.read_text()))
    one, two = reports
    assert two["segmenter"] == one["segmenter"] and two["policy"] == {"name": "oracle"}
    assert [c["dice_3d"] for c in two["cases"]] == [c["dice_3d"] for c in one["cases"]]


def _disk_manifest(folder, count):
    from PIL import Image

    from conftest import disk_image

    lines = []
    for i in range(count):
        image, mask = disk_image(64, centre=(20 + i, 30), radius=10, seed=i)
        Image.fromarray(image).save(folder / f"img{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"mask{i}.png")
        lines.append(json.dumps({"image": f"img{i}.png", "mask": f"mask{i}.png", "target": "disk", "source": f"disk{i}"}))
    (folder / "cases.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "cases.jsonl"


def test_eval_keeps_several_cases_in_flight_against_a_served_model(tmp_path, capsys):
    from fake_openai import FakeServer

    from conftest import point

    manifest = _disk_manifest(tmp_path, 8)
    server = FakeServer(point(True, 0.47, 0.33), delay=0.2)
    try:
        code, _, err = run_cli(capsys, "eval", manifest, "--policy", f"model:{server.url}", "--segmenter", "classical",
                               "--max-clicks", "1", "--concurrency", "4", "--json", tmp_path / "report.json")
    finally:
        server.close()
    assert code == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    assert [c["source"] for c in report["cases"]] == [f"disk{i}" for i in range(8)]  # every case, in manifest order
    assert server.most_in_flight > 1 and len(server.seen) == 8
    assert not (tmp_path / "report.json.partial.jsonl").exists()


def test_a_stopped_eval_resumes_and_runs_each_case_once(tmp_path, capsys):
    from fake_openai import FakeServer

    from conftest import point

    manifest = _disk_manifest(tmp_path, 6)
    server = FakeServer(point(True, 0.47, 0.33))
    try:
        code, _, _ = run_cli(capsys, "eval", manifest, "--policy", f"model:{server.url}", "--segmenter", "classical",
                             "--max-clicks", "1", "--json", tmp_path / "first.json")
        assert code == 0
        rows = json.loads((tmp_path / "first.json").read_text())["cases"]
        # a run killed after three cases, with its last line cut short
        partial = tmp_path / "report.json.partial.jsonl"
        partial.write_text("".join(json.dumps({"case": i, "row": rows[i]}) + "\n" for i in range(3)) + '{"case": 3, "ro')
        asked = len(server.seen)
        code, _, err = run_cli(capsys, "eval", manifest, "--policy", f"model:{server.url}", "--segmenter", "classical",
                               "--max-clicks", "1", "--json", tmp_path / "report.json")
    finally:
        server.close()
    assert code == 0 and "resuming: 3 of 6" in err
    assert len(server.seen) - asked == 3  # only the three cases that were not done
    report = json.loads((tmp_path / "report.json").read_text())
    assert [c["source"] for c in report["cases"]] == [f"disk{i}" for i in range(6)]


def test_several_endpoints_share_the_cases(tmp_path, capsys):
    from fake_openai import FakeServer

    from conftest import point

    manifest = _disk_manifest(tmp_path, 8)
    servers = [FakeServer(point(True, 0.47, 0.33), delay=0.1) for _ in range(2)]
    try:
        code, _, err = run_cli(capsys, "eval", manifest, "--policy", "model:" + ",".join(s.url for s in servers),
                               "--segmenter", "classical", "--max-clicks", "1", "--concurrency", "4",
                               "--json", tmp_path / "report.json")
    finally:
        for server in servers:
            server.close()
    assert code == 0, err
    assert [len(s.seen) for s in servers] == [4, 4]  # two threads on each endpoint, one request per case
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["policy"]["endpoints"]) == 2 and len(report["cases"]) == 8


def test_a_local_model_runs_in_worker_processes_with_the_same_results(tmp_path, capsys, tiny_vlm_folder):
    manifest = _disk_manifest(tmp_path, 4)
    reports = []
    for concurrency in ("1", "2"):
        code, _, err = run_cli(capsys, "eval", manifest, "--policy", f"model:{tiny_vlm_folder}", "--segmenter",
                               "classical", "--max-clicks", "2", "--concurrency", concurrency,
                               "--json", tmp_path / f"report{concurrency}.json")
        assert code == 0, err
        reports.append(json.loads((tmp_path / f"report{concurrency}.json").read_text()))
    assert [(c["source"], c["iou"], c["steps"]) for c in reports[0]["cases"]] == [
        (c["source"], c["iou"], c["steps"]) for c in reports[1]["cases"]]
    assert reports[1]["policy"]["folder"] == str(tiny_vlm_folder)


def test_a_local_model_that_cannot_load_in_the_workers_is_one_line(tmp_path, capsys):
    manifest = _disk_manifest(tmp_path, 2)
    code, _, err = run_cli(capsys, "eval", manifest, "--policy", f"model:{tmp_path / 'nowhere'}", "--concurrency", "2")
    assert code == 2 and "not found" in err and err.count("\n") == 1




def test_max_steps_0_propagates_the_imported_mask_as_it_is(tmp_path, capsys, tiny_vlm_folder):
    """A mask made elsewhere (another tool, a colleague) is carried through the volume without
    the agent touching it: on real scans the agent may erase what the person drew."""
    import nibabel as nib

    from napari_ibis.phantoms import phantom_volume

    volume = phantom_volume(0)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(volume.image.transpose(2, 1, 0)[::-1, ::-1]), np.eye(4)),
             tmp_path / "ct.nii.gz")
    start = int(np.argmax(volume.masks["liver"].sum(axis=(1, 2))))
    mask = volume.masks["liver"][start]
    np.save(tmp_path / "start.npy", mask)
    out = tmp_path / "liver.nii.gz"
    code, stdout, err = run_cli(capsys, "segment", tmp_path / "ct.nii.gz", "--query", "segment the liver", "--slice", start,
                                "--init-mask", tmp_path / "start.npy", "--model", tiny_vlm_folder, "--segmenter",
                                "classical", "--max-steps", "0", "--propagate", "both", "--out", out)
    assert code == 0, err
    assert "No agent step" in stdout
    written = np.asarray(nib.load(out).dataobj) > 0
    trace = json.loads(io.trace_path(out).read_text())
    assert trace["max_steps"] == 0 and not any(step["source"] == "agent" for step in trace["steps"])
    assert int(written.any(axis=(0, 1)).sum()) > 3
    assert int(written.sum()) > mask.sum()


def test_labels_of_a_scan_are_written_by_default_in_a_format_that_keeps_its_geometry(tmp_path, capsys,
                                                                                     tiny_vlm_folder):
    """Without --out the labels go beside the scan in its own format (a TIFF would lose where the
    voxels lie, and a viewer could not lay the labels over the scan)."""
    import nibabel as nib

    from napari_ibis.phantoms import phantom_volume

    volume = phantom_volume(0)
    affine = np.array([[-0.8, 0, 0, 120], [0, -0.8, 0, 90], [0, 0, 2.5, -300], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(volume.image.transpose(2, 1, 0)), affine), tmp_path / "ct.nii.gz")
    np.save(tmp_path / "start.npy", volume.masks["liver"][12])
    code, stdout, err = run_cli(capsys, "segment", tmp_path / "ct.nii.gz", "--query", "segment the liver",
                                "--init-mask", tmp_path / "start.npy", "--model", tiny_vlm_folder, "--segmenter",
                                "classical", "--max-steps", "0")
    assert code == 0, err
    middle = volume.image.shape[0] // 2  # no --slice: the person is told which slice was used
    assert (f"ct.nii.gz holds {volume.image.shape[0]} axial slices (counted inferior to superior): working on the "
            f"middle one, slice {middle}") in stdout
    written = nib.load(tmp_path / "ct.ibis.nii.gz")
    assert np.allclose(written.affine, affine) and (tmp_path / "ct.ibis.json").is_file()
    assert "ct.ibis.nii.gz" in stdout


def test_a_coronal_view_segments_and_propagates_across_coronal_slices(tmp_path, capsys, tiny_vlm_folder):
    """--view coronal: --slice counts front to back, the mask volume is read in the same plane and
    the propagated labels are written back on the file's own voxels."""
    import nibabel as nib

    from napari_ibis.inbox import TrainingInbox
    from napari_ibis.metrics import dice
    from napari_ibis.phantoms import phantom_volume

    volume = phantom_volume(0)
    to_file = lambda display: np.ascontiguousarray(display.transpose(2, 1, 0)[::-1, ::-1])  # noqa: E731
    nib.save(nib.Nifti1Image(to_file(volume.image), np.diag([0.8, 0.8, 2.5, 1.0])), tmp_path / "ct.nii.gz")
    liver = volume.masks["liver"]
    nib.save(nib.Nifti1Image(to_file(liver.astype(np.uint8) * 3), np.diag([0.8, 0.8, 2.5, 1.0])), tmp_path / "seg.nii.gz")
    y = int(np.argmax(liver.sum(axis=(0, 2))))
    loaded = io.read_image(tmp_path / "ct.nii.gz", y, view="coronal")
    assert loaded.slice.shape == liver[:, y, :].shape and loaded.pixel_aspect == pytest.approx(2.5 / 0.8)
    out = tmp_path / "liver.nii.gz"
    code, stdout, err = run_cli(capsys, "segment", tmp_path / "ct.nii.gz", "--view", "coronal", "--slice", y,
                                "--query", "segment the liver", "--init-mask", tmp_path / "seg.nii.gz", "--label", "3",
                                "--model", tiny_vlm_folder, "--segmenter", "classical", "--max-steps", "0",
                                "--propagate", "both", "--out", out, "--keep-for-training", tmp_path / "inbox")
    assert code == 0, err
    kept = TrainingInbox(tmp_path / "inbox").sessions()[0]  # kept for training as the slice was cut and spaced
    assert kept.meta["slice_axes"] == [1, 0, 2] and kept.pixel_aspect == pytest.approx(2.5 / 0.8)
    assert f"imported mask ({int(liver[:, y, :].sum()):,} px)" in stdout and f"propagated both from coronal slice {y}: structure on coronal slices" in stdout
    written = np.asarray(nib.load(out).dataobj) > 0
    assert written.shape == to_file(liver).shape and dice(to_file(liver), written) > 0.7
    assert json.loads(io.trace_path(out).read_text())["image"]["view"] == {"plane": "coronal", "axes": [1, 0, 2]}
    code, _, err = run_cli(capsys, "segment", tmp_path / "ct.nii.gz", "--view", "sagittal", "--slice", 500,
                           "--query", "q", "--model", tiny_vlm_folder)
    assert code == 2 and "slice 500 is outside the sagittal slices of ct.nii.gz (0..95)" in err
    Image.fromarray(volume.image[10]).save(tmp_path / "one.png")
    code, _, err = run_cli(capsys, "segment", tmp_path / "one.png", "--view", "coronal", "--query", "q",
                           "--model", tiny_vlm_folder)
    assert code == 2 and "--view coronal needs a 3-D volume" in err


def test_max_steps_0_without_a_mask_is_refused_in_one_line(files, capsys, tiny_vlm_folder):
    code, _, err = run_cli(capsys, "segment", files / "img.png", "--query", "q", "--model", tiny_vlm_folder,
                           "--max-steps", "0")
    assert code == 2 and "--init-mask" in err and err.strip().count("\n") == 0


def test_a_nifti_of_several_volumes_segments_a_frame_and_writes_labels_on_their_grid(tmp_path, capsys, tiny_vlm_folder):
    """A multi-sequence MRI (x, y, z, sequence), as the Medical Segmentation Decathlon ships its
    brain and prostate scans: the first frame's middle slice by default, said so; --slice FRAME,SLICE
    picks another; a 3-D mask imports; propagation runs through that frame's volume; the labels go
    on the 3-D grid with the file's affine, as the same run on that frame alone writes them."""
    import nibabel as nib

    from napari_ibis.metrics import dice
    from napari_ibis.phantoms import phantom_volume

    volume = phantom_volume(0)
    to_file = lambda display: np.ascontiguousarray(display.transpose(2, 1, 0)[::-1, ::-1])  # noqa: E731
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    frames = np.stack([to_file(volume.image) // 2, to_file(volume.image)], axis=-1)
    nib.save(nib.Nifti1Image(frames, affine), tmp_path / "mri.nii.gz")
    nib.save(nib.Nifti1Image(to_file(volume.image), affine), tmp_path / "second.nii.gz")
    liver = volume.masks["liver"]
    nib.save(nib.Nifti1Image(to_file(liver.astype(np.uint8)), affine), tmp_path / "seg.nii.gz")
    z = int(np.argmax(liver.sum(axis=(1, 2))))

    loaded = io.read_image(tmp_path / "mri.nii.gz")
    assert loaded.frames == 2 and loaded.slice_index == (0, volume.image.shape[0] // 2)
    code, stdout, err = run_cli(capsys, "segment", tmp_path / "mri.nii.gz", "--query", "segment the liver",
                                "--model", tiny_vlm_folder, "--segmenter", "classical", "--max-steps", "1",
                                "--out", tmp_path / "default.nii.gz")
    assert code == 0, err
    assert f"holds 2 volumes on one grid (channels or time points): working on frame 0, slice {loaded.slice_index[1]}" in stdout
    outs = {}
    for name, args in (("frames", [tmp_path / "mri.nii.gz", "--slice", f"1,{z}"]),
                       ("alone", [tmp_path / "second.nii.gz", "--slice", z])):
        outs[name] = tmp_path / f"{name}.nii.gz"
        code, stdout, err = run_cli(capsys, "segment", *args, "--query", "segment the liver", "--init-mask",
                                    tmp_path / "seg.nii.gz", "--model", tiny_vlm_folder, "--segmenter", "classical",
                                    "--max-steps", "0", "--propagate", "both", "--out", outs[name])
        assert code == 0, err
        assert f"imported mask ({int(liver[z].sum()):,} px)" in stdout
    written = nib.load(outs["frames"])
    assert written.shape == to_file(liver).shape and np.allclose(written.affine, affine)
    labels = np.asarray(written.dataobj)
    assert np.array_equal(labels, np.asarray(nib.load(outs["alone"]).dataobj)) and dice(to_file(liver), labels > 0) > 0.7
    code, _, err = run_cli(capsys, "segment", tmp_path / "mri.nii.gz", "--slice", z, "--query", "q",
                           "--model", tiny_vlm_folder)
    assert code == 2 and "holds 2 volumes (channels or time points): pick one and its slice with --slice FRAME,SLICE" in err
    # eval: a manifest line names the frame; without "slice" it is that frame's volume case
    (tmp_path / "cases.jsonl").write_text("\n".join(json.dumps(
        {"image": "mri.nii.gz", "mask": "seg.nii.gz", "target": "liver", "frame": frame}) for frame in (0, 1)) + "\n")
    slices = io.read_manifest(tmp_path / "cases.jsonl")
    assert np.array_equal(slices[1].image, volume.image[volume.image.shape[0] // 2])
    assert np.array_equal(slices[1].mask, liver[volume.image.shape[0] // 2])
    cases = io.read_manifest(tmp_path / "cases.jsonl", volumes=True)
    assert np.array_equal(cases[0].image, volume.image // 2) and np.array_equal(cases[1].image, volume.image)
    assert np.array_equal(cases[1].mask, liver)


def test_labels_written_without_a_geometry_are_noted_in_one_line(files, capsys, tiny_vlm_folder):
    """A PNG segmented into a NIfTI has no affine to give it: the CLI says so in a line a person
    reads, not as a Python warning with the package's file and source line."""
    code, _, err = run_cli(capsys, "segment", files / "img.png", "--query", "q", "--model", tiny_vlm_folder,
                           "--segmenter", "classical", "--max-steps", "1", "--out", files / "img_labels.nii.gz")
    assert code == 0, err
    assert "napari-ibis: note: img_labels.nii.gz: the labels carry no geometry" in err
    assert "cli.py" not in err and "GeometryWarning" not in err


def test_a_jpeg_lossless_dicom_reads_and_an_undecodable_one_is_one_line(tmp_path, capsys, tiny_vlm_folder):
    """JPEG Lossless (process 14) is how most PACS exports compress CT and MR; Pillow cannot read
    it, python-gdcm (a dependency) can. A compression nothing installed reads is named in one line."""
    import gdcm
    import pydicom
    from pydicom.data import get_testdata_file

    source = get_testdata_file("CT_small.dcm")
    reader = gdcm.ImageReader()
    reader.SetFileName(source)
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(tmp_path / "ct_lossless.dcm"))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    assert "Lossless" in pydicom.dcmread(tmp_path / "ct_lossless.dcm").file_meta.TransferSyntaxUID.name
    assert np.array_equal(io.read_image(tmp_path / "ct_lossless.dcm").slice, io.read_image(source).slice)

    extended = get_testdata_file("JPGExtended.dcm")  # 12-bit JPEG Extended: neither Pillow nor GDCM reads it
    try:
        pydicom.dcmread(extended).pixel_array
        pytest.skip("a decoder for 12-bit JPEG Extended is installed here")
    except RuntimeError:
        pass
    code, _, err = run_cli(capsys, "segment", extended, "--query", "q", "--model", tiny_vlm_folder)
    assert code == 2 and err.strip().count("\n") == 0
    assert "JPGExtended.dcm: its pixels are stored as 'JPEG Extended (Process 2 and 4)', which no installed decoder reads" in err


def test_one_vertebra_is_propagated_only_as_far_as_a_vertebra_reaches(tmp_path, capsys, tiny_vlm_folder):
    """Asked for the L3 vertebra on a spine that looks the same from end to end, the CLI stops
    35 mm each side of the slice it starts on (the file's 3 mm slices) and says why."""
    import nibabel as nib

    volume = np.full((64, 64, 40), 40, dtype=np.int16)  # x, y, z as the file stores it
    xx, yy = np.mgrid[:64, :64]
    volume[(xx - 32) ** 2 + (yy - 32) ** 2 < 12 ** 2, :] = 220
    nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 3.0, 1.0])), tmp_path / "spine.nii.gz")
    np.save(tmp_path / "start.npy", (volume[:, :, 20] > 100).T)
    out = tmp_path / "l3.nii.gz"
    code, stdout, err = run_cli(capsys, "segment", tmp_path / "spine.nii.gz", "--query", "segment the L3 vertebra",
                                "--slice", 20, "--init-mask", tmp_path / "start.npy", "--model", tiny_vlm_folder,
                                "--segmenter", "classical", "--max-steps", "0", "--propagate", "both", "--out", out)
    assert code == 0, err
    assert "slice 32: 0 px (a vertebra reaches no more than 35 mm from the slice it started on)" in stdout
    written = np.asarray(nib.load(out).dataobj) > 0
    occupied = np.nonzero(written.any(axis=(0, 1)))[0]
    assert (occupied.min(), occupied.max()) == (9, 31)
    stops = {s["slice"]: s["stopped"] for s in json.loads(io.trace_path(out).read_text())["propagation"]["slices"]
             if s["stopped"]}
    assert set(stops) == {8, 32}
