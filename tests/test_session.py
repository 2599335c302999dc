import json
import threading

import numpy as np
import pytest
from conftest import TERMINATE, ScriptedPolicy, disk_image, point

from napari_ibis.errors import InputError
from napari_ibis.policies.oracle import OraclePolicy
from napari_ibis.segmenters import build_segmenter
from napari_ibis.segmenters.base import Segmenter, SegmentResult
from napari_ibis.session import ActionTaken, Answered, MaskUpdated, Session, StepStarted, Stopped, ThoughtDelta


@pytest.fixture
def case():
    return disk_image(96, centre=(40, 52), radius=14)


@pytest.fixture(scope="module")
def classical():
    return build_segmenter("classical")


def run_all(session, cancel=None):
    return list(session.run(cancel))


def inside(x=52.5 / 96, y=40.5 / 96):
    return x, y


def test_agent_runs_to_its_answer_with_streamed_thoughts(case, classical):
    image, mask = case
    policy = ScriptedPolicy([point(True, *inside(), "the bright disk is the target"), TERMINATE])
    session = Session(image, "segment the disk", policy, classical)
    events = run_all(session)
    kinds = [type(e) for e in events]
    assert kinds[0] is StepStarted and ThoughtDelta in kinds
    assert kinds.index(ThoughtDelta) < kinds.index(MaskUpdated)  # text streams before the mask
    assert isinstance(events[-1], Stopped) and events[-1].reason == "answered"
    streamed = "".join(e.text for e in events if isinstance(e, ThoughtDelta) and e.index == 1)
    assert "the bright disk is the target" in streamed
    clicks = next(e for e in events if isinstance(e, ActionTaken)).clicks
    assert (clicks[0].row, clicks[0].col, clicks[0].positive) == (40, 52, True)
    assert [s.kind for s in session.steps] == ["click", "answer"]
    assert session.mask[40, 52] and (session.mask & mask).sum() / (session.mask | mask).sum() > 0.6
    # the second turn shows the mask to the model with the release's refinement prompt
    second = policy.requests[1]
    assert "This is a refinement step" in second.messages[-1]["content"][1]["text"]
    assert not np.array_equal(second.messages[-1]["content"][0]["image"], session.rgb)


def test_undo_redo_reject_accept_and_replay(case, classical):
    image, _ = case
    replies = [point(True, *inside()), point(False, 0.1, 0.1), point(True, 0.6, 0.45), TERMINATE]
    session = Session(image, "segment the disk", ScriptedPolicy(replies), classical)
    run_all(session)
    assert len(session.steps) == 4
    third = session.steps[2].mask.copy()
    session.undo()
    session.undo()
    assert session.cursor == 2 and session.can_redo
    session.redo()
    assert np.array_equal(session.mask, third)
    session.reject()  # drops step 3 and everything after
    assert session.cursor == 2 and not session.can_redo
    accepted = session.accept()
    assert session.accepted == 2 and np.array_equal(accepted, session.steps[1].mask)
    assert np.array_equal(session.replay(), session.mask)
    names = [o["name"] for o in session.trajectory()["operations"]]
    assert names == ["undo", "undo", "redo", "reject", "accept"]


def test_a_user_click_becomes_a_step_and_the_agent_continues_from_it(case, classical):
    image, _ = case
    policy = ScriptedPolicy([point(True, *inside()), TERMINATE])
    session = Session(image, "segment the disk", policy, classical, max_steps=1)
    assert run_all(session)[-1].reason == "max_steps"
    step = session.add_click(5, 5, positive=False)
    assert step.source == "user" and len(step.clicks) == 2 and not step.clicks[-1].positive
    events = run_all(session)
    assert events[-1].reason == "answered"
    assert [s.source for s in session.steps] == ["agent", "user", "agent"]
    assert policy.requests[-1].clicks[-1].source == "user"
    assert np.array_equal(session.replay(), session.mask)


def test_refinement_starts_from_an_imported_mask(case, classical):
    image, mask = case
    policy = ScriptedPolicy([TERMINATE])
    session = Session(image, "segment the disk", policy, classical, init_mask=mask.astype(np.uint8) * 7)
    events = run_all(session)
    assert events[-1].reason == "answered"
    assert np.array_equal(session.mask, mask)
    assert "refinement step" in policy.requests[0].messages[-1]["content"][1]["text"]
    with pytest.raises(InputError, match="initial mask"):
        Session(image, "q", policy, classical, init_mask=np.zeros((5, 5)))


