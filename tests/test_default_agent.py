"""The bundled agents: present, loadable offline; the pointer agent (v8) is the default of the CLI
and the widget once its encoders are fetched, the small VLM (v7) otherwise."""

import json

import numpy as np
from PIL import Image

from napari_ibis.cli import main
from napari_ibis.phantoms import phantom
from napari_ibis.policies import default_model_folder, load_policy


def test_the_bundled_agents_are_small_documented_and_load_offline():
    from napari_ibis._resources import resource_path

    v7, v8 = resource_path("models", "default"), resource_path("models", "pointer")
    for folder in (v7, v8):
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        assert size < 30 * 2**20  # small enough for the repository
        assert (folder / "MODEL_CARD.md").is_file()
    card = json.loads((v7 / "model_card.json").read_text())
    assert {"sft", "grpo", "evaluation"} <= card.keys()
    assert load_policy(v7).identity()["model_type"] == "qwen3_vl"
    assert load_policy(v8).identity()["model_type"] == "ibis_pointer"


def test_the_pointer_agent_is_the_default_once_its_encoders_are_fetched(monkeypatch):
    from napari_ibis import assets

    fetched = all(assets.available(n) for n in ("mobile_sam", "minilm"))
    assert default_model_folder().name == ("pointer" if fetched else "default")
    monkeypatch.setattr(assets, "available", lambda name: False)
    assert default_model_folder().name == "default"  # a plain pip install without the set-up's fetch


def test_segment_uses_the_bundled_agent_when_no_model_is_given(tmp_path, capsys):
    example = phantom(90001)
    Image.fromarray(example.image).save(tmp_path / "phantom.png")
    target = max(example.masks, key=lambda name: example.masks[name].sum())
    code = main(["segment", str(tmp_path / "phantom.png"), "--query", f"segment the {target}", "--segmenter",
                 "classical", "--max-steps", "3", "--out", str(tmp_path / "out.tif")])
    assert code == 0
    trace = json.loads((tmp_path / "out.ibis.json").read_text())  # written next to --out
    assert trace["policy"]["folder"] == str(default_model_folder())
    assert trace["steps"] and all(step["output"].startswith("<think>") for step in trace["steps"])
    assert np.asarray(Image.open(tmp_path / "out.tif")).shape == example.image.shape


def test_the_default_agent_sees_a_real_ct_slice_padded_outside_its_field_of_view_as_without(tmp_path):
    """TotalSegmentator's held-out CT series, its outside set to -3024 as many scanners write it:
    the spleen is found as on the original (IoU 0.91 before and after; 0.00 when the padding
    counted in the window)."""
    from scipy import ndimage

    from napari_ibis import assets, io
    from napari_ibis.metrics import iou
    from napari_ibis.segmenters import build_segmenter
    from napari_ibis.session import Session

    reference = assets.path("totalsegmentator", "tests/reference_files")
    ct = io.read_image(reference / "example_ct_dicom").data[6]
    spleen = io.read_image(reference / "example_seg_dicom.nii.gz").data[6] == 1
    labels, _ = ndimage.label(ct == ct.min())  # the outside of the round field of view: at the minimum, on the border
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    ct = np.where(np.isin(labels, border[border > 0]), -3024.0, ct.astype(np.float32))
    session = Session(ct, "segment the spleen", load_policy(default_model_folder()),
                      build_segmenter("mobilesam"), max_steps=8)
    for _ in session.run():
        pass
    assert iou(session.mask, spleen) > 0.8
