import dataclasses
import json
import threading

import numpy as np
import pytest
import torch
from conftest import disk_image, point
from fake_openai import FakeServer

from napari_ibis.errors import Cancelled, ModelError
from napari_ibis.policies import load_policy
from napari_ibis.policies.base import PolicyRequest
from napari_ibis.policies.remote import RemotePolicy
from napari_ibis.policies.vlm import VLMPolicy, attention_backends, inspect_model_folder, pick_device
from napari_ibis.protocol import Turn, get_profile
from napari_ibis.segmenters import build_segmenter
from napari_ibis.session import Session, Stopped, ThoughtDelta


def request(profile="ibis-release"):
    prof = get_profile(profile)
    image = np.full((40, 60, 3), 90, np.uint8)
    messages = prof.messages([Turn(image, prof.user_text("segment the disk", True))])
    return PolicyRequest(prof, "segment the disk", image, None, (), 1, messages)


# -- local VLM folders ------------------------------------------------------------------
@pytest.mark.parametrize("model_type", ["qwen3_vl", "qwen2_5_vl"])
def test_tiny_qwen_vl_folders_load_and_stream(tiny_vlm_folder, model_type, tmp_path):
    from training.sft.tiny import TinyConfig, build_tiny_vlm

    folder = tiny_vlm_folder  # the project's own class: Qwen3-VL; the release's: Qwen2.5-VL
    if model_type != "qwen3_vl":
        folder = build_tiny_vlm(tmp_path / "m", ["segment the disk"] * 3, TinyConfig(model_type=model_type, text_first=False))
    policy = VLMPolicy(folder, max_new_tokens=12)
    assert policy.identity()["model_type"] == model_type and policy.device == pick_device("auto")
    inputs = policy.encode(request().messages)
    grid = inputs["image_grid_thw"][0].tolist()
    image_tokens = int((inputs["input_ids"] == policy.model.config.image_token_id).sum())
    assert image_tokens == grid[0] * grid[1] * grid[2] // 4  # merge 2x2
    pieces = []
    text = policy.respond(request(), on_text=pieces.append)
    assert pieces and "".join(pieces) == text


def test_the_small_models_vision_positions_start_as_sin_cos_and_survive_saving(tiny_vlm_folder):
    from training.sft.tiny import sincos_table

    table = VLMPolicy(tiny_vlm_folder, device="cpu").model.model.visual.pos_embed.weight.detach()
    assert torch.allclose(table, sincos_table(int(table.shape[0] ** 0.5), table.shape[1]))


def test_generation_on_cuda_leaves_out_cudnn_attention_and_restores_it_after():
    # cuDNN's attention builds a plan for every new key length: 6x slower replies on an H100
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with attention_backends("cuda:0"):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    with attention_backends("cpu"):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before


def test_the_vlm_session_loop_runs_end_to_end(tiny_vlm_folder):
    image, _ = disk_image(64)
    policy = VLMPolicy(tiny_vlm_folder, max_new_tokens=16)
    session = Session(image, "segment the disk", policy, build_segmenter("classical"), max_steps=2)
    events = list(session.run())
    assert any(isinstance(e, ThoughtDelta) for e in events)
    # a random model writes nonsense: the run stops cleanly at the first reply, saying why
    assert isinstance(events[-1], Stopped) and events[-1].reason == "unparsable" and "<action>" in events[-1].message
    assert session.steps == [] and len(session.rejected_outputs) == 1


def test_training_rollouts_and_the_widgets_agent_generate_the_same_way(tiny_vlm_folder):
    from training.rl.rollout import SamplingPolicy

    loaded = VLMPolicy(tiny_vlm_folder, max_new_tokens=12)
    training = SamplingPolicy(loaded.model, loaded.processor, temperature=0.0, max_new_tokens=12)
    assert training.respond(request()) == loaded.respond(request())  # one generation path, greedy alike
    sampled = SamplingPolicy(loaded.model, loaded.processor, temperature=1.0, max_new_tokens=12)
    assert len({sampled.respond(request()) for _ in range(4)}) > 1  # its own temperature: rollouts differ


def test_a_policy_asked_to_sample_varies_and_reproduces_with_its_seed(tiny_vlm_folder):
    policy = VLMPolicy(tiny_vlm_folder, max_new_tokens=12)
    greedy = [policy.respond(request()) for _ in range(2)]
    assert greedy[0] == greedy[1]  # temperature 0: the release's greedy decoding
    sampled = {seed: policy.respond(dataclasses.replace(request(), temperature=1.0, seed=seed)) for seed in range(5)}
    assert len(set(sampled.values())) > 1
    assert policy.respond(dataclasses.replace(request(), temperature=1.0, seed=3)) == sampled[3]


def test_stop_during_generation(tiny_vlm_folder):
    policy = VLMPolicy(tiny_vlm_folder, max_new_tokens=400)
    cancel = threading.Event()

    def stop_soon(_piece):
        cancel.set()

    with pytest.raises(Cancelled):
        policy.respond(request(), on_text=stop_soon, cancel=cancel)


def test_folders_that_are_not_supported_vlms_are_refused(tmp_path, tiny_vlm_folder):
    with pytest.raises(ModelError, match="not found"):
        load_policy(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        inspect_model_folder(tmp_path / "empty")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelError, match="'bert' model"):
        inspect_model_folder(bert)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((tiny_vlm_folder / "config.json").read_text())
    with pytest.raises(ModelError, match="no weights"):
        inspect_model_folder(partial)


