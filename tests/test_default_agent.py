"""The bundled default agent: present, loadable offline, the default of the CLI and the widget."""

import json

import numpy as np
from PIL import Image

from napari_ibis.cli import main
from napari_ibis.phantoms import phantom
from napari_ibis.policies import default_model_folder, load_policy


def test_the_bundled_agent_is_small_documented_and_loads_offline():
    folder = default_model_folder()
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    assert size < 30 * 2**20  # small enough for the repository
    card = json.loads((folder / "model_card.json").read_text())
    assert {"sft", "grpo", "evaluation"} <= card.keys()
    assert (folder / "MODEL_CARD.md").is_file()
    assert load_policy(None).identity()["model_type"] == "qwen3_vl"


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
