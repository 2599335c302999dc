"""The target-map losses on hand-made tensors (training/sft/target_map.py)."""

import numpy as np
import torch

from training.sft.target_map import (
    attention_loss,
    centre,
    loss,
    position_loss,
    token_coverage,
    token_position_loss,
    token_positions,
)

IMAGE = 9


def test_coverage_is_the_share_of_each_token_inside_the_mask_in_raster_order():
    mask = np.zeros((64, 64), bool)
    mask[:, :16] = True  # the left quarter
    mask[:8, 48:] = True  # half of the top-right token
    coverage = token_coverage(mask, (1, 8, 8), 2).reshape(4, 4)
    assert coverage[:, 0].tolist() == [1.0] * 4
    assert coverage[0, 3] == 0.5 and coverage[1:, 1:].sum() == 0


def test_a_head_that_finds_the_small_target_scores_better_than_one_that_says_no_everywhere():
    ids = torch.tensor([[1, IMAGE, IMAGE, IMAGE, IMAGE, 2]])
    targets = torch.tensor([0.0, 1.0, 0.0, 0.0])  # one of four tokens is the target
    hidden = torch.eye(6)[None]  # each position its own feature
    head = torch.nn.Linear(6, 1)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-4.0)  # "no" everywhere: right on 3 of 4 tokens
        says_no = loss(head, hidden, ids, IMAGE, targets).item()
        head.weight[0, 2] = 8.0  # position 2 is the second image token: "yes" there
        finds_it = loss(head, hidden, ids, IMAGE, targets).item()
    assert finds_it < says_no / 4  # balanced: missing the one target token costs as much as all the background


def test_samples_without_a_target_mask_add_nothing():
    ids = torch.tensor([[IMAGE, IMAGE]])
    hidden = torch.randn(1, 2, 4, requires_grad=True)
    value = loss(torch.nn.Linear(4, 1), hidden, ids, IMAGE, torch.tensor([float("nan")] * 2))
    assert value.item() == 0.0 and value.requires_grad


def test_the_attention_loss_is_lowest_when_the_answer_looks_at_the_target():
    ids = torch.tensor([[1, IMAGE, IMAGE, IMAGE, 7, 8]])
    labels = torch.tensor([[-100, -100, -100, -100, -100, 8]])  # position 4 predicts the trained token 8
    targets = torch.tensor([0.0, 0.0, 1.0])

    def attention(looks_at):
        weights = torch.zeros(1, 2, 6, 6)
        weights[0, 0, 4, looks_at] = 1.0
        return weights

    on_target = attention_loss(attention([3]), ids, labels, IMAGE, targets).item()
    spread = attention_loss(attention([1, 2, 3]), ids, labels, IMAGE, targets).item()
    elsewhere = attention_loss(attention([1]), ids, labels, IMAGE, targets).item()
    assert on_target < 1e-6 < spread < elsewhere
    absent = attention_loss(attention([1]), ids, labels, IMAGE, torch.zeros(3))  # nothing to look at: no term
    assert absent.item() == 0.0


def test_with_all_keys_the_attention_loss_also_asks_the_head_not_to_look_at_text():
    ids = torch.tensor([[1, IMAGE, IMAGE, IMAGE, 7, 8]])
    labels = torch.tensor([[-100, -100, -100, -100, -100, 8]])
    targets = torch.tensor([0.0, 0.0, 1.0])
    half_on_text = torch.zeros(1, 1, 6, 6)
    half_on_text[0, 0, 4, [0, 3]] = 0.5  # half on the first text token, half on the target
    all_on_target = torch.zeros(1, 1, 6, 6)
    all_on_target[0, 0, 4, 3] = 1.0
    assert attention_loss(half_on_text, ids, labels, IMAGE, targets).item() < 1e-6  # renormalised over the image
    diluted = attention_loss(half_on_text, ids, labels, IMAGE, targets, all_keys=True).item()
    assert abs(diluted - np.log(2)) < 1e-5
    assert attention_loss(all_on_target, ids, labels, IMAGE, targets, all_keys=True).item() < 1e-6


def test_token_positions_are_the_merged_tokens_centres_in_raster_order_image_after_image():
    positions = token_positions(torch.tensor([[1, 4, 8], [1, 2, 2]]), merge_size=2)
    assert positions.shape == (2 * 4 + 1, 2)
    assert positions[:4].tolist() == [[0.125, 0.25], [0.375, 0.25], [0.625, 0.25], [0.875, 0.25]]  # first row
    assert positions[4].tolist() == [0.125, 0.75] and positions[8].tolist() == [0.5, 0.5]  # second row; the second image


def test_the_token_position_loss_is_zero_when_each_image_tokens_value_holds_its_own_place():
    ids = torch.tensor([[1, IMAGE, IMAGE, IMAGE, IMAGE, 2]])
    positions = token_positions(torch.tensor([[1, 4, 4]]), merge_size=2)
    values = torch.zeros(1, 6, 3)
    values[0, 1:5, :2] = positions  # the image tokens' values are their places; text is ignored
    values[0, [0, 5]] = 5.0
    head = torch.nn.Linear(3, 2)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2, 3))
        head.bias.zero_()
    assert token_position_loss(head, values, ids, IMAGE, positions).item() < 1e-12
    shuffled = token_position_loss(head, values, ids, IMAGE, positions.flip(0)).item()
    assert shuffled > 0.1  # values that do not match their tokens' places cost


def test_the_position_loss_asks_the_replys_first_position_for_the_targets_centre():
    mask = np.zeros((10, 20), bool)
    mask[0:2, 0:4] = True
    assert centre(mask) == (0.1, 0.1) and centre(np.zeros((4, 4), bool)) is None
    labels = torch.tensor([[-100, -100, 5, 6], [-100, -100, 5, 6]])  # position 1 predicts the reply's first token
    hidden = torch.zeros(2, 4, 3)
    hidden[:, 1, 0] = 1.0  # position 1 ...
    hidden[:, 2, 1] = 1.0  # ... and position 2 (already inside the reply) look different
    head = torch.nn.Linear(3, 2)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[:, 0] = 0.1  # the right centre at position 1 only
        head.bias.zero_()
    centres = torch.tensor([[0.1, 0.1], [float("nan")] * 2])  # the second sample has no target: left out
    assert position_loss(head, hidden, labels, centres).item() < 1e-12  # position 2 is not asked
    missed = position_loss(head, hidden, labels, torch.tensor([[0.5, 0.1], [0.1, 0.1]])).item()
    assert abs(missed - 0.4**2 / 4) < 1e-6  # x off by 0.4 in one of two samples, y right: mean over 4 values
