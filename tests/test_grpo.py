import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TERMINATE, ScriptedPolicy, disk_image, point, run_on_two_processes

from napari_ibis.segmenters import build_segmenter
from training.data.sources import Sample
from training.rl.grpo import GRPOConfig, group_advantages, policy_loss, score, token_log_probs, train
from training.rl.rewards import RewardConfig
from training.rl.rollout import episode_samples, rollout
from training.sft.encoding import collate, encode


def keep_logit_gradients(model) -> dict:
    """After the next forward and backward pass, ``["logits"].grad`` holds the loss's gradient on the logits."""
    captured = {}

    def keep(module, args, out):
        out.retain_grad()
        captured["logits"] = out

    model.lm_head.register_forward_hook(keep)
    return captured


def disk_sample():
    image, mask = disk_image(64, centre=(30, 34), radius=12)
    return Sample(image, mask, "disk", "CT", "test:disk", "disk")


def test_group_advantages_are_normalised_and_vanish_for_equal_rewards():
    assert not group_advantages([0.4, 0.4, 0.4, 0.4]).any()
    advantages = group_advantages([0.0, 1.0, 0.5, 0.5])
    assert advantages.mean() == pytest.approx(0) and advantages.std() == pytest.approx(1, rel=1e-4)
    assert advantages[1] > advantages[2] > advantages[0]


def test_a_rollout_goes_through_the_session_and_is_scored_per_turn():
    sample = disk_sample()
    policy = ScriptedPolicy([point(True, 34.5 / 64, 30.5 / 64), TERMINATE.replace("Terminate", "Termination")])
    episode = rollout(policy, sample, "segment the disk", build_segmenter("classical"), max_turns=4)
    assert [len(t.clicks) for t in episode.turns] == [1, 0] and episode.stop_reason == "answered"
    assert episode.turns[0].clicks[0] == (30, 34, True) and not episode.turns[0].mask_before.any()
    assert np.array_equal(episode.turns[1].mask_before, episode.turns[0].mask_after)
    assert episode.final_iou > 0.8
    terms = score(episode, RewardConfig())
    assert terms["format"] == 1.0 and terms["answer"] == 3.0 and terms["placement"] == 0.5  # one click in two turns
    assert terms["length"] == 1.0


def test_decision_questions_can_start_from_the_masks_the_model_reaches_itself():
    from training.rl.grpo import Questions

    config = GRPOConfig(model="m", output="o", mode="decision", seeds=[0, 1], state_source="policy", max_turns=4)
    questions = Questions(config, build_segmenter("classical"), rank=0)
    questions.samples = [disk_sample()]
    questions.greedy = ScriptedPolicy([point(True, 34.5 / 64, 30.5 / 64)])  # clicks inside the disk
    sample, query, state = questions.next()
    assert questions.greedy.calls >= 1 and query
    assert state is not None and np.logical_and(state, sample.mask).sum() / np.logical_or(state, sample.mask).sum() > 0.8
    questions.greedy = ScriptedPolicy([TERMINATE])  # answers on the empty mask: the question starts fresh
    assert questions.next()[2] is None
    with pytest.raises(ValueError, match="state_source"):
        Questions(GRPOConfig(model="m", output="o", seeds=[0, 1], state_source="oracle"), build_segmenter("classical"), 0)


def test_a_question_pool_asks_the_same_questions_in_turn_from_the_starting_models_masks():
    from training.rl.grpo import Questions

    config = GRPOConfig(model="m", output="o", mode="decision", seeds=[0, 6], state_source="policy", max_turns=4,
                        question_pool=3)
    questions = Questions(config, build_segmenter("classical"), rank=0)
    questions.greedy = ScriptedPolicy([point(True, 0.5, 0.5)])
    first_round = [questions.next() for _ in range(3)]
    calls = questions.greedy.calls
    questions.greedy = ScriptedPolicy([TERMINATE])  # a later model: the pool keeps the first model's masks
    for _ in range(2):
        for (sample, query, state), again in zip(first_round, [questions.next() for _ in range(3)]):
            assert again[0] is sample and again[1] == query and again[2] is state
    assert calls >= 1 and questions.greedy.calls == 0
    with pytest.raises(ValueError, match="question_pool"):
        GRPOConfig(model="m", output="o", question_pool=-1)


