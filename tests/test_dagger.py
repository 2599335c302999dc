"""DAgger data: the click simulator's decision on the states a model reaches itself."""

import json

import numpy as np
import pytest

from napari_ibis.cli import main
from napari_ibis.protocol import get_profile
from tests.conftest import disk_image
from training.data.sources import Sample
from training.data.storage import read_dataset
from training.rl.dagger import decision_sample, expert_move, visited_states
from training.rl.rollout import Rollout, RolloutTurn


def _sample(present: bool = True) -> Sample:
    image, mask = disk_image()
    return Sample(image, mask if present else np.zeros_like(mask), "liver", "CT", "test:disk", "test")


def test_the_expert_clicks_into_what_the_mask_missed_or_wrongly_holds():
    sample = _sample()
    half = sample.mask.copy()
    half[:, 52:] = False  # the right half of the disk is missing
    move = expert_move(sample, half, np.random.default_rng(0))
    assert move.click.positive and sample.mask[move.click.row, move.click.col] and not half[move.click.row, move.click.col]

    spill = sample.mask.copy()
    spill[5:25, 5:25] = True  # a square outside the disk is wrongly in
    move = expert_move(sample, spill, np.random.default_rng(0))
    assert not move.click.positive and not sample.mask[move.click.row, move.click.col] and spill[move.click.row, move.click.col]


def test_the_expert_stops_at_the_stop_iou_and_says_absent_only_on_an_empty_mask():
    sample = _sample()
    assert expert_move(sample, sample.mask, np.random.default_rng(0), stop_iou=0.8).keyword == "terminate"
    nearly = sample.mask.copy()
    nearly[40, 38:66] = False  # one row off: IoU above 0.8, below 1
    assert expert_move(sample, nearly, np.random.default_rng(0), stop_iou=0.8).keyword == "terminate"
    assert expert_move(sample, nearly, np.random.default_rng(0), stop_iou=0.999).click is not None

    absent = _sample(present=False)
    assert expert_move(absent, absent.mask, np.random.default_rng(0)).keyword == "not_present"
    assert expert_move(absent, _sample().mask, np.random.default_rng(0)) is None


def test_a_state_seen_again_after_a_click_that_changed_nothing_is_labelled_once():
    empty, some = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    some[2:4, 2:4] = True
    turns = [RolloutTurn([], "", mask) for mask in (empty, some, some, some.copy())]
    episode = Rollout(_sample(), "q", "ibis-release", turns, "repeated", some, False, 0.0)
    states = visited_states(episode)
    assert [first for _, first in states] == [True, False]
    assert np.array_equal(states[1][0], some)


def test_a_decision_sample_shows_the_mask_asks_to_refine_and_answers_with_the_experts_click():
    sample = _sample()
    profile = get_profile("ibis-release")
    half = sample.mask.copy()
    half[:, 52:] = False
    move = expert_move(sample, half, np.random.default_rng(0))
    rendered = decision_sample(sample, "segment the liver", move, first=False, answer="The liver.")
    roles = [m["role"] for m in rendered.messages]
    assert roles == ["system", "user", "assistant"] and rendered.trained == [True]
    user = rendered.messages[1]["content"]
    shown = next(c["image"] for c in user if c["type"] == "image")
    assert np.array_equal(shown, profile.observation(np.stack([sample.image] * 3, -1), half))
    asked = next(c["text"] for c in user if c["type"] == "text")
    assert asked == profile.user_text("segment the liver", first=False)
    reply = profile.parse(rendered.messages[2]["content"][0]["text"])
    row, col = profile.to_pixel(reply.actions[0], *sample.mask.shape)
    assert reply.actions[0].positive and abs(row - move.click.row) <= 1 and abs(col - move.click.col) <= 1
    assert rendered.target_mask[move.click.row, move.click.col] and not rendered.target_mask[half].any()


@pytest.mark.slow
def test_dagger_build_labels_a_models_own_states_resumes_and_feeds_sft_with_other_folders(tmp_path, tiny_vlm_folder):
    config = {"output": str(tmp_path / "dagger"), "model": str(tiny_vlm_folder), "seeds": [0, 1], "max_steps": 2,
              "absent_probability": 0.0}
    (tmp_path / "dagger.json").write_text(json.dumps(config))
    assert main(["data", "dagger", str(tmp_path / "dagger.json")]) == 0
    lines = (tmp_path / "dagger" / "samples.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert rows and {r["kind"] for r in rows} == {"dagger"}
    assert all(r["model"] == str(tiny_vlm_folder) for r in rows)
    firsts = [r for r in rows if r["id"].endswith(":0")]
    assert len(firsts) == len({r["source"] for r in rows}) and all(r["state_iou"] == 0.0 for r in firsts)
    profile = get_profile("ibis-release")
    for sample in read_dataset(tmp_path / "dagger"):
        profile.parse(sample.messages[-1]["content"][0]["text"])  # every expert reply is well formed
    assert main(["data", "dagger", str(tmp_path / "dagger.json")]) == 0  # resumes: nothing twice
    assert (tmp_path / "dagger" / "samples.jsonl").read_text().splitlines() == lines

    sft = {"model": str(tiny_vlm_folder), "output": str(tmp_path / "model"), "steps": 2, "log_every": 0,
           "data": [str(tmp_path / "dagger"), str(tmp_path / "dagger")]}
    (tmp_path / "sft.json").write_text(json.dumps(sft))
    assert main(["sft", str(tmp_path / "sft.json")]) == 0
    card = json.loads((tmp_path / "model" / "training_card.json").read_text())
    assert card["samples"] == 2 * len(lines)
