import numpy as np
from fake_openai import FakeServer

from napari_ibis.segmenters import build_segmenter
from training.data.sources import phantom_samples
from training.data.teacher import Teacher, oracle_view
from training.data.trajectories import simulate


def _liver():
    return next(s for s in phantom_samples([0]) if s.target == "liver")


def test_teacher_thoughts_replace_the_synthesised_ones_when_clean():
    good = "The liver extends further down than the green mask; I add a positive point on its lower part."
    server = FakeServer(good)
    try:
        teacher = Teacher(server.url, "teacher-model")
        trajectory = simulate(_liver(), build_segmenter("classical"), np.random.default_rng(0), stop_iou=0.85,
                              max_steps=3, reasoner=teacher)
    finally:
        server.close()
    clicks = [m for m in trajectory.moves if m.click is not None]
    assert clicks and all(m.thought == good for m in clicks)
    assert teacher.counts["accepted"] == len(clicks)
    # the endpoint saw the oracle view as an inline image and the target's name
    body = server.seen[0]["body"]
    assert body["messages"][1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert "liver" in body["messages"][0]["content"][0]["text"]


def test_leaking_or_failing_teachers_fall_back_to_synthesised_reasoning():
    leaking = FakeServer("The blue outline shows the liver ground truth is larger.")
    try:
        teacher = Teacher(leaking.url, "m")
        thought = teacher("liver", "CT", np.zeros((32, 32)), np.ones((32, 32), bool), None, 5, 5, True, "fallback")
    finally:
        leaking.close()
    assert thought == "fallback" and teacher.counts == {"accepted": 0, "rejected": 1, "failed": 0}
    broken = FakeServer("unused", failures=5, status=503)
    try:
        teacher = Teacher(broken.url, "m")
        thought = teacher("liver", "CT", np.zeros((32, 32)), np.ones((32, 32), bool), None, 5, 5, True, "fallback")
    finally:
        broken.close()
    assert thought == "fallback" and teacher.counts["failed"] == 1


def test_the_oracle_view_marks_the_outline_and_the_click():
    truth = np.zeros((40, 40), bool)
    truth[10:30, 10:30] = True
    view = oracle_view(np.full((40, 40), 100, np.uint8), truth, None, 20, 20)
    assert tuple(view[10, 15]) == (40, 80, 255) and tuple(view[20, 20]) == (255, 230, 0)
    assert tuple(view[20, 15]) == (100, 100, 100)