def test_training_clicks_compares_and_trains_only_the_replies_that_click():
    from training.rl.grpo import trained_rollouts

    sample, segmenter = disk_sample(), build_segmenter("classical")
    replies = [point(True, 34.5 / 64, 30.5 / 64), point(True, 5 / 64, 5 / 64), TERMINATE, "no action here"]
    group = []
    for reply in replies:
        episode = rollout(ScriptedPolicy([reply]), sample, "segment the disk", segmenter, max_turns=1)
        group.append((episode, score(episode, RewardConfig(), "decision")))
    kept, advantages = trained_rollouts(group, "clicks")
    assert kept == [0, 1, 3]  # the answer is neither trained nor part of the baseline
    assert advantages[0] > 0 > advantages[1] and advantages.mean() == pytest.approx(0, abs=1e-9)
    kept, advantages = trained_rollouts(group, "reply")
    assert kept == [0, 1, 2, 3] and len(advantages) == 4
    kept, advantages = trained_rollouts(group[2:3], "clicks")
    assert kept == [] and advantages.size == 0  # a group that only answers teaches nothing
    with pytest.raises(ValueError, match="decision"):
        GRPOConfig(model="m", output="o", trained_tokens="clicks", mode="trajectory")


def test_a_continued_decision_is_paid_the_answer_where_the_greedy_model_ends_and_only_it_is_trained():
    from training.rl.rollout import FirstTurnThen, first_turn

    sample, segmenter = disk_sample(), build_segmenter("classical")
    click = point(True, 34.5 / 64, 30.5 / 64)  # inside the disk: the classical segmenter then finds it
    greedy = ScriptedPolicy([TERMINATE])
    episode = rollout(FirstTurnThen(ScriptedPolicy([click]), greedy), sample, "segment the disk", segmenter, max_turns=4)
    assert len(episode.turns) == 2 and greedy.calls == 1 and episode.final_iou > 0.8
    now = score(first_turn(episode), RewardConfig(), "decision")
    later = score(episode, RewardConfig(), "decision")
    assert later["answer"] == 3.0 and later["placement"] == now["placement"] == 1.0
    assert later["total"] == pytest.approx(now["total"] - (now["answer"] - 3.0) / 5.0)
    [trained] = episode_samples(first_turn(episode))
    assert trained.messages[-1]["content"][0]["text"] == click
    # a first reply that answers ends the episode: nothing is continued, the answer is on the mask as it was
    stop = rollout(FirstTurnThen(ScriptedPolicy([TERMINATE]), greedy), sample, "segment the disk", segmenter, max_turns=4,
                   init_mask=episode.final_mask)
    assert len(stop.turns) == 1 and greedy.calls == 1 and score(stop, RewardConfig(), "decision")["answer"] == 3.0
    with pytest.raises(ValueError, match="decision_answer"):
        GRPOConfig(model="m", output="o", mode="decision", decision_answer="later")


def test_an_unreadable_reply_ends_the_rollout_without_a_length_bonus():
    episode = rollout(ScriptedPolicy(["I think the disk is in the middle."]), disk_sample(), "segment the disk",
                      build_segmenter("classical"))
    assert episode.stop_reason == "unparsable" and len(episode.turns) == 1
    assert score(episode, RewardConfig())["total"] == 0.0


