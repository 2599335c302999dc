"""First decisions made while training: an endless stream of new phantoms.

The grounding stage learns where a named structure lies from first decisions
(:func:`training.data.trajectories.first_move`): no segmenter runs, so a sample costs
about 5 ms to make and 7 ms to encode on one core. A fixed dataset folder of
10,000 phantoms is enough for 2 CPU cores, where the model's step is the cost; a
GPU gets through such a folder in minutes, and new phantoms teach more than the
same ones again, so there the grounding stage draws a new phantom for every sample
(``stream:`` in an SFT config, :class:`StreamConfig`). Data-loader workers make and
encode them while the GPU trains.

Each process and each worker takes its own lane of phantom seeds (``start_seed +
lane``, ``+ lanes``, ...), so no two see the same phantom, and none is a held-out
one: ``start_seed`` must lie above the seeds any evaluation here uses (90000-90099).
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

EVALUATION_SEEDS = range(90_000, 90_100)


@dataclass
class StreamConfig:
    """Where the streamed samples come from (the ``stream:`` keys of an SFT config)."""

    start_seed: int = 100_000  # the first phantom seed; must lie above the held-out seeds
    absent_probability: float = 0.1  # share of phantoms that also get a "not present" question
    workers: int = 0  # data-loader processes making samples (0: the training process makes them)
    shuffle_buffer: int = 256  # samples each worker mixes, so one phantom's structures spread over batches
    seed: int = 0

    def __post_init__(self):
        if self.start_seed <= EVALUATION_SEEDS.stop:
            raise ValueError(f"stream start_seed {self.start_seed} would reach the held-out phantoms "
                             f"(seeds {EVALUATION_SEEDS.start}-{EVALUATION_SEEDS.stop - 1}): start above {EVALUATION_SEEDS.stop}")


def rendered_first_moves(config: StreamConfig, profile: str, lane: int = 0, lanes: int = 1,
                         skip_phantoms: int = 0) -> Iterator:
    """Rendered first decisions (:class:`training.sft.RenderedSample`) of phantoms ``start_seed + lane + k * lanes``.

    ``skip_phantoms`` phantoms of the lane are passed over (a resumed run does not
    see again what it already learnt from).
    """
    from training.data.sources import phantom_samples
    from training.data.trajectories import first_move
    from training.samples import render

    for phantom_seed in itertools.count(config.start_seed + lane + skip_phantoms * lanes, lanes):
        for sample in phantom_samples([phantom_seed], absent_probability=config.absent_probability):
            digest = int.from_bytes(hashlib.sha256(sample.source.encode()).digest()[:8], "little")
            yield from render(first_move(sample, np.random.default_rng([config.seed, digest])), profile)


def _shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        index = rng.randrange(size)
        yield buffer[index]
        buffer[index] = item
    yield from buffer  # only reached by a finite source


class EncodedStream(torch.utils.data.IterableDataset):
    """An endless ``IterableDataset`` of encoded samples (:func:`training.sft.encode`).

    With data-loader workers each worker of each process has its own lane of seeds.
    """

    def __init__(self, config: StreamConfig, processor, profile: str, rank: int = 0, world: int = 1,
                 skip_phantoms: int = 0):
        self.config, self.processor, self.profile = config, processor, profile
        self.rank, self.world, self.skip_phantoms = rank, world, skip_phantoms

    def __iter__(self):
        from training.sft.encoding import encode

        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        lane, lanes = self.rank * workers + worker, self.world * workers
        rng = random.Random(self.config.seed * 1_000_003 + lane)
        samples = rendered_first_moves(self.config, self.profile, lane, lanes, self.skip_phantoms)
        for sample in _shuffled(samples, self.config.shuffle_buffer, rng):
            yield encode(self.processor, sample)


def batches(config: StreamConfig, processor, profile: str, batch_size: int, pad_id: int, rank: int = 0,
            world: int = 1, skip_phantoms: int = 0) -> Iterator[dict]:
    """Endless collated batches of ``batch_size`` streamed samples (:func:`training.sft.collate`)."""
    import functools

    from training.sft.encoding import collate

    loader = torch.utils.data.DataLoader(
        EncodedStream(config, processor, profile, rank, world, skip_phantoms), batch_size=batch_size,
        num_workers=config.workers, collate_fn=functools.partial(collate, pad_id=pad_id),
        persistent_workers=config.workers > 0, prefetch_factor=4 if config.workers > 0 else None)
    return iter(loader)

