"""The pointer agent (v8): its decisions from a probability map, its model folder, a whole run."""

import numpy as np
import pytest
from conftest import disk_image

from napari_ibis.policies.base import PolicyRequest
from napari_ibis.policies.pointer import decide
from napari_ibis.protocol import get_profile
from napari_ibis.segmenters.base import Click

PROFILE = get_profile("ibis-release")


def needs_assets(*names):
    from napari_ibis import assets

    missing = [n for n in names if not assets.available(n)]
    return pytest.mark.skipif(bool(missing), reason=f"{missing} not fetched: python -m napari_ibis.assets fetch")


def blob(shape, centre, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def request(mask=None, clicks=(), step=1):
    return PolicyRequest(profile=PROFILE, query="segment the left kidney", image=np.zeros((100, 120, 3), np.uint8),
                         mask=mask, clicks=tuple(clicks), step=step)


def landing(response):
    """(row, col, positive) where the response's one click lands on a 100 x 120 slice."""
    action = response.actions[0]
    return int(action.y * 100), int(action.x * 120), action.positive


def test_first_click_goes_inside_the_most_likely_region_and_says_where():
    probability = np.where(blob((100, 120), (30, 90), 12), 0.9, 0.02)
    response = decide(probability, request(), threshold=0.5, cell=8)
    row, col, positive = landing(response)
    assert positive and blob((100, 120), (30, 90), 12)[row, col]
    assert "upper right" in response.thought and not response.terminate


def test_nothing_likely_enough_is_answered_not_present():
    probability = np.full((100, 120), 0.2)
    response = decide(probability, request(), threshold=0.5, cell=8)
    assert response.not_present and response.terminate and not response.actions


def test_several_candidates_one_is_segmented_and_the_answer_says_how_many():
    probability = np.full((100, 120), 0.02)
    probability[blob((100, 120), (30, 30), 8)] = 0.7
    probability[blob((100, 120), (70, 90), 8)] = 0.9
    first = decide(probability, request(), threshold=0.5, cell=4)
    row, col, _ = landing(first)
    assert blob((100, 120), (70, 90), 8)[row, col] and "2 candidates" in first.thought
    done = decide(probability, request(mask=blob((100, 120), (70, 90), 8), clicks=[Click(row, col, True)]), 0.5, 4)
    assert done.terminate and "1 other candidate" in done.answer


def test_a_mask_spilling_far_outside_gets_a_negative_click_there():
    target = blob((100, 120), (50, 40), 10)
    probability = np.where(target, 0.9, 0.02)
    spilled = target | blob((100, 120), (50, 95), 14)
    response = decide(probability, request(mask=spilled, clicks=[Click(50, 40, True)]), 0.5, 4)
    row, col, positive = landing(response)
    assert not positive and blob((100, 120), (50, 95), 14)[row, col]


def test_a_mask_missing_most_of_the_region_gets_a_positive_click_in_the_missed_part():
    target = np.zeros((100, 120), bool)
    target[20:80, 20:100] = True
    probability = np.where(target, 0.9, 0.02)
    partial = np.zeros_like(target)
    partial[20:80, 20:40] = True
    response = decide(probability, request(mask=partial, clicks=[Click(50, 30, True)]), 0.5, 4)
    row, col, positive = landing(response)
    assert positive and target[row, col] and not partial[row, col]


def test_a_mask_matching_the_region_ends_the_run():
    target = blob((100, 120), (50, 60), 20)
    response = decide(np.where(target, 0.9, 0.02), request(mask=target, clicks=[Click(50, 60, True)]), 0.5, 4)
    assert response.terminate and not response.not_present and response.answer


@needs_assets("mobile_sam", "minilm")
def test_a_pointer_folder_loads_as_a_model_and_runs_a_session(tmp_path, monkeypatch):
    from napari_ibis.grounding import head as head_module
    from napari_ibis.grounding.head import PointerHead, PointerHeadConfig
    from napari_ibis.policies import load_policy
    from napari_ibis.policies.pointer import PointerPolicy
    from napari_ibis.segmenters import build_segmenter
    from napari_ibis.session import Session

    boxes = []  # how the policy found the body: the way its head was trained to
    real = head_module.position_channels
    monkeypatch.setattr(head_module, "position_channels", lambda f, image, box="bright": boxes.append(box) or real(f, image, box))
    PointerHead(PointerHeadConfig(presence_threshold=0.0, body_box="largest_part")).save_pretrained(tmp_path / "v8")
    policy = load_policy(tmp_path / "v8")
    assert isinstance(policy, PointerPolicy)
    image, _ = disk_image(128, centre=(60, 70), radius=18)
    session = Session(image, "segment the bright disk", policy, build_segmenter("classical"), max_steps=3)
    events = list(session.run())
    assert session.steps, "the agent took no step"
    assert all(step.mask.shape == image.shape for step in session.steps)
    assert type(events[-1]).__name__ == "Stopped"
    assert boxes and set(boxes) == {"largest_part"}


def test_the_pointer_agent_locates_a_structure_on_a_slice_for_the_volume_search(tmp_path):
    """``locate`` reads the first turn's map: present where its peak reaches the presence
    threshold (then scored by the probability over the likeliest region), else absent."""
    from napari_ibis.grounding.head import PointerHead, PointerHeadConfig
    from napari_ibis.policies import load_policy

    image, _ = disk_image(128, centre=(60, 70), radius=18)
    rgb = np.repeat(image[..., None], 3, axis=2)
    for threshold, present in ((0.0, True), (1.01, False)):
        folder = tmp_path / f"v8-{threshold}"
        PointerHead(PointerHeadConfig(presence_threshold=threshold)).save_pretrained(folder)
        seen = load_policy(folder).locate(rgb, "segment the bright disk")
        assert seen.present is present and 0.0 <= seen.peak <= 1.0
        assert (seen.score > 0) is present