def test_only_the_models_reply_tokens_get_gradients(tiny_vlm_folder):
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_vlm_folder)
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_vlm_folder)
    policy = ScriptedPolicy([point(True, 0.5, 0.5), TERMINATE])
    episode = rollout(policy, disk_sample(), "segment the disk", build_segmenter("classical"), profile="paper")
    (rendered,) = episode_samples(episode)  # the paper profile keeps history: one multi-turn sample
    encoded = encode(processor, rendered)
    batch = collate([encoded], processor.tokenizer.pad_token_id)
    captured = keep_logit_gradients(model)
    log_probs, mask = token_log_probs(model, batch)
    loss, _ = policy_loss(log_probs, log_probs.detach(), torch.tensor([1.0]), mask)
    loss.backward()
    grad = captured["logits"].grad[0, :-1].abs().sum(dim=-1)  # position t predicts token t + 1
    trained = mask[0].bool()
    assert trained.sum() > 0 and (grad[trained] > 0).all()
    assert (grad[~trained] == 0).all()  # system, user, observation and image tokens get no gradient
    image_positions = batch["input_ids"][0, 1:] == model.config.image_token_id
    assert image_positions.any() and not trained[image_positions].any()


def test_the_logged_policy_change_is_zero_without_an_update_and_grows_with_the_step(tiny_vlm_folder):
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from training.rl.grpo import policy_change

    processor = AutoProcessor.from_pretrained(tiny_vlm_folder)
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_vlm_folder)
    policy = ScriptedPolicy([point(True, 0.5, 0.5)])
    episode = rollout(policy, disk_sample(), "segment the disk", build_segmenter("classical"), max_turns=1)
    encoded = encode(processor, episode_samples(episode)[0])
    pad = processor.tokenizer.pad_token_id
    with torch.no_grad():
        encoded["old"] = token_log_probs(model, collate([encoded], pad))[0]
    assert policy_change(model, [(encoded, 1.0)], pad, "cpu") == pytest.approx(0.0, abs=1e-6)
    changes = []
    for size in (1e-3, 1e-2):
        moved = Qwen3VLForConditionalGeneration.from_pretrained(tiny_vlm_folder)
        torch.manual_seed(0)
        with torch.no_grad():
            moved.lm_head.weight.add_(size * torch.randn_like(moved.lm_head.weight))
        changes.append(policy_change(moved, [(encoded, 1.0)], pad, "cpu"))
    assert 0 < changes[0] < changes[1]


def test_coordinate_training_keeps_only_the_digits_of_the_clicks(tiny_vlm_folder):
    from transformers import AutoProcessor

    from training.rl.grpo import coordinate_labels

    processor = AutoProcessor.from_pretrained(tiny_vlm_folder)
    policy = ScriptedPolicy([point(True, 0.25, 0.75, thought="the disk is at 0.5"), TERMINATE])
    episode = rollout(policy, disk_sample(), "segment the disk", build_segmenter("classical"), max_turns=3)
    click, answer = (encode(processor, r) for r in episode_samples(episode))  # the release profile: one per turn
    labels = coordinate_labels(processor.tokenizer, click["input_ids"][0], click["labels"])
    kept = click["input_ids"][0].numpy()[labels != -100]
    assert processor.tokenizer.decode(kept) == "0.25000.7500"  # not the 0.5 of the reasoning, not "Positive Point"
    assert np.array_equal(labels[labels != -100], kept)
    assert (coordinate_labels(processor.tokenizer, answer["input_ids"][0], answer["labels"]) == -100).all()
    with pytest.raises(ValueError, match="trained_tokens"):
        GRPOConfig(model="m", output="o", trained_tokens="thoughts")


def test_pushing_a_bad_click_down_moves_probability_only_among_the_digits(tiny_vlm_folder):
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from training.rl.grpo import coordinate_labels, coordinate_token_ids

    processor = AutoProcessor.from_pretrained(tiny_vlm_folder)
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_vlm_folder)
    episode = rollout(ScriptedPolicy([point(False, 0.25, 0.75)]), disk_sample(), "segment the disk",
                      build_segmenter("classical"), max_turns=1)
    (encoded,) = (encode(processor, r) for r in episode_samples(episode))
    encoded["labels"] = coordinate_labels(processor.tokenizer, encoded["input_ids"][0], encoded["labels"])
    batch = collate([encoded], processor.tokenizer.pad_token_id)
    captured = keep_logit_gradients(model)
    digits = coordinate_token_ids(processor.tokenizer)
    log_probs, mask = token_log_probs(model, batch, within=digits)
    trained = mask[0].bool()
    assert trained.sum() == 12 and (log_probs[0, trained] < 0).all()  # "0.2500" and "0.7500", each a choice among 11
    loss, _ = policy_loss(log_probs, log_probs.detach(), torch.tensor([-1.0]), mask)  # a click the group did worse with
    loss.backward()
    grad = captured["logits"].grad[0, :-1][trained]  # (coordinate positions, vocabulary)
    others = torch.ones(grad.shape[1], dtype=torch.bool)
    others[digits] = False
    assert (grad[:, digits].abs().sum(dim=1) > 0).all() and (grad[:, others] == 0).all()


