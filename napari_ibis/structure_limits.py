"""What propagation may assume about the structure a query names (text only, no model).

Propagation follows a mask from slice to slice and cannot see where one vertebra ends and the
next begins, or tell a liver that narrows from one that takes in its neighbour. The query says
which structure it is, and for two kinds anatomy says more than the slices do:

- **one vertebra** ("the L3 vertebra", "segment the vertebra", not "the vertebrae" or "the
  spine"): it reaches at most :data:`VERTEBRA_REACH_MM` above and below its widest slice, so
  propagation stops there instead of running on into the next vertebrae, which look the same
  to the segmenter and its encoder (docs/BENCHMARKS.md, "One vertebra: as far as a vertebra
  reaches");
- **a solid organ whose tissue looks alike throughout** (:data:`UNIFORM_ORGANS`: the liver, the
  spleen): a part of its propagated mask that looks like the start slice's surroundings rather
  than like the organ is a neighbour it has taken in, so propagation reads the slice again with a
  negative click there. Not for hollow organs, bowel or vessels, whose contents change from
  slice to slice and look unlike their own start (measured: the stomach and the small bowel lose
  half their Dice), nor for names this module does not know.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A thoracic or lumbar vertebra's TotalSegmentator label reaches 9-33 mm above or below its widest
# axial slice on the training patients (abdominal CT, S1-T12, 3 mm; thorax CT, T12, 1.5 mm): 35 mm
# leaves a cervical or a tall person's vertebra room (docs/BENCHMARKS.md).
VERTEBRA_REACH_MM = 35.0
UNIFORM_ORGANS = ("liver", "spleen")

_ONE_VERTEBRA = re.compile(r"\bvertebra\b|\bvertebral body\b", re.IGNORECASE)  # "the L3 vertebra", "vertebra L4"
_MANY_VERTEBRAE = re.compile(r"\bvertebrae\b|\bspine\b|\bspinal column\b|\bvertebral column\b|\bsacrum\b",
                             re.IGNORECASE)
_UNIFORM = re.compile(r"\b(" + "|".join(UNIFORM_ORGANS) + r")\b", re.IGNORECASE)
_NOT_THE_ORGAN = re.compile(r"\b(tumou?rs?|lesions?|metastas[ie]s|cysts?|nodules?|vessels?|veins?|arter(y|ies)|"
                            r"hilum|hilar|flexure)\b", re.IGNORECASE)


@dataclass(frozen=True)
class StructureLimits:
    """What anatomy says about a structure, for :class:`~napari_ibis.propagation.Propagation`."""

    reach_mm: float | None = None  # farthest from the start slice the structure goes (None: no limit)
    uniform: bool = False  # a solid organ that looks alike throughout: an unlike part of its mask is a neighbour
    why: str = ""  # the structure these limits are for, as a person reads it in a stop reason

    def reach_slices(self, slice_spacing_mm: float | None) -> int | None:
        """How many slices from the start the structure may go, on slices ``slice_spacing_mm``
        apart; None where there is no limit or the spacing is not known."""
        if self.reach_mm is None or not slice_spacing_mm or slice_spacing_mm <= 0:
            return None
        return int(self.reach_mm // slice_spacing_mm)


def limits_for(query: str | None) -> StructureLimits:
    """The limits for the structure ``query`` names; none for a query this module does not read."""
    text = query or ""
    if _ONE_VERTEBRA.search(text) and not _MANY_VERTEBRAE.search(text):
        return StructureLimits(reach_mm=VERTEBRA_REACH_MM, why="a vertebra")
    organ = _UNIFORM.search(text)
    if organ and not _NOT_THE_ORGAN.search(text):
        return StructureLimits(uniform=True, why=f"the {organ.group(1).lower()}")
    return StructureLimits()
