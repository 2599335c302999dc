import asyncio

import numpy as np
import pytest
from conftest import TERMINATE, disk_image, point
from PIL import Image

from napari_ibis.segmenters import build_segmenter
from training.integrations.verl_loop import IbisEnvironment, compute_score, run_episode

CLICK = point(True, 34.5 / 64, 30.5 / 64)


class FakeGenerationServer:
    """Stands in for verl's server manager: answers each call with the next scripted reply's token ids."""

    def __init__(self, processor, replies):
        self.processor, self.replies, self.calls = processor, list(replies), []

    async def generate(self, request_id, prompt_ids, sampling_params, images):
        self.calls.append({"prompt_ids": list(prompt_ids), "images": len(images)})
        reply = self.replies[len(self.calls) - 1]
        ids = self.processor.tokenizer(reply, add_special_tokens=False)["input_ids"]
        return ids + [self.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]


@pytest.fixture(scope="module")
def processor(tiny_vlm_folder):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_vlm_folder)


def test_the_agent_loop_masks_observations_and_returns_every_image(processor):
    image, truth = disk_image(64, centre=(30, 34), radius=12)
    env = IbisEnvironment(image, truth, "segment the disk", build_segmenter("classical"), profile="paper")
    paper_click = CLICK.replace("Positive Point (0.5391, 0.4766)", "(disk, positive, (539, 477))")
    server = FakeGenerationServer(processor, [paper_click, TERMINATE.replace("Terminate", "End")])
    out = asyncio.run(run_episode(server.generate, processor, env, {"temperature": 1.0}, max_turns=4))
    assert out["num_turns"] == 4 and len(out["multi_modal_data"]["images"]) == 2
    assert [c["images"] for c in server.calls] == [1, 2]
    ids, mask = np.array(out["response_ids"]), np.array(out["response_mask"])
    assert len(ids) == len(mask)
    # the model's tokens are trained, the observation between them is not
    trained = processor.tokenizer.decode(ids[mask == 1])
    assert "(disk, positive, (539, 477))" in trained and "End" in trained
    observation = processor.tokenizer.decode(ids[mask == 0])
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert "<|im_start|>user" in observation and (ids[mask == 1] != image_token).all()
    assert (ids[mask == 0] == image_token).sum() > 0
    # the second call saw exactly the tokens that the processor makes of the whole conversation so far
    from training.integrations.verl_loop import token_ids

    first, second = (np.asarray(i) for i in out["multi_modal_data"]["images"])
    fresh = IbisEnvironment(image, truth, "segment the disk", build_segmenter("classical"), profile="paper")
    conversation = fresh.first_messages() + [
        {"role": "assistant", "content": [{"type": "text", "text": paper_click}]},
        {"role": "user", "content": [{"type": "image", "image": second},
                                     {"type": "text", "text": fresh.observation_turn()["content"][-1]["text"]}]},
    ]
    assert np.array_equal(conversation[1]["content"][0]["image"], first)
    assert server.calls[1]["prompt_ids"] == token_ids(processor, conversation, generation_prompt=True)
    # rewards and the mask came from the same environment
    assert out["extra_fields"]["final_iou"] > 0.8
    assert out["extra_fields"]["reward_terms"]["placement"] == 0.5 and out["reward_score"] > 0.5


def test_the_reward_function_scores_one_decision_from_files(tmp_path):
    image, truth = disk_image(64, centre=(30, 34), radius=12)
    Image.fromarray(image).save(tmp_path / "image.png")
    Image.fromarray(truth.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    info = {"image": str(tmp_path / "image.png"), "mask": str(tmp_path / "mask.png"), "clicks": [], "step": 1}
    good = compute_score("ibis", CLICK, None, info)
    assert good["placement"] == 1.0 and good["progress"] == 1.0 and good["format"] == 1.0
    wrong = compute_score("ibis", point(False, 0.05, 0.05), None, info)
    assert wrong["placement"] == -1.0 and wrong["score"] < good["score"]
    assert compute_score("ibis", "gibberish", None, info)["score"] == 0.0


def test_the_verl_agent_loop_registers_when_verl_is_installed():
    verl = pytest.importorskip("verl")
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry

    assert verl and "ibis_agent" in _agent_loop_registry


def test_verl_parquet_rows_point_at_real_files_and_the_agent_loop(tmp_path):
    datasets = pytest.importorskip("datasets")
    from training.data.sources import phantom_samples
    from training.integrations.verl_loop import write_verl_dataset

    samples = list(phantom_samples([0, 1]))
    path = write_verl_dataset(samples, tmp_path, "train")
    table = datasets.load_dataset("parquet", data_files=path, split="train")
    assert len(table) == len(samples) and set(table["agent_name"]) == {"ibis_agent"}
    row = table[0]
    assert row["prompt"][1]["content"].startswith("<image>") and samples[0].target in row["extra_info"]["query"]
    mask = np.asarray(Image.open(row["extra_info"]["mask"])) > 127
    assert np.array_equal(mask, samples[0].mask)


def test_verl_can_load_the_reward_file_by_its_path():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "training" / "integrations" / "verl_reward.py"
    spec = importlib.util.spec_from_file_location("custom_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # as verl's load_extern_type does
    assert callable(module.compute_score)
