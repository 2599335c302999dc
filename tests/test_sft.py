import itertools
from pathlib import Path

import numpy as np
import pytest

from napari_ibis.segmenters import build_segmenter
from training.data.sources import phantom_samples
from training.data.trajectories import self_correction, simulate
from training.samples import render
from training.sft.encoding import encode
from training.sft.train import SFTConfig, train


@pytest.fixture(scope="module")
def trajectories():
    segmenter = build_segmenter("classical")
    rng = np.random.default_rng(0)
    samples = [s for s in phantom_samples(range(3)) if s.target in ("liver", "left lung", "left ventricle")]
    normal = [simulate(s, segmenter, rng, stop_iou=0.85, max_steps=4) for s in samples]
    corrected = None
    for _ in range(6):
        corrected = self_correction(samples[0], segmenter, rng, stop_iou=0.85, max_steps=4)
        if corrected:
            break
    assert corrected is not None
    return normal, corrected


def test_only_the_assistant_tokens_of_correct_moves_are_trained(tiny_vlm_folder, trajectories):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vlm_folder, local_files_only=True)
    _, corrected = trajectories
    (sample,) = render(corrected, "paper")  # history on: one multi-turn, multi-image sample
    assert sum(m["role"] == "assistant" for m in sample.messages) == len(corrected.moves)
    encoded = encode(processor, sample)
    ids, labels = encoded["input_ids"][0].numpy(), encoded["labels"]
    trained_text = processor.tokenizer.decode(ids[labels != -100])
    replies = [m["content"][0]["text"] for m in sample.messages if m["role"] == "assistant"]
    expected = "".join(reply + "<|im_end|>" for reply, keep in zip(replies, sample.trained) if keep)
    assert trained_text == expected
    wrong = [reply for reply, keep in zip(replies, sample.trained) if not keep]
    assert len(wrong) == 1 and wrong[0] not in trained_text
    # every image has its image tokens, and the grids line up with them
    grids = encoded["image_grid_thw"]
    assert grids.shape[0] == len(corrected.moves)
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((ids == image_token).sum()) == int(grids.prod(dim=1).sum()) // 4
    assert (labels[ids == image_token] == -100).all()


def test_release_rendering_is_one_sample_per_move_and_skips_undo(trajectories):
    normal, corrected = trajectories
    rendered = render(normal[0], "ibis-release")
    assert len(rendered) == len(normal[0].moves)
    assert all([m["role"] for m in s.messages] == ["system", "user", "assistant"] for s in rendered)
    assert rendered[0].messages[1]["content"][1]["text"].startswith("<image>")
    assert "refinement step" in rendered[1].messages[1]["content"][1]["text"]
    assert render(corrected, "ibis-release") == []


@pytest.mark.slow
def test_a_short_sft_run_lowers_the_loss_and_the_model_loads_as_a_policy(tiny_vlm_folder, trajectories, tmp_path):
    from napari_ibis.policies.vlm import VLMPolicy
    from napari_ibis.session import Session, Stopped
    from training.sft.train import render_all

    normal, _ = trajectories
    samples = render_all(normal, "ibis-release")
    config = SFTConfig(model=str(tiny_vlm_folder), output=str(tmp_path / "sft"), steps=30, learning_rate=2e-3, log_every=0)
    record = train(config, samples)
    first, last = np.mean(record["losses"][:5]), np.mean(record["losses"][-5:])
    assert last < first * 0.7, (first, last)
    policy = VLMPolicy(tmp_path / "sft", max_new_tokens=80)
    sample = normal[0].sample
    session = Session(sample.image, normal[0].query, policy, build_segmenter("classical"), max_steps=3)
    events = list(session.run())
    assert isinstance(events[-1], Stopped)
    assert (tmp_path / "sft" / "training_card.json").is_file()


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    from training.data.storage import build_dataset

    return build_dataset({"output": str(tmp_path_factory.mktemp("data") / "data"), "seeds": [0, 2], "max_steps": 2,
                  "stop_iou": 0.8, "min_dice": 0.0})


