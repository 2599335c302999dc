import numpy as np
import pytest

from napari_ibis.protocol import Action, Response, format_response
from training.rl.rewards import (
    RewardConfig,
    answer_reward,
    format_reward,
    length_reward,
    placement_reward,
    progress_reward,
    step_reward,
    trajectory_reward,
)


def box(top, left, bottom, right, shape=(20, 20)):
    mask = np.zeros(shape, bool)
    mask[top:bottom, left:right] = True
    return mask


TRUTH = box(5, 5, 15, 15)
HALF = box(5, 5, 15, 10)  # covers the left half of the truth
SPILL = box(5, 5, 15, 18)  # the truth plus three columns outside it


def point(positive, row, col, answer=None):
    action = Action(positive, (col + 0.5) / 20, (row + 0.5) / 20)
    return format_response(Response(thought="I look at the image.", actions=(action,), answer=answer))


STOP = format_response(Response(thought="Done.", terminate=True, answer="The liver is segmented."))


def test_format_reward_wants_the_trained_layout_and_an_answer_when_stopping():
    assert format_reward(point(True, 10, 12)) == 1.0
    assert format_reward(STOP) == 1.0
    assert format_reward(format_response(Response(thought="Done.", terminate=True))) == 0.0  # no answer
    assert format_reward("<think>x</think><action>Positive Point (0.5, 0.5)</action>") == 0.0  # layout
    assert format_reward("<think>\nx\n</think>\n<action>\nJump (0.5, 0.5)\n</action>") == 0.0  # action
    assert format_reward("I would click the middle.") == 0.0
    assert format_reward("<think>\n\n</think>\n<action>\nPositive Point (0.5000, 0.5000)\n</action>") == 0.0


def test_answer_reward_is_piecewise_on_iou_with_the_release_thresholds():
    assert [answer_reward(v) for v in (0.95, 0.81, 0.8, 0.75, 0.7, 0.6, 0.5, 0.1)] == [3, 3, 2, 2, 1, 1, 0, 0]


@pytest.mark.parametrize("row, col, positive, expected", [
    (10, 12, True, 1.0),    # positive in the missed right half
    (10, 7, True, -1.0),    # positive where the mask already is
    (2, 2, True, -1.0),     # positive in the background
    (10, 7, False, -1.0),   # negative on correctly covered tissue
])
def test_placement_rewards_clicks_in_the_region_they_fix(row, col, positive, expected):
    assert placement_reward(row, col, positive, TRUTH, HALF) == expected


def test_a_negative_click_in_the_spill_is_rewarded_and_outside_the_image_is_a_miss():
    assert placement_reward(10, 16, False, TRUTH, SPILL) == 1.0
    assert placement_reward(10, 12, False, TRUTH, SPILL) == -1.0
    assert placement_reward(25, 3, True, TRUTH, HALF) == -1.0


def test_progress_needs_a_strict_improvement_and_is_zero_when_stopping():
    assert progress_reward(0.5, 0.6, final=False) == 1.0
    assert progress_reward(0.5, 0.5, final=False) == 0.0
    assert progress_reward(0.6, 0.5, final=False) == 0.0
    assert progress_reward(0.5, 0.9, final=True) == 0.0


def test_progress_gain_pays_how_much_a_click_mends_and_charges_how_much_it_spoils():
    config = RewardConfig(progress=0.0, progress_gain=10.0)
    assert progress_reward(0.5, 0.7, final=False, config=config) == pytest.approx(2.0)
    assert progress_reward(0.5, 0.55, final=False, config=config) == pytest.approx(0.5)  # less mended, less paid
    assert progress_reward(0.6, 0.5, final=False, config=config) == pytest.approx(-1.0)
    assert progress_reward(0.5, 0.9, final=True, config=config) == 0.0
    both = RewardConfig(progress_gain=10.0)  # the release's step bonus plus the gain
    assert progress_reward(0.5, 0.6, final=False, config=both) == pytest.approx(2.0)


