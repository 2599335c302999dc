"""Shared fixtures: synthetic images with known masks, scripted policies, a tiny VLM folder."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from napari_ibis.policies.base import Located, Policy, PolicyRequest


def disk_image(size: int = 96, centre=(40, 52), radius: int = 14, seed: int = 0):
    """A grey image with one bright disk on a noisy background, and the disk's mask."""
    rng = np.random.default_rng(seed)
    rows, cols = np.ogrid[:size, :size]
    mask = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2
    image = 40 + rng.normal(0, 4, (size, size))
    image[mask] += 150
    return np.clip(image, 0, 255).astype(np.uint8), mask


class ScriptedPolicy(Policy):
    """Replies with canned texts in order (the last one repeats), streaming word by word."""

    name = "scripted"

    def __init__(self, replies, delay: float = 0.0, fail_at: int | None = None):
        self.replies = list(replies)
        self.calls = 0
        self.delay = delay
        self.fail_at = fail_at
        self.requests: list[PolicyRequest] = []

    def respond(self, request, on_text=None, cancel=None):
        from napari_ibis.errors import Cancelled

        self.requests.append(request)
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("the model crashed")
        text = self.replies[min(self.calls - 1, len(self.replies) - 1)]
        pieces = text.split(" ")
        for i, piece in enumerate(pieces):
            if cancel is not None and cancel.is_set():
                raise Cancelled("stopped during generation")
            if self.delay:
                threading.Event().wait(self.delay)
            if on_text is not None:
                on_text(piece + (" " if i < len(pieces) - 1 else ""))
        return text


LARGEST = 37  # where ball_volume's disk is largest: not among find_slice's first 16 looks at 60 slices


def ball_volume(count: int = 60, largest: int | None = LARGEST, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A dark volume with a bright disk whose radius peaks at slice ``largest`` (None: no disk)."""
    rows, cols = np.ogrid[:size, :size]
    volume = np.full((count, size, size), 30, np.uint8)
    masks = np.zeros((count, size, size), bool)
    if largest is not None:
        for z in range(count):
            radius = 20 - 0.8 * abs(z - largest)
            if radius > 2:
                masks[z] = (rows - 32) ** 2 + (cols - 32) ** 2 <= radius**2
    volume[masks] = 220
    noise = np.random.default_rng(0).integers(-4, 5, volume.shape)
    return (volume + noise).astype(np.uint8), masks


class Locating(ScriptedPolicy):
    """Scripted turns, and a map that sees the bright disk: its area is the score."""

    name = "locating"

    def __init__(self, replies=None):
        super().__init__(list(replies or [TERMINATE]))
        self.looked_at = 0

    def locate(self, image, query, volume=None, cancel=None):
        self.looked_at += 1
        bright = image[..., 0] > 200
        return Located(score=float(bright.sum()), peak=0.9 if bright.any() else 0.05, present=bool(bright.any()))


class SeesItEverywhere(Locating):
    """A map that finds the structure on every slice (as the agent's does for a real tumour)."""

    def locate(self, image, query, volume=None, cancel=None):
        self.looked_at += 1
        return Located(score=100.0 + float(image[..., 0].mean()), peak=0.9, present=True)


def point(positive: bool, x: float, y: float, thought: str = "looking") -> str:
    sign = "Positive" if positive else "Negative"
    return f"<think>\n{thought}\n</think>\n<action>\n{sign} Point ({x:.4f}, {y:.4f})\n</action>"


TERMINATE = "<think>\nThe mask fits.\n</think>\n<action>\nTerminate\n</action>\n<answer>\nDone.\n</answer>"


@pytest.fixture(scope="session")
def tiny_vlm_folder(tmp_path_factory) -> Path:
    from napari_ibis.protocol import PROFILES
    from training.sft.tiny import build_tiny_vlm

    corpus = [p.system_prompt() for p in PROFILES.values()] + [point(True, 0.5, 0.25), TERMINATE] * 3
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny") / "model", corpus)


def run_on_two_processes(module: str, config: dict, folder: Path) -> dict:
    """Run ``python -m MODULE CONFIG`` as two CPU processes under torchrun; returns the training card."""
    import json
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = folder / "two-processes.json"
    path.write_text(json.dumps(config))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "-m", module, str(path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((Path(config["output"]) / "training_card.json").read_text())