def test_lora_trains_only_the_language_model_and_saves_a_merged_folder(tiny_vlm_folder, small_dataset, tmp_path):
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from napari_ibis.policies.vlm import VLMPolicy
    from training.data.storage import read_dataset

    config = SFTConfig(model=str(tiny_vlm_folder), output=str(tmp_path / "lora"), steps=4, learning_rate=5e-3,
                       log_every=0, lora={"r": 4, "lora_alpha": 8, "lora_dropout": 0.0})
    record = train(config, read_dataset(small_dataset))
    before = Qwen3VLForConditionalGeneration.from_pretrained(tiny_vlm_folder).state_dict()
    after = VLMPolicy(tmp_path / "lora", device="cpu").model.state_dict()  # merged: loads like any model folder
    assert before.keys() == after.keys()
    # on CUDA LoRA trains and saves in bf16 (training.checkpoints): compare in the dtype it trained in
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    changed = {k for k in before if not torch.equal(before[k].to(dtype), after[k].to(dtype))}
    assert changed and all("language_model" in k and k.endswith("proj.weight") for k in changed)
    assert not any("visual" in k for k in changed)
    assert record["trainable_parameters"] < sum(v.numel() for v in before.values()) / 10


def test_a_model_goes_on_at_a_larger_image_size_with_four_times_the_image_tokens(tiny_vlm_folder, small_dataset, tmp_path):
    from napari_ibis.errors import InputError
    from napari_ibis.policies.vlm import VLMPolicy
    from training.data.storage import read_dataset

    def image_tokens(folder) -> int:
        policy = VLMPolicy(folder, device="cpu")
        grey = np.zeros((128, 128, 3), np.uint8)
        inputs = policy.encode([{"role": "user", "content": [{"type": "image", "image": grey}, {"type": "text", "text": "segment the liver"}]}])
        return int((inputs["input_ids"] == policy.model.config.image_token_id).sum())

    config = SFTConfig(model=str(tiny_vlm_folder), output=str(tmp_path / "finer"), steps=2, log_every=0, image_size=224)
    train(config, read_dataset(small_dataset))
    assert image_tokens(tmp_path / "finer") == 4 * image_tokens(tiny_vlm_folder) == 4 * 49  # 8 instead of 16 pixels a token
    with pytest.raises(InputError, match="multiple of 16"):
        train(SFTConfig(model=str(tiny_vlm_folder), output=str(tmp_path / "odd"), steps=1, image_size=100), read_dataset(small_dataset))


@pytest.mark.slow
def test_two_cpu_processes_train_together(tiny_vlm_folder, small_dataset, tmp_path):
    from conftest import run_on_two_processes

    config = {"model": str(tiny_vlm_folder), "output": str(tmp_path / "ddp"), "data": str(small_dataset), "steps": 3,
              "batch_size": 1, "log_every": 1}
    card = run_on_two_processes("training.sft.train", config, tmp_path)
    assert card["processes"] == 2 and len(card["losses"]) == 3
    assert (tmp_path / "ddp" / "model.safetensors").is_file()


def test_the_small_tokenizer_writes_numbers_one_digit_per_token():
    from training.sft.tiny import build_tokenizer

    tokenizer = build_tokenizer(["Positive Point (0.6680, 0.1680)"] * 50, vocab_size=300)
    pieces = [tokenizer.decode([i]) for i in tokenizer("(0.6680, 0.1680)")["input_ids"]]
    assert all(len(piece.strip()) == 1 for piece in pieces if piece.strip().isdigit() or any(c.isdigit() for c in piece))
    assert "".join(pieces) == "(0.6680, 0.1680)"


@pytest.mark.slow
def test_a_resumed_run_keeps_the_losses_evaluations_and_time_of_its_first_part(tiny_vlm_folder, small_dataset, tmp_path):
    from training.data.storage import read_dataset

    samples = read_dataset(small_dataset)
    common = dict(model=str(tiny_vlm_folder), output=str(tmp_path / "sft"), batch_size=2, save_every=2,
                  eval_every=2, eval_seeds=[90000, 90001], log_every=0, resume=True)
    first = train(SFTConfig(steps=2, **common), samples)
    whole = train(SFTConfig(steps=4, **common), samples)  # goes on from the checkpoint at step 2
    assert whole["losses"][:2] == first["losses"] and len(whole["losses"]) == 4
    assert [e["step"] for e in whole["first_click_evaluations"]] == [2, 4]
    assert whole["seconds"] > first["seconds"]