def test_length_reward_around_the_optimum():
    assert [length_reward(s) for s in (1, 4, 5, 6, 8)] == pytest.approx([1, 1, 1, -0.2, -0.6])
    assert length_reward(4, RewardConfig(optimal_steps=3, length_penalty=0.5)) == -0.5


def test_step_reward_sums_the_terms_over_five():
    terms = step_reward(point(True, 10, 12), TRUTH, HALF, TRUTH, step=2, clicks=[(10, 12, True)])
    assert terms == {"format": 1.0, "answer": 3.0, "placement": 1.0, "progress": 1.0, "length": 1.0, "total": 7.0 / 5}
    worse = step_reward(point(True, 2, 2), TRUTH, HALF, box(2, 2, 15, 10), step=7, clicks=[(2, 2, True)])
    assert worse["placement"] == -1 and worse["progress"] == 0 and worse["length"] == pytest.approx(-0.4)
    garbage = step_reward("no idea", TRUTH, HALF, HALF, step=1, clicks=[])
    assert garbage["total"] == 0.0 and garbage["format"] == 0.0


def test_closed_questions_reward_saying_not_present_only_when_it_is_absent():
    absent = np.zeros_like(TRUTH)
    said = format_response(Response(thought="No such structure.", terminate=True, not_present=True, answer="Not there."),
                           "paper")
    assert step_reward(said, absent, absent, absent, 1, [], "paper")["answer"] == 3.0
    assert step_reward(said, TRUTH, absent, absent, 1, [], "paper")["answer"] == 0.0
    clicked = step_reward(point(True, 10, 12), absent, absent, box(8, 8, 12, 12), 1, [(10, 12, True)])
    assert clicked["answer"] == 0.0 and clicked["placement"] == -1.0


def test_ablations_switch_terms_off():
    config = RewardConfig(use_placement=False, use_progress=False)
    terms = step_reward(point(True, 10, 12), TRUTH, HALF, TRUTH, step=2, clicks=[(10, 12, True)], config=config)
    assert terms["placement"] == 0 and terms["progress"] == 0 and terms["total"] == pytest.approx(5.0 / 5)


def test_trajectory_reward_averages_turns_and_scores_the_final_mask():
    turns = [{"format": 1.0, "placement": 1.0, "progress": 1.0}, {"format": 0.0, "placement": -1.0, "progress": 0.0}]
    terms = trajectory_reward(turns, TRUTH, HALF, said_absent=False)
    assert terms["format"] == 0.5 and terms["placement"] == 0.0 and terms["progress"] == 0.5
    assert terms["answer"] == 0.0 and terms["length"] == 1.0  # IoU 0.5 is not > 0.5
    assert terms["total"] == pytest.approx(2.0 / 5)


def test_a_wrong_not_present_can_be_made_to_cost_more_than_a_missed_click():
    # with the release's constants, giving up on an empty mask (0.4) beats a missed click (0.2):
    # a weak policy learns to answer "not present"; wrong_absent_answer closes that door
    empty = np.zeros_like(TRUTH)
    give_up = format_response(Response(thought="Nothing.", terminate=True, answer="It is not there."))
    miss = point(True, 2, 2)
    release = RewardConfig()
    assert step_reward(give_up, TRUTH, empty, empty, 1, [], config=release)["total"] == pytest.approx(0.4)
    assert step_reward(miss, TRUTH, empty, empty, 1, [(2, 2, True)], config=release)["total"] == pytest.approx(0.2)
    strict = RewardConfig(wrong_absent_answer=-3.0)
    assert step_reward(give_up, TRUTH, empty, empty, 1, [], config=strict)["total"] == pytest.approx(-0.2)
    assert step_reward(give_up, np.zeros_like(TRUTH), empty, empty, 1, [], config=strict)["answer"] == 3.0
