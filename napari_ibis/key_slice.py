"""Find the slice of a volume to start on: where the agent sees the named structure best (no Qt).

A person who asks for "the liver" on a CT should not have to find a slice with the liver
first. :func:`find_slice` lets the policy look at slices spread evenly through the stack
(``looks`` of them, scored by :meth:`~napari_ibis.policies.base.Policy.locate`: for the
pointer agent, how large and clear its map's most likely region is), takes the middle one of
the slices where the structure looks clear (:func:`middle_of_clear`), then closes in, within
one step of it, on the best-scoring slice by halving the step. Where no slice looked at holds
the structure, the answer is that it is not in the volume, as a session on one slice would
answer for that slice. A lesion lies on a few slices; where the agent sees one on most of the even
first pass's slices (``LESION_EVERYWHERE``), its map does not know where the lesion is, and the
search says so (:attr:`KeySlice.unsure`) rather than present its slice as found.

Each slice is shown to the policy as a session would show it (its own window, square
pixels); a 112-slice CT costs about 20 looks, each one encoder pass and one map.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .errors import Cancelled, InputError
from .overlay import to_rgb8
from .policies.base import Located, Policy, VolumeSlice
from .square_pixels import SquareGrid

LOOKS = 16  # slices of the first, even pass (then about 2 log2(count / LOOKS) more close to the best)
CLEAR = 0.5  # of the best score: the slices where the structure looks clear (middle_of_clear)
LESION_EVERYWHERE = 0.6  # a lesion seen on this share of the first pass's slices, or more: KeySlice.unsure


@dataclass
class KeySlice:
    """Where the search ended: ``index`` is the slice to start on, None where no slice looked at
    holds the structure; ``looked`` maps each slice looked at to what the policy saw."""

    index: int | None
    count: int  # slices in the stack
    looked: dict[int, Located] = field(default_factory=dict)
    lesion: bool = False  # the query names a lesion (a tumour, a nodule), which lies on few slices
    spread: tuple[int, ...] = ()  # the slices of the first, even pass (a fair sample of the stack)

    @property
    def found(self) -> bool:
        return self.index is not None

    @property
    def seen_on(self) -> int:
        """Of the first pass's slices (spread evenly), those where the policy saw the structure."""
        return sum(self.looked[z].present for z in self.spread if z in self.looked)

    @property
    def unsure(self) -> bool:
        """A lesion seen on ``LESION_EVERYWHERE`` or more of the first pass's slices (at least
        four): the map does not tell where it is, and the chosen slice is a guess
        (docs/BENCHMARKS.md, "Finding the slice to start on")."""
        return self.found and self.lesion and len(self.spread) >= 4 and \
            self.seen_on >= LESION_EVERYWHERE * len(self.spread)

    def describe(self, target: str, plane: str = "") -> str:
        """One line for a person: where the search looked and what it chose."""
        where = f"{len(self.looked)} of the {self.count} {plane}slices"
        if self.index is None:
            return f"looked for {target} on {where}: not found on any"
        if self.unsure:
            return (f"looked for {target} on {where}: seen on {self.seen_on} of the {len(self.spread)} spread through "
                    f"the stack, but a lesion lies on few slices, so where it is cannot be told from them; slice "
                    f"{self.index} is a guess: check it, or go to the lesion yourself")
        return f"looked for {target} on {where}: seen clearly around slice {self.index}"

    def record(self) -> dict:
        """For a trajectory file: the choice and every slice looked at."""
        return {"slice": self.index, "count": self.count, "unsure": self.unsure,
                "looked": [{"slice": z, "score": round(seen.score, 1), "peak": round(seen.peak, 3),
                            "present": seen.present} for z, seen in sorted(self.looked.items())]}


def first_pass(count: int, looks: int = LOOKS) -> list[int]:
    """``looks`` slice indices spread evenly over ``count`` (each the middle of its share), or all."""
    if count <= looks:
        return list(range(count))
    return sorted({int((i + 0.5) * count / looks) for i in range(looks)})


def find_slice(stack: np.ndarray, query: str, policy: Policy, *, window: str | None = None, pixel_aspect: float = 1.0,
               looks: int = LOOKS, cancel: threading.Event | None = None, volume: VolumeSlice | None = None) -> KeySlice:
    """The slice of ``stack`` (Z, H, W) or (Z, H, W, 3) where ``policy`` sees ``query``'s structure best
    (:func:`search`, run to its end)."""
    for item in search(stack, query, policy, window=window, pixel_aspect=pixel_aspect, looks=looks, cancel=cancel,
                       volume=volume):
        if isinstance(item, KeySlice):
            return item
    raise AssertionError("search ends with its KeySlice")


def search(stack: np.ndarray, query: str, policy: Policy, *, window: str | None = None, pixel_aspect: float = 1.0,
           looks: int = LOOKS, cancel: threading.Event | None = None,
           volume: VolumeSlice | None = None) -> Iterator[tuple[int, Located] | KeySlice]:
    """Look for ``query``'s structure through ``stack``: yields (slice, what the policy saw) for
    each slice looked at, then the :class:`KeySlice`. ``cancel`` stops it
    (:class:`~napari_ibis.errors.Cancelled`); a policy that cannot locate (a language model)
    is refused with one line. ``volume``: ``stack`` as a policy that looks through a volume
    takes it (each slice's index set as it is looked at)."""
    stack = np.asarray(stack)
    if stack.ndim not in (3, 4) or len(stack) == 0:
        raise InputError(f"finding a slice needs a 3-D volume, not an array of shape {stack.shape}")
    from .grounding.vocabulary import names_a_lesion

    spread = first_pass(len(stack), looks)
    found = KeySlice(index=None, count=len(stack), lesion=names_a_lesion(query), spread=tuple(spread))

    def look(z: int) -> Located:
        if cancel is not None and cancel.is_set():
            raise Cancelled("stopped while looking for the slice")
        rgb = to_rgb8(stack[z], window)
        seen = policy.locate(SquareGrid(rgb.shape[:2], pixel_aspect).image(rgb), query,
                             None if volume is None else volume.at(z), cancel)
        if seen is None:
            raise InputError(f"the model {policy.name} cannot look for a structure through a volume; "
                             "choose the slice to start on (--slice N, or the slider)")
        found.looked[z] = seen
        return seen

    for z in spread:
        yield z, look(z)
    centre = middle_of_clear(found.looked)
    if centre is not None:  # closes in on the best slice within one first-pass step of the centre
        reach = step = len(stack) / min(looks, len(stack))
        chosen = centre
        while step > 1:
            step /= 2
            for z in (round(chosen - step), round(chosen + step)):
                if 0 <= z < len(stack) and abs(z - centre) < reach and z not in found.looked:
                    yield z, look(z)
            near = [z for z, seen in found.looked.items() if abs(z - centre) <= reach and seen.present]
            chosen = max(near, key=lambda z: found.looked[z].score)
        found.index = chosen
    yield found


def middle_of_clear(looked: dict[int, Located]) -> int | None:
    """The middle one (by slice) of the slices where the structure looks clear: present, and
    scoring at least ``CLEAR`` of the best score. One slice's score is noisy on a scan the agent
    never saw (its map's region may take in a neighbour on one slice and not the next), so the
    single best slice is often at the structure's end; the middle of the clear ones is where
    an organ is widest, and leaves propagation half the way in each direction."""
    present = {z: seen.score for z, seen in looked.items() if seen.present}
    if not present:
        return None
    top = max(present.values())
    clear = sorted(z for z, score in present.items() if score >= CLEAR * top)
    return clear[(len(clear) - 1) // 2]