def test_the_target_map_marks_the_image_tokens_the_named_structure_covers(tiny_vlm_folder, trajectories):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vlm_folder, local_files_only=True)
    normal, _ = trajectories
    sample = render(normal[0], "ibis-release")[0]
    encoded = encode(processor, sample)
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    values = encoded["target_map"]
    assert values.shape == ((encoded["input_ids"][0] == image_token).sum().item(),)
    rows, cols = (int(v) // 2 for v in encoded["image_grid_thw"][0][1:])
    peak_row, peak_col = np.unravel_index(values.argmax(), (rows, cols))
    mask = normal[0].sample.mask  # the token most covered lies where the mask is
    assert mask[int((peak_row + 0.5) * mask.shape[0] / rows), int((peak_col + 0.5) * mask.shape[1] / cols)]


def test_a_refinement_decision_looks_at_the_error_its_click_goes_into(trajectories):
    normal, _ = trajectories
    trajectory = next(t for t in normal if sum(m.click is not None for m in t.moves) >= 2)
    samples = render(trajectory, "ibis-release")
    truth = trajectory.sample.mask
    assert np.array_equal(samples[0].target_mask, truth)  # the first click: the whole structure
    for sample, move in zip(samples[1:], trajectory.moves[1:]):
        if move.click is None:  # Terminate judges the whole structure
            assert np.array_equal(sample.target_mask, truth)
            continue
        focus, before = sample.target_mask, move.mask_before
        assert focus[move.click.row, move.click.col]  # the click lies in it
        wrong = truth & ~before if move.click.positive else before & ~truth
        assert focus.any() and not (focus & ~wrong).any()  # and it holds only what the mask got wrong


def test_a_later_stage_starts_from_the_target_map_heads_of_an_earlier_one(tiny_vlm_folder, small_dataset, tmp_path):
    import torch

    from training.data.storage import read_dataset

    samples = read_dataset(small_dataset)
    terms = dict(target_map_weight=1.0, target_position_weight=1.0, log_every=0, batch_size=1, learning_rate=1e-3)
    first = SFTConfig(model=str(tiny_vlm_folder), output=str(tmp_path / "one"), steps=4, save_every=4, **terms)
    train(first, samples)
    taught = torch.load(tmp_path / "one" / "checkpoint" / "trainer_state.pt", weights_only=True)
    second = SFTConfig(model=str(tmp_path / "one"), output=str(tmp_path / "two"), steps=1, save_every=1, learning_rate=0.0,
                       target_heads_from=str(tmp_path / "one" / "checkpoint"),
                       **{k: v for k, v in terms.items() if k != "learning_rate"})
    lines = []
    train(second, samples, log=lines.append)
    assert any("target_map, target_position" in line for line in lines)
    kept = torch.load(tmp_path / "two" / "checkpoint" / "trainer_state.pt", weights_only=True)
    for name in ("target_map_head", "target_position_head"):  # learning rate 0: the heads are those of stage one
        for key, value in taught[name].items():
            assert torch.equal(kept[name][key], value), (name, key)


@pytest.mark.slow
def test_the_target_map_losses_train_a_head_and_an_attention_head_and_save_an_ordinary_model(tiny_vlm_folder, small_dataset, tmp_path):
    from transformers import Qwen3VLForConditionalGeneration

    from training.data.storage import read_dataset

    samples = read_dataset(small_dataset)
    assert all(s.target_mask is not None for s in samples)  # the dataset folder keeps each sample's target mask
    config = SFTConfig(model=str(tiny_vlm_folder), output=str(tmp_path / "sft"), steps=30, batch_size=2,
                       learning_rate=1e-3, log_every=0, target_map_weight=1.0, target_attention_weight=1.0, target_position_weight=1.0, save_every=30,
                       token_position_weight=1.0, target_attention_all_keys=True, eval_every=30, eval_seeds=[90000, 90001])
    record = train(config, samples)
    (evaluation,) = record["first_click_evaluations"]
    assert "map_peak_hit_rate" in evaluation  # the probe ran: does the model see the target, whatever it clicks?
    # the head learns the map, head 0 of layer 3 to look at it (and what it reads to hold each token's place),
    # the answer to carry where it is
    for name in ("target_map_losses", "target_attention_losses", "target_position_losses", "token_position_losses"):
        first, last = np.mean(record[name][:5]), np.mean(record[name][-5:])
        assert last < first * 0.9, (name, first, last)
    before = Qwen3VLForConditionalGeneration.from_pretrained(tiny_vlm_folder).state_dict()
    after = Qwen3VLForConditionalGeneration.from_pretrained(tmp_path / "sft").state_dict()
    assert before.keys() == after.keys()  # an ordinary model folder
    import torch

    state = torch.load(tmp_path / "sft" / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert {"target_map_head", "target_position_head", "token_position_head"} <= state.keys()  # a resumed run goes on with the same heads


CONFIG_FOLDERS = [Path(__file__).parents[1] / "training" / name for name in ("configs", "experiments")]


@pytest.mark.parametrize("path", sorted(p for folder in CONFIG_FOLDERS for p in folder.glob("sft-*.yaml")), ids=lambda p: p.name)
def test_every_sft_config_in_the_repository_reads_into_its_settings(path):
    from training.config import read_config

    config = SFTConfig(**read_config(path))  # a misspelt key fails here
    assert config.steps > 0 and config.output


def test_replay_mixes_a_fixed_draw_of_an_earlier_stages_samples_into_the_data(small_dataset, tmp_path):
    from training.data.storage import read_dataset
    from training.sft.train import replayed

    def key(sample):  # a sample's texts and the bytes of its images
        items = [item for message in sample.messages for item in message["content"]]
        return repr([item["text"] if item["type"] == "text" else np.asarray(item["image"]).tobytes() for item in items])

    pool = {key(s) for s in read_dataset(small_dataset)}
    config = SFTConfig(model="m", output="o", replay_data=str(small_dataset), replay_samples=3, seed=1)
    drawn = [key(s) for s in replayed(config)]
    assert len(set(drawn)) == 3 and set(drawn) <= pool  # three distinct samples of that folder
    assert [key(s) for s in replayed(config)] == drawn  # the same draw on a rerun (resume)
    assert len(replayed(SFTConfig(model="m", output="o", replay_data=str(small_dataset)))) == len(pool)
    assert replayed(SFTConfig(model="m", output="o")) == []


def test_streamed_first_decisions_give_every_lane_its_own_phantoms_and_never_a_held_out_one():
    from training.sft.stream import StreamConfig, rendered_first_moves

    config = StreamConfig(start_seed=100_000)

    def images(lane, lanes=2, count=12):
        drawn = list(itertools.islice(rendered_first_moves(config, "ibis-release", lane, lanes), count))
        assert all("<image>" in s.messages[1]["content"][-1]["text"] for s in drawn)  # full first-decision questions
        return {np.asarray(s.messages[1]["content"][0]["image"]).tobytes() for s in drawn}

    lane0, lane1 = images(0), images(1)
    assert lane0 and lane1 and not lane0 & lane1  # two lanes (processes or workers) never share a phantom
    assert len(images(0, 1, 40)) >= 10  # one lane walks through new phantoms
    with pytest.raises(ValueError, match="held-out"):
        StreamConfig(start_seed=90_000)


def test_a_streamed_grounding_run_trains_on_new_phantoms_and_hands_its_heads_to_the_next_stage(tiny_vlm_folder, small_dataset, tmp_path):
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from training.data.storage import read_dataset
    from training.sft.train import HEADS_FILE

    terms = dict(target_map_weight=1.0, target_position_weight=1.0, log_every=0, batch_size=2)
    config = SFTConfig(model=str(tiny_vlm_folder), output=str(tmp_path / "stream"), steps=3, learning_rate=1e-3,
                       stream={"start_seed": 200_000, "workers": 2, "shuffle_buffer": 4}, **terms)
    record = train(config, [])
    assert record["samples"] == "streamed: 6 new first decisions"
    before = Qwen3VLForConditionalGeneration.from_pretrained(tiny_vlm_folder).state_dict()
    after = Qwen3VLForConditionalGeneration.from_pretrained(tmp_path / "stream").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    taught = torch.load(tmp_path / "stream" / HEADS_FILE, weights_only=True)
    nxt = SFTConfig(model=str(tmp_path / "stream"), output=str(tmp_path / "next"), steps=1, save_every=1, learning_rate=0.0,
                    target_heads_from=str(tmp_path / "stream"), **terms)
    train(nxt, read_dataset(small_dataset))
    kept = torch.load(tmp_path / "next" / "checkpoint" / "trainer_state.pt", weights_only=True)
    for key, value in taught["target_map_head"].items():  # learning rate 0: the heads are the streamed run's
        assert torch.equal(kept["target_map_head"][key], value)
