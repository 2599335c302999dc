"""Scale-out path: the IBIS environment as a verl agent loop and reward function.

verl (https://github.com/volcengine/verl) runs GRPO on GPU clusters with vLLM or
SGLang rollout servers. This module plugs the same environment that
:mod:`training.rl.rollout` uses in-process into it:

* :class:`IbisEnvironment`: one episode (slice, truth, segmenter, profile); the
  observation after each reply is the release's overlay image;
* :func:`run_episode`: the multi-turn loop over token ids. Model tokens get
  ``response_mask`` 1, the observation turns in between (user text, image
  tokens) 0, and every observation image is returned in ``multi_modal_data["images"]`` so
  the trainer can recompute log-probabilities over the whole conversation;
* ``IbisAgentLoop`` (registered as ``ibis_agent`` when verl is installed): wraps
  :func:`run_episode` around verl's ``server_manager.generate``;
* :func:`compute_score`: a verl ``custom_reward_function`` with the same terms
  as :mod:`training.rl.rewards` (the release's single-decision samples: the clicks
  so far are in ``extra_info``).

verl itself is optional; nothing here imports it unless it is installed. Imports are
absolute so that verl can load ``verl_reward.py`` (which re-exports the reward) by path. A
ready 8-GPU launcher is ``training/integrations/run_verl_grpo_8gpu.sh``.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from napari_ibis.metrics import iou
from napari_ibis.overlay import to_rgb8
from napari_ibis.policies.base import pil_messages
from napari_ibis.protocol import Turn, get_profile
from napari_ibis.segmenters.base import Click, Segmenter
from training.rl.rewards import DEFAULT_REWARDS, RewardConfig, parse_or_none, step_reward, trajectory_reward


@dataclass
class IbisEnvironment:
    """One episode: the slice, the true mask, the segmenter and the clicks so far."""

    image: np.ndarray
    truth: np.ndarray
    query: str
    segmenter: Segmenter
    profile: str = "ibis-release"
    rgb: np.ndarray = field(init=False)
    mask: np.ndarray = field(init=False)
    clicks: list[Click] = field(default_factory=list)
    logits: np.ndarray | None = None
    step_terms: list[dict] = field(default_factory=list)
    said_absent: bool = False

    def __post_init__(self) -> None:
        self.rgb = to_rgb8(self.image)
        self.mask = np.zeros(self.truth.shape, bool)
        self.segmenter.set_image(self.rgb)
        self._profile = get_profile(self.profile)

    def first_messages(self) -> list[dict]:
        turn = Turn(self._profile.observation(self.rgb, None), self._profile.user_text(self.query, first=True))
        return self._profile.messages([turn], use_history=False)

    def observation_turn(self) -> dict:
        """The user message that shows the mask after the last action."""
        turn = Turn(self._profile.observation(self.rgb, self.mask), self._profile.user_text(self.query, first=False))
        return self._profile.messages([turn], use_history=False)[-1]

    def step(self, reply: str, config: RewardConfig = DEFAULT_REWARDS) -> bool:
        """Apply one reply; records its reward terms; returns True when the episode is over."""
        response = parse_or_none(reply, self._profile)
        before = self.mask
        added: list[tuple[int, int, bool]] = []
        done = response is None or response.terminate or response.not_present
        if response is not None and response.actions:
            for action in response.actions:
                row, col = self._profile.to_pixel(action, *self.truth.shape)
                self.clicks.append(Click(row, col, action.positive, source="agent"))
                added.append((row, col, action.positive))
            result = self.segmenter.segment(self.clicks, self.logits)
            self.mask, self.logits = result.mask, result.logits
        if response is not None and (response.not_present or (response.terminate and not self.clicks)):
            self.said_absent = True
            self.mask = np.zeros_like(self.mask)
        self.step_terms.append(step_reward(reply, self.truth, before, self.mask, len(self.step_terms) + 1, added,
                                           self._profile, config))
        return done

    def reward(self, config: RewardConfig = DEFAULT_REWARDS) -> dict[str, float]:
        return trajectory_reward(self.step_terms, self.truth, self.mask, self.said_absent, config)


def _pil(messages: list[dict]) -> tuple[list[dict], list[Image.Image]]:
    """The messages with PIL images (:func:`pil_messages`) and those images in order, as verl wants them."""
    out = pil_messages(messages)
    return out, [item["image"] for message in out for item in message["content"] if item["type"] == "image"]


def token_ids(processor, messages: list[dict], generation_prompt: bool) -> list[int]:
    pil, _ = _pil(messages)
    encoded = processor.apply_chat_template(pil, add_generation_prompt=generation_prompt, tokenize=True, return_dict=True)
    ids = encoded["input_ids"]
    return list(ids[0] if ids and isinstance(ids[0], list) else ids)


def observation_ids(processor, system: dict, observation: dict) -> list[int]:
    """Tokens that close the model's turn and open the next: ``\\n``, the user turn with its image
    tokens, and the assistant header (the template's tokens after the system turn)."""
    alone = token_ids(processor, [system], generation_prompt=False)
    both = token_ids(processor, [system, observation], generation_prompt=True)
    if both[: len(alone)] != alone:
        raise ValueError("the chat template does not split at turn boundaries")
    newline = processor.tokenizer("\n", add_special_tokens=False)["input_ids"]
    return newline + both[len(alone):]


Generate = Callable[[str, list[int], dict, list], Awaitable[Any]]


async def run_episode(generate: Generate, processor, env: IbisEnvironment, sampling_params: dict, max_turns: int = 6,
                      max_response_tokens: int = 8192, config: RewardConfig = DEFAULT_REWARDS) -> dict:
    """The multi-turn loop on token ids; returns the fields of verl's AgentLoopOutput."""
    request_id = uuid.uuid4().hex
    messages = env.first_messages()
    prompt_ids = token_ids(processor, messages, generation_prompt=True)
    images = _pil(messages)[1]
    end_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    response_ids: list[int] = []
    response_mask: list[int] = []
    turns = 0
    while turns < max_turns:
        output = await generate(request_id, prompt_ids + response_ids, sampling_params, images)
        new_ids = list(getattr(output, "token_ids", output))
        turns += 1
        response_ids += new_ids
        response_mask += [1] * len(new_ids)
        reply = processor.tokenizer.decode([t for t in new_ids if t != end_id], skip_special_tokens=True)
        if env.step(reply, config) or len(response_ids) >= max_response_tokens:
            break
        if new_ids and new_ids[-1] != end_id:
            response_ids.append(end_id)
            response_mask.append(0)
        observation = env.observation_turn()
        chunk = observation_ids(processor, messages[0], observation)
        response_ids += chunk
        response_mask += [0] * len(chunk)
        images += _pil([observation])[1]
    reward = env.reward(config)
    return {
        "prompt_ids": prompt_ids,
        "response_ids": response_ids[:max_response_tokens],
        "response_mask": response_mask[:max_response_tokens],
        "multi_modal_data": {"images": images},
        "num_turns": 2 * turns,
        "reward_score": reward["total"],
        "extra_fields": {"reward_terms": reward, "final_iou": iou(env.truth, env.mask)},
    }


# -- verl reward function (single-decision samples, as the release trained) ---------------------
_SEGMENTERS: dict[str, Segmenter] = {}


def compute_score(data_source, solution_str: str, ground_truth, extra_info: dict) -> dict:
    """verl ``custom_reward_function``: the reward terms of one decision.

    ``extra_info`` keys: ``image`` and ``mask`` (file paths), ``clicks`` ([[row,
    col, positive], ...] placed so far), ``step`` (1-based), optional
    ``segmenter`` (default ``classical``) and ``profile``.
    """
    from napari_ibis.io import read_image
    from napari_ibis.segmenters import build_segmenter

    spec = extra_info.get("segmenter", "classical")
    segmenter = _SEGMENTERS.get(spec) or _SEGMENTERS.setdefault(spec, build_segmenter(spec))
    image = read_image(extra_info["image"]).slice
    truth = np.asarray(read_image(extra_info["mask"]).slice) > 0
    segmenter.set_image(to_rgb8(image))
    clicks = [Click(int(r), int(c), bool(p)) for r, c, p in extra_info.get("clicks", [])]
    before = segmenter.segment(clicks).mask if clicks else np.zeros(truth.shape, bool)
    profile = get_profile(extra_info.get("profile", "ibis-release"))
    response = parse_or_none(solution_str, profile)
    added = [(*profile.to_pixel(a, *truth.shape), a.positive) for a in response.actions] if response else []
    after = before
    if added:
        after = segmenter.segment(clicks + [Click(r, c, p) for r, c, p in added]).mask
    terms = step_reward(solution_str, truth, before, after, int(extra_info.get("step", 1)), added, profile)
    return {"score": terms["total"], **terms}


try:  # verl is optional: the agent loop exists only where verl is installed
    from verl.experimental.agent_loop.agent_loop import (
        AgentLoopBase,
        AgentLoopMetrics,
        AgentLoopOutput,
        register,
    )
except ImportError:
    AgentLoopBase = None

if AgentLoopBase is not None:

    @register("ibis_agent")
    class IbisAgentLoop(AgentLoopBase):
        """verl agent loop: rows carry ``extra_info`` with image, mask, query (and segmenter/profile)."""

        async def run(self, sampling_params: dict[str, Any], **kwargs) -> AgentLoopOutput:
            from napari_ibis.io import read_image
            from napari_ibis.segmenters import build_segmenter

            info = kwargs.get("extra_info", {})
            env = IbisEnvironment(read_image(info["image"]).slice, np.asarray(read_image(info["mask"]).slice) > 0,
                                  info["query"], build_segmenter(info.get("segmenter", "classical")),
                                  info.get("profile", "paper"))

            async def generate(request_id, prompt_ids, params, images):
                call = self.server_manager.generate(request_id=request_id, prompt_ids=prompt_ids,
                                                    sampling_params=params, image_data=images)
                return await call if inspect.isawaitable(call) else call

            out = await run_episode(generate, self.processor, env, sampling_params,
                                    max_turns=int(info.get("max_turns", 6)),
                                    max_response_tokens=self.rollout_config.response_length)
            return AgentLoopOutput(**out, metrics=AgentLoopMetrics())


def write_verl_dataset(samples, folder, split: str = "train", max_turns: int = 6, segmenter: str = "classical",
                       profile: str = "paper", seed: int = 0) -> str:
    """A verl RL parquet of image-mask samples for the ``ibis_agent`` loop; returns its path.

    Each row holds the first user turn (``prompt`` with an ``<image>`` placeholder
    and ``images``), ``agent_name: ibis_agent`` and ``extra_info`` with the PNG
    paths of the slice and its mask, the query and the loop settings.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from training.data import text

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    profile_obj = get_profile(profile)
    rows = []
    for index, sample in enumerate(samples):
        image_path, mask_path = folder / "images" / f"{split}_{index:05d}.png", folder / "images" / f"{split}_{index:05d}_mask.png"
        rgb = to_rgb8(sample.image)
        Image.fromarray(rgb).save(image_path)
        Image.fromarray(sample.mask.astype(np.uint8) * 255).save(mask_path)
        query = text.query(sample.target, sample.modality, rng)
        rows.append({
            "data_source": "napari-ibis",
            "agent_name": "ibis_agent",
            "prompt": [{"role": "system", "content": profile_obj.system_prompt()},
                       {"role": "user", "content": "<image>" + profile_obj.user_text(query, first=True)}],
            "images": [{"image": str(image_path.resolve())}],
            "reward_model": {"style": "rule", "ground_truth": sample.target},
            "extra_info": {"image": str(image_path.resolve()), "mask": str(mask_path.resolve()), "query": query,
                           "target": sample.target, "source": sample.source, "segmenter": segmenter,
                           "profile": profile, "max_turns": max_turns, "clicks": [], "step": 1},
        })
    path = folder / f"{split}.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)
