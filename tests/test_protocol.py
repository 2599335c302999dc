import random
import string

import numpy as np
import pytest

from napari_ibis.protocol import Action, ActionParseError, Response, Turn, get_profile, parse

RELEASE = get_profile("ibis-release")
PAPER = get_profile("paper")


def test_release_point_is_parsed_with_image_relative_coordinates():
    r = parse("<think>\nthe lesion is bright\n</think>\n<action>\nPositive Point (0.5000, 0.2500)\n</action>")
    assert r.thought == "the lesion is bright"
    assert r.actions == (Action(True, 0.5, 0.25),)
    assert not r.terminate and r.answer is None


@pytest.mark.parametrize("word", ["Terminate", "Termination"])
def test_release_accepts_both_terminate_words(word):
    r = parse(f"<think>ok</think><action>{word}</action><answer>The tumour is segmented.</answer>")
    assert r.terminate and r.actions == () and r.answer == "The tumour is segmented."


def test_release_pixel_conversion_is_int_x_times_w_clamped():
    act = Action(False, 1.0, 0.9999)
    assert RELEASE.to_pixel(act, 100, 200) == (99, 199)
    assert RELEASE.to_pixel(Action(True, 0.25, 0.5), 100, 200) == (50, 50)


@pytest.mark.parametrize("profile", ["ibis-release", "paper"])
def test_every_pixel_round_trips_through_the_model_text(profile):
    prof = get_profile(profile)
    for height, width in [(9, 13), (512, 512), (1955, 1841)]:
        for row, col in [(0, 0), (height - 1, width - 1), (height // 3, width // 7)]:
            action = prof.action_at(row, col, True, height, width)
            text = prof.format(Response(thought="t", actions=(action,)))
            parsed = prof.parse(text).actions[0]
            if profile == "ibis-release":
                assert prof.to_pixel(parsed, height, width) == (row, col)
            else:  # 0-1000 grid: within one grid cell
                r, c = prof.to_pixel(parsed, height, width)
                assert abs(r - row) <= height / 1000 + 1 and abs(c - col) <= width / 1000 + 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("<think>hmm</think>", "no <action>"),
        ("<action>Positive Point (0.1, 0.2)", "never closes"),
        ("<action>Positive Point (0.1, 0.2)</action><action>Terminate</action>", "2 <action> blocks"),
        ("<action>Positive Point (0.1, 0.2) Negative Point (0.3, 0.4)</action>", "two actions"),
        ("<action>Positive Point (1.2, 0.2)</action>", "outside the image"),
        ("<action>Negative Point (0.2, -0.1)</action>", "outside the image"),
        ("<action>Click here</action>", "cannot read"),
        ("x" * 40_000, "characters long"),
    ],
)
def test_release_bad_output_raises_one_typed_error_with_a_message(text, message):
    with pytest.raises(ActionParseError, match=message):
        parse(text)


def test_release_formats_what_the_reward_function_expects():
    text = RELEASE.format(Response(thought="ok", actions=(Action(True, 0.5, 0.25),)))
    assert text == "<think>\nok\n</think>\n<action>\nPositive Point (0.5000, 0.2500)\n</action>"
    assert "<action>\nTermination\n</action>" in RELEASE.format(Response(thought="ok", terminate=True, answer="done"))


def test_paper_profile_reads_several_triples_and_keywords():
    r = parse("<think>t</think><action>(liver, positive, (500, 250)); (liver, negative, (100, 1000))</action>", "paper")
    assert r.actions == (Action(True, 0.5, 0.25, "liver"), Action(False, 0.1, 1.0, "liver"))
    assert parse("<action>End</action><answer>done</answer>", "paper").terminate
    assert parse("<action>Undo</action>", "paper").undo
    absent = parse("<action>Not present</action><answer>No tumour here.</answer>", "paper")
    assert absent.terminate and absent.not_present and absent.answer == "No tumour here."


@pytest.mark.parametrize(
    "body",
    [
        "(liver, positive, (500, 250)); (liver, negative, (500, 250))",
        "(liver, positive, (500, 250)); End",
        "(liver, positive, (1500, 250))",
        "",
    ],
)
def test_paper_profile_rejects_conflicts_and_out_of_range(body):
    with pytest.raises(ActionParseError):
        parse(f"<action>{body}</action>", "paper")


def test_release_history_is_off_and_refinement_prompt_is_verbatim():
    image = np.zeros((8, 8, 3), np.uint8)
    first = RELEASE.user_text("segment the liver", first=True)
    later = RELEASE.user_text("segment the liver", first=False)
    assert first == "<image>segment the liver"
    assert later == (
        '<image>This is a refinement step. User\'s original query: "segment the liver". Do you think the image '
        "with semi-transparent green mask need further segmentation? If so, please use point action; otherwise, "
        "use Terminate action."
    )
    turns = [Turn(image, first, "reply 1"), Turn(image, later)]
    messages = RELEASE.messages(turns)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"][0]["text"].startswith("You are a precise and expert medical segmentation agent.")
    assert [m["role"] for m in RELEASE.messages(turns, use_history=True)] == ["system", "user", "assistant", "user"]
    assert [m["role"] for m in PAPER.messages(turns)] == ["system", "user", "assistant", "user"]


def _mutations(rng: random.Random, seeds: list[str]):
    alphabet = string.printable + "<>/()，。éß\x00\u200b"
    for _ in range(10_000):
        choice = rng.random()
        if choice < 0.3:
            yield "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))
        else:
            text = list(rng.choice(seeds))
            for _ in range(rng.randint(1, 8)):
                op = rng.random()
                position = rng.randint(0, len(text))
                if op < 0.4 and text:
                    del text[min(position, len(text) - 1)]
                elif op < 0.8:
                    text.insert(position, rng.choice(alphabet))
                else:
                    text[position:position] = list(rng.choice(seeds))
            yield "".join(text)


def test_fuzzed_outputs_raise_nothing_but_the_typed_error():
    rng = random.Random(1234)
    seeds = [
        "<think>\na\n</think>\n<action>\nPositive Point (0.5000, 0.2500)\n</action>",
        "<think>b</think><action>Termination</action><answer>ok</answer>",
        "<think>c</think><action>(liver, negative, (12, 999)); (liver, positive, (1, 2))</action>",
        "<action>Not present</action><answer>none</answer>",
        "<action>Undo</action>",
    ]
    counted = {"ok": 0, "error": 0}
    for text in _mutations(rng, seeds):
        for profile in ("ibis-release", "paper"):
            try:
                response = parse(text, profile)
            except ActionParseError as exc:
                assert str(exc) and "\n" not in str(exc)
                counted["error"] += 1
                continue
            counted["ok"] += 1
            for action in response.actions:
                assert 0.0 <= action.x <= 1.0 and 0.0 <= action.y <= 1.0
    assert counted["ok"] > 100 and counted["error"] > 100