def test_not_present_answer_leaves_an_empty_mask(case, classical):
    image, _ = case
    session = Session(image, "segment the kidney", ScriptedPolicy([TERMINATE]), classical)
    assert run_all(session)[-1].reason == "not_present"
    assert not session.mask.any()
    paper = ScriptedPolicy(["<think>no kidney</think><action>Not present</action><answer>No kidney.</answer>"])
    session = Session(image, "segment the kidney", paper, classical, profile="paper")
    events = run_all(session)
    assert events[-1].reason == "not_present" and isinstance(events[-2], Answered)


@pytest.mark.parametrize(
    "reply, reason",
    [
        ("I think it is the liver.", "unparsable"),
        (point(True, 0.5, 0.5) + "<action>Terminate</action>", "unparsable"),
        ("<action>Positive Point (1.5, 0.2)</action>", "unparsable"),
        ("garbage " * 1500, "unparsable"),
    ],
)
def test_nonsense_from_the_model_stops_cleanly(case, classical, reply, reason):
    image, _ = case
    session = Session(image, "segment the disk", ScriptedPolicy([reply]), classical)
    events = run_all(session)
    assert events[-1].reason == reason and events[-1].message
    assert session.steps == [] and session.rejected_outputs == [reply]


def test_a_repeated_click_that_changes_nothing_ends_the_run_as_finished(case, classical):
    image, truth = case
    session = Session(image, "segment the disk", ScriptedPolicy([point(True, *inside())]), classical)
    stop = run_all(session)[-1]
    assert stop.reason == "finished" and stop.finished and "step 1" in stop.message
    assert len(session.steps) == 1 and session.mask[truth].mean() > 0.8  # the good mask is the result


def test_the_same_action_three_times_stops_the_run_when_each_changes_the_mask(case):
    class Growing(Segmenter):
        """Each call returns a larger disk around the first click."""

        def _embed(self, image):
            self.calls = 0

        def _segment(self, clicks, prior):
            self.calls += 1
            rows, cols = np.ogrid[: self.image_shape[0], : self.image_shape[1]]
            mask = (rows - clicks[0].row) ** 2 + (cols - clicks[0].col) ** 2 <= (4 * self.calls) ** 2
            return SegmentResult(mask, None)

    image, _ = case
    session = Session(image, "segment the disk", ScriptedPolicy([point(True, *inside())]), Growing())
    stop = run_all(session)[-1]
    assert stop.reason == "repeated" and not stop.finished and len(session.steps) == 2


def test_a_policy_that_crashes_leaves_the_timeline_intact(case, classical):
    image, _ = case
    policy = ScriptedPolicy([point(True, *inside()), TERMINATE], fail_at=2)
    session = Session(image, "segment the disk", policy, classical)
    events = run_all(session)
    assert events[-1].reason == "error" and "crashed" in events[-1].message
    assert len(session.steps) == 1
    assert run_all(session)[-1].reason == "answered"  # the next run works


def test_cancel_before_and_during_generation(case, classical):
    image, _ = case
    cancel = threading.Event()
    cancel.set()
    session = Session(image, "segment the disk", ScriptedPolicy([point(True, *inside())]), classical)
    assert run_all(session, cancel)[-1].reason == "cancelled"
    slow = ScriptedPolicy([point(True, *inside(), " ".join(["word"] * 200))], delay=0.01)
    session = Session(image, "segment the disk", slow, classical)
    cancel = threading.Event()
    events = []
    for event in session.run(cancel):
        events.append(event)
        if isinstance(event, ThoughtDelta):
            cancel.set()
    assert events[-1].reason == "cancelled" and session.steps == []


def test_oracle_policy_drives_the_loop_in_both_profiles(case, classical):
    image, mask = case
    for profile in ("ibis-release", "paper"):
        session = Session(image, "disk", OraclePolicy(mask, stop_iou=0.8), classical, profile=profile, max_steps=10)
        events = run_all(session)
        assert events[-1].reason == "answered"  # the oracle answers once its mask reaches IoU 0.8
        assert (session.mask & mask).sum() / (session.mask | mask).sum() > 0.6