def test_without_the_bundled_agent_the_default_says_what_to_do(monkeypatch):
    import napari_ibis.policies as policies

    monkeypatch.setattr(policies, "DEFAULT_MODEL", ("models", "not-there"))
    monkeypatch.setattr(policies, "POINTER_MODEL", ("models", "not-there-either"))
    with pytest.raises(ModelError, match="--model"):
        load_policy(None)


# -- remote endpoint (loopback fake of an OpenAI-compatible server) ----------------------
def test_remote_policy_streams_and_keeps_the_key_secret(monkeypatch):
    monkeypatch.setenv("IBIS_API_KEY", "sk-secret-123")
    server = FakeServer(point(True, 0.5, 0.25))
    try:
        policy = RemotePolicy(server.url, model="ibis-7b")
        pieces = []
        text = policy.respond(request(), on_text=pieces.append)
        assert len(pieces) > 3 and "Positive Point (0.5000, 0.2500)" in text
        sent = server.seen[0]
        assert sent["headers"]["Authorization"] == "Bearer sk-secret-123"
        content = sent["body"]["messages"][1]["content"]
        assert content[0]["image_url"]["url"].startswith("data:image/png;base64,")
        assert content[1]["text"] == "<image>segment the disk"
        assert "sk-secret" not in json.dumps(policy.identity())
        image, _ = disk_image(64)
        session = Session(image, "segment the disk", policy, build_segmenter("classical"), max_steps=1)
        list(session.run())
        assert "sk-secret" not in json.dumps(session.trajectory())
        assert sent["body"]["temperature"] == 0.0 and "seed" not in sent["body"]
        policy.respond(dataclasses.replace(request(), temperature=0.7, seed=12))
        assert server.seen[-1]["body"]["temperature"] == 0.7 and server.seen[-1]["body"]["seed"] == 12
    finally:
        server.close()


def test_remote_policy_retries_server_errors_and_reports_client_errors():
    server = FakeServer(point(False, 0.1, 0.1), failures=2, status=503)
    try:
        assert "Negative Point" in RemotePolicy(server.url, retries=2).respond(request())
        assert len(server.seen) == 3
    finally:
        server.close()
    server = FakeServer("x", failures=5, status=401)
    try:
        with pytest.raises(ModelError, match="HTTP 401"):
            RemotePolicy(server.url, retries=2).respond(request())
        assert len(server.seen) == 1
    finally:
        server.close()
    with pytest.raises(ModelError, match="cannot reach"):
        RemotePolicy("http://127.0.0.1:9/v1", retries=0, timeout=2).respond(request())


@pytest.mark.parametrize("model_type", ["qwen3_vl", "qwen2_5_vl"])
def test_the_conversation_cache_is_reused_with_the_same_replies(tiny_vlm_folder, model_type, tmp_path):
    from training.sft.tiny import TinyConfig, build_tiny_vlm

    folder = tiny_vlm_folder
    if model_type != "qwen3_vl":
        folder = build_tiny_vlm(tmp_path / "m", ["segment the disk"] * 3, TinyConfig(model_type=model_type, text_first=False))
    reusing, fresh = VLMPolicy(folder, max_new_tokens=12), VLMPolicy(folder, max_new_tokens=12)
    fresh.reuse_cache = False
    profile = get_profile("paper")  # history on: every earlier image and reply is sent again
    image, truth = disk_image(112)
    rgb = np.stack([image] * 3, axis=-1)
    turns, seen = [], []
    for step, mask in enumerate([None, truth & (np.arange(112)[:, None] < 40), truth]):
        turns.append(Turn(profile.observation(rgb, mask), profile.user_text("segment the disk", first=step == 0)))
        ask = PolicyRequest(profile, "segment the disk", rgb, mask, (), step + 1, profile.messages(turns, True))
        reply = reusing.respond(ask)
        assert reply == fresh.respond(ask)  # the cache changes the cost, not the words
        seen.append(dict(reusing.last_generation))
        turns[-1] = Turn(turns[-1].image, turns[-1].text, reply)
    assert seen[0]["reused_tokens"] == 0
    for earlier, later in zip(seen, seen[1:]):  # each turn prefills only what is new since the last reply
        assert later["reused_tokens"] > earlier["prompt_tokens"] - 2
        assert later["prompt_tokens"] - later["reused_tokens"] < earlier["prompt_tokens"]


def test_a_served_model_sees_each_history_request_extend_the_last_one(tmp_path):
    """With history on, request k+1 starts with request k's messages unchanged (same bytes,
    images included), so a server's prefix cache (vLLM's) applies to all of it."""
    from napari_ibis.protocol import Response

    paper = get_profile("paper")
    server = FakeServer(paper.format(Response(thought="the disk", actions=(paper.action_at(40, 52, True, 96, 96),))))
    try:
        image, _ = disk_image(96, centre=(40, 52), radius=14)
        session = Session(image, "segment the disk", RemotePolicy(server.url), build_segmenter("classical"),
                          profile="paper", max_steps=3)
        list(session.run())
    finally:
        server.close()
    sent = [seen["body"]["messages"] for seen in server.seen]
    assert len(sent) >= 2
    for earlier, later in zip(sent, sent[1:]):
        assert later[: len(earlier)] == earlier and later[len(earlier)]["role"] == "assistant"