def test_grpo_with_equal_rewards_does_not_move_the_weights(tiny_vlm_folder, tmp_path):
    from transformers import Qwen3VLForConditionalGeneration

    # an untrained model writes nonsense: every rollout scores 0, every advantage is 0
    config = GRPOConfig(model=str(tiny_vlm_folder), output=str(tmp_path / "grpo"), steps=1, questions_per_step=1,
                        group_size=2, max_turns=2, max_new_tokens=12, seeds=[0, 3], learning_rate=1e-2, log_every=0)
    card = train(config)
    (record,) = card["steps"]
    assert record["reward/total"] == 0.0 and record["zero_advantage_groups"] == 1
    before = Qwen3VLForConditionalGeneration.from_pretrained(tiny_vlm_folder).state_dict()
    after = Qwen3VLForConditionalGeneration.from_pretrained(tmp_path / "grpo").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    logged = [json.loads(line) for line in (tmp_path / "grpo" / "log.jsonl").read_text().splitlines()]
    assert {"reward/format", "reward/answer", "reward/placement", "reward/progress", "reward/length"} <= logged[0].keys()


def test_epochs_reuse_each_steps_rollouts_for_that_many_updates(tiny_vlm_folder, tmp_path):
    config = GRPOConfig(model=str(tiny_vlm_folder), output=str(tmp_path / "grpo"), steps=1, questions_per_step=1,
                        group_size=2, max_turns=1, max_new_tokens=8, seeds=[0, 3], epochs=3, mini_batches=2,
                        save_every=1, log_every=0)
    train(config)
    state = torch.load(tmp_path / "grpo" / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert {int(s["step"]) for s in state["optimiser"]["state"].values()} == {6}  # 3 passes x 2 mini-batches
    with pytest.raises(ValueError, match="epochs"):
        GRPOConfig(model="m", output="o", epochs=0)


def test_the_clipped_ratio_stops_pushing_past_the_trust_region():
    log_probs = torch.tensor([[0.0, 0.5]], requires_grad=True)  # ratio e^0.5 = 1.65 on the second token
    loss, stats = policy_loss(log_probs, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2))
    loss.backward()
    assert log_probs.grad[0, 0] != 0 and log_probs.grad[0, 1] == 0 and stats["clip_fraction"] == 0.5


@pytest.mark.slow
def test_two_cpu_processes_run_grpo(tiny_vlm_folder, tmp_path):
    config = {"model": str(tiny_vlm_folder), "output": str(tmp_path / "ddp"), "steps": 1, "questions_per_step": 1,
              "group_size": 2, "max_turns": 1, "max_new_tokens": 8, "seeds": [0, 4]}
    card = run_on_two_processes("training.rl.grpo", config, tmp_path)
    assert card["processes"] == 2 and card["steps"][0]["rollouts"] == 4