def test_trajectory_records_every_step(case, classical):
    image, _ = case
    session = Session(image, "segment the disk", ScriptedPolicy([point(True, *inside()), TERMINATE]), classical)
    run_all(session)
    record = json.loads(json.dumps(session.trajectory()))
    assert record["query"] == "segment the disk" and record["profile"] == "ibis-release"
    assert record["segmenter"]["name"] == "classical" and record["policy"]["name"] == "scripted"
    first = record["steps"][0]
    assert first["clicks"][0]["row"] == 40 and first["clicks"][0]["model_xy"] == pytest.approx([0.5469, 0.4219])
    assert first["mask_area"] > 0 and first["thought"] and first["output"].startswith("<think>")
    assert record["stop"]["reason"] == "answered"


def test_bad_session_input_is_refused(case, classical):
    image, _ = case
    with pytest.raises(InputError, match="query is empty"):
        Session(image, "  ", ScriptedPolicy([TERMINATE]), classical)
    with pytest.raises(InputError, match="at least 8"):
        Session(np.zeros((5, 40)), "q", ScriptedPolicy([TERMINATE]), classical)


def test_a_brush_edit_is_a_step_that_replay_keeps(case, classical):
    image, mask = case
    policy = ScriptedPolicy([point(True, *inside()), TERMINATE])
    session = Session(image, "segment the disk", policy, classical, max_steps=1)
    run_all(session)
    painted = session.mask.copy()
    painted[0:5, 0:5] = True
    step = session.add_mask_edit(painted)
    assert step.kind == "edit" and step.source == "user" and np.array_equal(session.mask, painted)
    assert np.array_equal(session.replay(), painted)
    session.undo()
    assert not session.mask[0:5, 0:5].any()
    with pytest.raises(InputError, match="edited mask"):
        session.add_mask_edit(np.zeros((3, 3)))


def test_moving_off_the_accepted_step_withdraws_the_acceptance(case, classical):
    image, _ = case
    session = Session(image, "segment the disk", ScriptedPolicy([point(True, *inside()), TERMINATE]), classical)
    run_all(session)
    session.accept()
    session.reject()  # the accepted answer is dropped: exporting now must take what is shown
    assert session.accepted is None and session.cursor == 1
    session.accept()
    session.undo()
    assert session.accepted is None
    assert [int(before.sum()) for _, before in session.discarded] == [session.step_at(1).area]  # kept for training


class PlacingPolicy(ScriptedPolicy):
    """A scripted policy that places ``placed`` (a mask) before its first turn, as the pointer
    agent places an atlas region."""

    def __init__(self, replies, placed):
        super().__init__(replies)
        self.placed, self.asked = placed, 0

    def place(self, image, query, volume=None, cancel=None):
        from napari_ibis.policies.base import Placement

        self.asked += 1
        return None if self.placed is None else Placement(self.placed, "an atlas puts it here")


def test_a_placed_mask_is_the_first_step_and_the_agent_judges_it(case, classical):
    image, mask = case
    placed = np.zeros_like(mask)
    placed[30:50, 40:64] = True
    policy = PlacingPolicy([TERMINATE], placed)
    session = Session(image, "segment the disk", policy, classical)
    events = run_all(session)
    first, answer = session.steps
    assert first.kind == "placed" and first.source == "agent" and np.array_equal(first.mask, placed)
    assert "an atlas puts it here" in "".join(e.text for e in events if isinstance(e, ThoughtDelta))
    from napari_ibis.transcript import Transcript

    transcript = Transcript()
    for event in events:
        transcript.follow(event, session)
    assert "Step 1 (agent)\n  an atlas puts it here\n  → places a mask; mask 480 px (+480)" in transcript.text()
    assert np.array_equal(policy.requests[0].mask, placed)  # the agent's first turn sees the placed mask
    assert answer.kind == "answer" and np.array_equal(session.mask, placed) and events[-1].reason == "answered"
    assert np.array_equal(session.replay(), placed)
    assert [s["kind"] for s in session.trajectory()["steps"]] == ["placed", "answer"]
    assert all("an atlas" not in str(m) for m in policy.requests[0].messages)  # a placement is not a model turn
    session.undo()
    session.undo()
    assert not session.mask.any()
    run_all(session)  # asked once per session: after undoing it the agent clicks from nothing
    assert policy.asked == 1 and session.steps[0].kind == "answer"


@pytest.mark.parametrize("init, placed", [("mask", "box"), (None, "wrong shape"), (None, "empty")])
def test_no_placement_over_an_imported_mask_nor_from_an_unusable_one(case, classical, init, placed):
    image, mask = case
    box = np.zeros_like(mask)
    box[30:50, 40:64] = True
    offered = {"box": box, "wrong shape": np.ones((5, 5), bool), "empty": np.zeros_like(mask)}[placed]
    policy = PlacingPolicy([TERMINATE], offered)
    session = Session(image, "segment the disk", policy, classical, init_mask=mask if init else None)
    run_all(session)
    assert [s.kind for s in session.steps] == ["answer"]
    assert np.array_equal(session.mask, mask if init else np.zeros_like(mask))
    assert policy.asked == (0 if init else 1)