def test_evaluation_reports_iou_steps_parsing_and_the_oracle_at_equal_clicks():
    from training.evaluation.benchmark import evaluate

    sample = disk_sample()
    absent = Sample(sample.image, np.zeros_like(sample.mask), "spleen", "CT", "test:absent", "absent")
    policy = ScriptedPolicy([point(True, 34.5 / 64, 30.5 / 64), TERMINATE])
    result = evaluate(policy, [sample], build_segmenter("classical"), max_steps=4)
    summary = result["summary"]
    assert summary["cases"] == 1 and summary["mean_iou"] > 0.8 and summary["parsable_share"] == 1.0
    assert summary["mean_steps"] == 2 and 0 < summary["oracle_iou_same_clicks"] <= 1
    assert result["cases"][0]["clicks"] == 1
    assert result["cases"][0]["ious"] == [summary["mean_iou"]] == [summary["mean_iou_after_first_click"]]
    two_clicks = evaluate(ScriptedPolicy([point(True, 34.5 / 64, 30.5 / 64), point(False, 34.5 / 64, 30.5 / 64), TERMINATE]),
                          [sample], build_segmenter("classical"), max_steps=4)
    ious = two_clicks["cases"][0]["ious"]  # a negative click on the disk's centre takes the mask down
    assert len(ious) == 2 and ious[1] < ious[0] == two_clicks["summary"]["mean_best_iou_along"]
    # a reply that cannot be read counts against the parsable share; an absent target needs "not present"
    broken = evaluate(ScriptedPolicy(["no idea"]), [sample, absent], build_segmenter("classical"))["summary"]
    assert broken["parsable_share"] == 0.0 and broken["mean_iou"] == 0.0 and broken["absent_answered_right"] == 0.0


def test_a_paired_comparison_tells_a_real_gain_from_noise_and_skips_absent_cases():
    from training.evaluation.benchmark import paired_difference

    baseline = [0.1, 0.9, 0.5, float("nan"), 0.3]
    better = [0.2, 1.0, 0.6, float("nan"), 0.4]  # +0.1 on every present case: no spread, no doubt
    gain = paired_difference(better, baseline)
    assert gain["cases"] == 4 and gain["mean"] == pytest.approx(0.1) and gain["se"] == pytest.approx(0.0)
    mixed = paired_difference([0.9, 0.1, 0.9, float("nan"), 0.1], baseline)
    assert mixed["low"] < 0 < mixed["high"]  # up on some cases, down on others: the interval holds zero
    with pytest.raises(ValueError, match="not the same cases"):
        paired_difference([0.1, 0.2], baseline)


def test_an_evaluation_compares_with_an_earlier_one_only_on_the_same_cases(tmp_path):
    from training.evaluation.benchmark import EvalConfig, compare, read_comparable

    def written(config, ious):
        cases = [{"iou": value} for value in ious]
        path = tmp_path / f"eval-{len(list(tmp_path.iterdir()))}.json"  # NaN is written as JSON's NaN, as evaluate does
        path.write_text(json.dumps({"config": config.__dict__, "results": {"phantoms": {
            "summary": {"mean_iou": float(np.nanmean(ious))}, "cases": cases}}}))
        return path

    config = EvalConfig(model="m", output="o", segmenter="litemedsam")
    earlier = written(EvalConfig(model="other", output="o", segmenter="classical"), [0.5, float("nan"), 0.5])
    baseline = read_comparable(str(earlier), config)  # another model and segmenter: still the same cases
    [line] = compare({"phantoms": {"summary": {"mean_iou": 0.6}, "cases": [{"iou": 0.6}, {"iou": float("nan")}, {"iou": 0.6}]}},
                     baseline)
    assert line.startswith("phantoms: mean IoU 0.600, +0.100 +- 0.000") and "2 cases with a target" in line
    with pytest.raises(SystemExit, match="drew other cases \\(phantom_seeds differ\\)"):
        read_comparable(str(written(EvalConfig(model="m", output="o", phantom_seeds=[0, 3]), [0.1, 0.2, 0.3])), config)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(SystemExit, match="not an evaluation written by napari-ibis benchmark"):
        read_comparable(str(tmp_path / "broken.json"), config)


CONFIG_FOLDERS = [Path(__file__).parents[1] / "training" / name for name in ("configs", "experiments")]


@pytest.mark.parametrize("path", sorted(p for folder in CONFIG_FOLDERS for p in folder.glob("grpo-*.yaml")), ids=lambda p: p.name)
def test_every_grpo_config_in_the_repository_reads_into_its_settings_and_rewards(path):
    from training.config import load_config

    config = load_config(GRPOConfig, path)  # a misspelt key or a value of the wrong kind fails here
    RewardConfig(**config.rewards)