class _Seeing(Segmenter):
    """A segmenter that keeps each image it embeds and marks a disk around the first click."""

    def _embed(self, image):
        self.seen = getattr(self, "seen", []) + [image.copy()]

    def _segment(self, clicks, prior):
        rows, cols = np.ogrid[: self.image_shape[0], : self.image_shape[1]]
        return SegmentResult((rows - clicks[0].row) ** 2 + (cols - clicks[0].col) ** 2 <= 36, None)


def _ct_slice():
    """A CT slice in Hounsfield units: air around a 40 HU body holding a 70 HU organ and a 700 HU bone."""
    rows, cols = np.ogrid[:96, :96]
    image = np.full((96, 96), -1000.0, dtype=np.float32)
    image[(rows - 48) ** 2 + (cols - 48) ** 2 <= 42 ** 2] = 40
    image[(rows - 40) ** 2 + (cols - 52) ** 2 <= 12 ** 2] = 70
    image[(rows - 70) ** 2 + (cols - 40) ** 2 <= 6 ** 2] = 700
    return image


def test_on_a_ct_a_click_on_soft_tissue_shows_the_segmenter_a_window_centred_there():
    from napari_ibis.overlay import to_rgb8

    image = _ct_slice()
    segmenter = _Seeing()
    session = Session(image, "segment the organ", ScriptedPolicy([point(True, *inside()), TERMINATE]), segmenter)
    assert np.array_equal(segmenter.seen[-1], session.rgb)  # before any click: the agent's view
    run_all(session)
    assert session.segmenter_window == "ct:70,400"
    assert np.array_equal(segmenter.seen[-1], to_rgb8(image, "ct:70,400"))
    organ, body = segmenter.seen[-1][40, 52, 0], segmenter.seen[-1][40, 80, 0]
    assert int(organ) - int(body) >= 15 > int(session.rgb[40, 52, 0]) - int(session.rgb[40, 80, 0])
    assert session.trajectory()["segmenter_window"] == "ct:70,400"
    # a person's click after another slice was embedded (a propagation shares the segmenter)
    segmenter.set_image(np.zeros((96, 96, 3), np.uint8))
    step = session.add_click(45, 52, True)
    assert np.array_equal(segmenter.seen[-1], to_rgb8(image, "ct:70,400")) and step.mask[45, 52]
    assert np.array_equal(session.replay(), session.mask)


@pytest.mark.parametrize("where", ["bone", "not ct", "window chosen"])
def test_the_segmenter_sees_the_agents_view_off_soft_tissue_or_off_ct(where):
    image = _ct_slice()
    x, y = (40.5 / 96, 70.5 / 96) if where == "bone" else inside()
    window = "ct:40,400" if where == "window chosen" else None
    if where == "not ct":
        image = image + 1024  # an MRI's or an unrescaled CT's values: never below zero
    segmenter = _Seeing()
    session = Session(image, "segment it", ScriptedPolicy([point(True, x, y), TERMINATE]), segmenter, window=window)
    run_all(session)
    assert session.segmenter_window is None
    assert all(np.array_equal(seen, session.rgb) for seen in segmenter.seen)


def test_the_click_simulator_can_segment_a_ct_start_slice_as_a_session_shows_it():
    from napari_ibis.evaluation import oracle_start
    from napari_ibis.overlay import to_rgb8

    image = _ct_slice()
    organ = image == 70
    segmenter = _Seeing()
    oracle_start(segmenter, max_clicks=1, as_session=True)(to_rgb8(image), organ, image)
    assert np.array_equal(segmenter.seen[-1], to_rgb8(image, "ct:70,400"))
    oracle_start(segmenter, max_clicks=1, as_session=True)(to_rgb8(image), image == 700, image)  # bone: the agent's view
    assert np.array_equal(segmenter.seen[-1], to_rgb8(image))
    oracle_start(segmenter, max_clicks=1)(to_rgb8(image, "ct:0,100"), organ, image)  # the protocol's default
    assert np.array_equal(segmenter.seen[-1], to_rgb8(image, "ct:0,100"))
