"""What a CT's Hounsfield units say without any training: where the lungs, the heart and the
trachea are, and whether a slice lies at the level of the chest.

On CT a voxel's value is physics: air is -1000 HU, lung (air with its vessels and walls) about
-850, fat about -100, soft tissue 20-60, bone above 200. So the lungs of any patient, on any
scanner, are the air inside the body; what else holds air there is gas in the gut, which is
purer air (its inner voxels' median below ``LUNG_MEDIAN_HU``; the lungs' median on four real CTs
lay between -871 and -793 HU, the stomach's and colon's gas between -1000 and -952:
docs/BENCHMARKS.md "A CT's lungs by their Hounsfield units"), and air shut in between the back and
the table, which lies at the body's edge (``MIN_LUNG_DEPTH_MM``). The pointer agent, which learnt
organs from two CT patients none of them a chest, asked for a lung on a chest CT clicked into
the heart; asked for a kidney on a slice through the heart it segmented something. Given the
volume in Hounsfield units, :class:`CtAnatomy` gives it the lungs left and right (the patient's
left on the image's right, :mod:`napari_ibis.geometry`) and each axial slice's share of lung,
and :func:`below_the_diaphragm` names the structures that never reach the chest's level: the
slices at and above (towards the head) the lowest one where the lungs fill a quarter of the
body's cross-section (a kidney's top lies where the lungs end: their share was at most 0.03 on
the kidney slices of the labelled abdominal CT); the liver and the spleen, whose domes reach up
beside the lungs, are ruled out only ``DOME_MM`` above that slice (:meth:`CtAnatomy.level_rules_out`).

Two more structures follow from the lungs. The trachea is the airway that joins them in 3-D: the
pure-air part in the middle of the neck and upper chest, followed down from the top until it
divides (:meth:`CtAnatomy.trachea_volume`). The heart is the soft tissue between the two lungs in
front of the spine, on the chest's slices where it is heart-sized (``HEART_MIN_MM2``; the great
vessels above it are smaller): :meth:`CtAnatomy.heart_volume`.

The spine is the other anchor. The spinal canal is the soft tissue inside the vertebrae's bony
ring, followed from the slices where the ring is closed (:meth:`CtAnatomy.canal_volume`); beside
it behind the spine lie the back muscles (:func:`_autochthon_section`), and in front of it, below
the chest and to the patient's left, the aorta, read only where contrast fills it (a disc of blood
above 120 HU on runs of slices: :meth:`CtAnatomy.aorta_volume`); without contrast its blood is
soft tissue like its neighbours', and the map decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .names import in_atlas_words

AIR_HU = -400  # below: air or lung (threshold_lungs in training/data/sources.py uses the same)
GAS_HU = -500  # below: not the body (the body is the largest part above it on a slice)
LUNG_MEDIAN_HU = -930  # an air part whose inner voxels' median lies above this is lung, below: gas
MIN_LUNG_CM3 = 5.0  # an air part smaller than this is not counted as lung
SURELY_LUNG_CM3 = 1000.0  # an air part this large is lung whatever its median (an emphysematous lung is purer air)
MAX_AIRWAY_MM2 = 600.0  # a pure-air part of a slice's lungs up to this size is an airway (the trachea: about 2 cm across)
MIN_LUNG_MM2 = 250.0  # a lung on a slice (one side) covers at least this much, else it is not on it (a recess)
CHEST_LEVEL_SHARE = 0.25  # lungs fill at least this share of the body's cross-section: the chest's level
DOME_MM = 30.0  # the liver and the spleen end within this above the chest's lowest slice (lung1, lung2: 10-15 mm)
SPLIT_MM = 15.0  # a part holding both lungs is eroded up to this far to part them
MAX_HOLE_MM2 = 700.0  # holes in a lung up to this size on a slice (its vessels) belong to it
MIN_LUNG_DEPTH_MM = 10.0  # a lung lies deeper inside the body than this (its voxels' median distance from the skin);
# air shut in between the back and the table, counted as inside the body, lies at its edge
DEPTH_SLICES = 16  # the depth is measured on about this many slices of an air part, spread over it
TRACHEA_MIDLINE_MM = 20.0  # the trachea's top lies within this of the body's middle column
TRACHEA_STEP_MM = 15.0  # an airway within this of the trachea on the slice above continues it; two there: it divided
TRACHEA_JUMP_MM = 6.0  # the trachea's centre moves less than this from one slice to the next (lung1, lung2: at most
# 3.8 mm on 5 mm slices); a main bronchus leaving the carina moved 9 mm and halved its area (lung2)
TRACHEA_SHRINK = 0.6  # nor does its cross-section fall below this share of the slice above's
BONE_HU = 200  # above: bone (or contrast)
MIN_VERTEBRA_MM2 = 150.0  # the vertebra's front on an axial slice: the foremost bone part this size or more,
SPINE_MIDLINE_MM = 25.0  # its centre within this of the body's middle column, in the body's back half
CANAL_BONE_HU = 150  # the spinal canal's ring: a 3 x 3 median above this (an old vertebra's cortex at 3 mm voxels)
CANAL_CLOSE_MM = 3.0  # the ring is closed by this much before its hole is taken
CANAL_MM2 = (60.0, 600.0)  # the canal's cross-section (the cord and the fluid around it: 12-25 mm across)
CANAL_MIDLINE_MM = 10.0  # its centre within this of the vertebra's centre, behind the vertebra's front
CANAL_HU = (-30, 90)  # the cord and the fluid around it; fat (the epidural fat's edge) and bone left out
CANAL_SEED_EVERY = 3  # the closed ring is looked for on every this many slices (where it is closed: about a third)
CANAL_STEP_MM = 8.0  # from slice to slice the canal's centre moves less than this
CANAL_RADIUS_MM = 12.0  # the canal's section lies within this of its centre
CANAL_MIN_DEPTH_MM = 3.0  # its centre lies at least this deep in soft tissue (clear of bone and fat)
AUTOCHTHON_HU = (-20, 120)  # the back muscles (3 x 3 median); fat between them and under the skin left out
AUTOCHTHON_BEHIND_MM = (10.0, 90.0)  # they lie from 10 to 90 mm behind the canal's centre,
AUTOCHTHON_SIDE_MM = (3.0, 75.0)  # from 3 to 75 mm to its side,
AUTOCHTHON_SEED_MM = (30.0, 25.0)  # hold the point 30 mm behind it and 25 mm to the side,
AUTOCHTHON_OPEN_MM = 6.0  # and an opening this wide parts them from the thin muscles over them;
# behind the bone in their column (the arch, the ribs' necks: CANAL_BONE_HU), bone up to this far behind the
# canal's centre and this far to its side looked at (not the spinous process, which they lie beside)
AUTOCHTHON_BONE_MM = (35.0, 10.0)
# A side's section under AUTOCHTHON_MIN_MM2 (or none): muscle marbled with fat (an older patient's), read again where
# the units' mean over AUTOCHTHON_FATTY_MM (fat between the fibres averaged in) lies above AUTOCHTHON_FATTY_HU
AUTOCHTHON_MIN_MM2 = 300.0
AUTOCHTHON_FATTY_MM = 3.0
AUTOCHTHON_FATTY_HU = -30.0
SOFT_TISSUE_HU = (-60, 700)  # the heart's wall and blood, with contrast too; fat (below) is left out
HEART_OPEN_MM = 5.0  # an opening this wide parts the heart from vessels touching it
HEART_BEFORE_SPINE_MM = 10.0  # the heart ends this far in front of the vertebra (the oesophagus and the descending
# aorta lie between)
HEART_SHARE = 0.5  # and on the slices of its level its section covers at least this share of its widest one
MIN_LUNG_BESIDE_MM2 = 500.0  # the heart is read only on slices where each lung covers this much
HEART_MIN_MM2 = 4000.0  # the heart's cross-section on the slices of its level (lung1, lung2: 4,000-12,000 mm2 by
# eye); the great vessels above it, read the same way, cover 2,000-3,800
# The costal cartilages on an axial slice: in the body's front CARTILAGE_FRONT (of its height on the slice), within
# CARTILAGE_DEPTH_MM of the skin, a 3 x 3 median CARTILAGE_ABOVE_HU above the slice's soft tissue (the median of its
# -30 to 200 HU) and below CARTILAGE_TOP_HU (the ribs' bone), in parts of CARTILAGE_MIN_MM2 or more. Set from the
# abdominal CT's labels (95% of them in the front 40%, within 31 mm of the skin, 101 HU against soft tissue's 25)
CARTILAGE_FRONT = 0.4
CARTILAGE_DEPTH_MM = 32.0
CARTILAGE_ABOVE_HU = 40.0
CARTILAGE_TOP_HU = 300.0
CARTILAGE_MIN_MM2 = 20.0
# and whose centre lies CARTILAGE_MIN_DEG or more above the level of the body's centre, seen from it (the ribs' ends
# at the sides have the cartilages' units too)
CARTILAGE_MIN_DEG = 20.0
AORTA_HU = (120.0, 650.0)  # contrast-filled blood (the held-out series' aorta: median 151 HU); a plain CT's, 30-60
# HU like the soft tissue around it, is not read
AORTA_AHEAD_MM = (35.0, 80.0)  # below the chest the aorta's centre lies this far in front of the spinal canal's
AORTA_SIDE_MM = (-5.0, 35.0)  # centre, and this far to the patient's left (two CTs: 47-62 mm and 1-19 mm)
AORTA_BODY_MM = (20.0, 45.0)  # not within this of the canal's column and closer than this in front: the vertebral body
AORTA_RADII_MM = (7.0, 9.0, 11.0, 13.0, 15.0, 17.0)  # the ring looked for (a disc of 0.7 times it inside)
AORTA_GRID_MM = 2.0  # it is looked for on a grid this coarse
AORTA_MIN_SCORE = 8.0  # the ring around it differs from the disc this many times the disc's own spread (the
# held-out series' aorta 12.8-17.0; the vertebra's marrow and the psoas on three plain CTs at most 6.2)
AORTA_STEP_MM = 10.0  # from slice to slice its centre moves less than this (the found centre jitters by a few mm)
AORTA_MIN_SLICES = 3  # and it is found on this many slices in a row or more
AORTA_REACH_MM = 20.0  # its section: the blood joined to its centre within this,
AORTA_OPEN_MM = 5.0  # opened by a disc this wide, which parts it from the vertebral body's marrow where they touch
# Lung on both sides of it, within AORTA_FLANK_MM of its row (air parts of AORTA_FLANK_LUNG_MM2 or more, not gas):
# the slice is in the chest, where the heart's chambers look as round. A CT cropped to the heart, whose lungs its
# field cuts, is not found at the chest's level by the lungs' share of the body.
AORTA_FLANK_MM = 15.0
AORTA_FLANK_LUNG_MM2 = 200.0

# structures that lie wholly below the diaphragm's dome (the liver, the spleen and the stomach
# reach up into it, beside the lungs, so they are not here)
_BELOW = re.compile(r"\b(kidneys?|urinary bladder|bladder|gallbladder|pancreas|prostate|small bowel|duodenum|hips?|"
                    r"femurs?|sacrum|gluteus|iliopsoas|iliac|adrenal glands?|L[1-5] vertebra)\b", re.IGNORECASE)
_UNDER_THE_DOME = re.compile(r"\b(liver|spleen)\b", re.IGNORECASE)  # not the stomach: a hiatal hernia is in the chest
_LUNG = re.compile(r"\blungs?\b", re.IGNORECASE)
_PART_OF_THE_LUNG = re.compile(r"\blungs?\s+(vessels?|arter\w*|veins?|airways?|bronch\w*|fissures?)\b", re.IGNORECASE)
_LOBE = re.compile(r"\b(upper|middle|lower) lobe\b|\blobes?\b", re.IGNORECASE)
_SIDE = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_HEART = re.compile(r"\bheart\b", re.IGNORECASE)
_PART_OF_THE_HEART = re.compile(r"\b(ventricles?|atri(a|um)|valves?|myocardium|pericardium|coronar\w*|chambers?)\b",
                                re.IGNORECASE)
_TRACHEA = re.compile(r"\b(trachea|windpipe)\b", re.IGNORECASE)
_SPINAL_CORD = re.compile(r"\b(spinal|vertebral)\s+(cord|canal)\b|\bthecal sac\b|\bcauda equina\b", re.IGNORECASE)
_AORTA = re.compile(r"\baorta\b", re.IGNORECASE)
_AUTOCHTHON = re.compile(r"\bautochthon\b", re.IGNORECASE)  # in the atlas's words: the erector spinae too
_COSTAL_CARTILAGES = re.compile(r"\bcostal\s+cartilages?\b", re.IGNORECASE)
# what may hold air or gas on a CT; every other structure lies where the units are not air (solid_tissue)
_HOLDS_AIR = re.compile(r"\b(lungs?|lobes?|airways?|bronch\w*|trachea|windpipe|larynx|pharynx|sinus\w*|stomach|colon|"
                        r"bowel|duodenum|oesophagus|esophagus|rectum|sigmoid|caecum|cecum|appendix|intestines?|gut|gas|"
                        r"air)\b", re.IGNORECASE)
AIR_HU = -400.0  # a 3 x 3 median below this is air: the lungs, gas (the lungs' rule's threshold)
SOLID_DEPTH_MM = 3.0  # solid tissue this deep from air (solid_tissue)


def holds_air(name: str) -> bool:
    """Whether the structure ``name`` may hold air or gas (a lung, an airway, the gut)."""
    return bool(_HOLDS_AIR.search(name or ""))


def solid_tissue(hu_slice: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Where a CT slice in Hounsfield units is not air (its 3 x 3 median at ``AIR_HU`` or above) and
    ``SOLID_DEPTH_MM`` or more from air (the rim of soft tissue around a lung left out)."""
    from scipy import ndimage as ndi

    solid = ndi.median_filter(np.asarray(hu_slice, dtype=np.float32), size=3) >= AIR_HU
    return ndi.binary_erosion(solid, iterations=max(1, int(round(SOLID_DEPTH_MM / pixel_mm))), border_value=1)


def below_the_diaphragm(name: str) -> bool:
    """Whether the structure ``name`` lies wholly below the diaphragm (a kidney, the bladder)."""
    return bool(_BELOW.search(name or ""))


def by_the_lungs_level(name: str) -> bool:
    """Whether the lungs' level can rule the structure ``name`` out (:meth:`CtAnatomy.level_rules_out`)."""
    return below_the_diaphragm(name) or bool(_UNDER_THE_DOME.search(name or ""))


@dataclass(frozen=True)
class LungAsked:
    """A query naming the lungs: which side (None: both) and whether it names a lobe (which the
    Hounsfield units cannot tell from its neighbour: only the lung's absence is decided then)."""

    side: str | None
    lobe: bool


def lung_asked(query: str) -> LungAsked | None:
    """The lungs ``query`` asks for, or None where it names no lung ("the lung tumour" is a
    lesion, not a lung: the caller leaves lesions out)."""
    if not _LUNG.search(query or "") or _PART_OF_THE_LUNG.search(query):  # "the lung vessels" are not the lung
        return None
    sides = {side.lower() for side in _SIDE.findall(query)}
    return LungAsked(side=sides.pop() if len(sides) == 1 else None, lobe=bool(_LOBE.search(query)))


@dataclass(frozen=True)
class CtAsked:
    """A structure a query names that a CT's units give: ``structure`` "lung", "heart",
    "trachea", "spinal cord", "aorta", "autochthon" (the back muscles beside the spine) or "costal
    cartilages"; for a lung or the autochthon its side (None: both), for a lung whether it names a lobe."""

    structure: str
    side: str | None = None
    lobe: bool = False


def ct_structure_asked(query: str) -> CtAsked | None:
    """The structure ``query`` asks for that :class:`CtAnatomy` reads, or None: a lung
    (:func:`lung_asked`), the heart (not a part of it: "the left ventricle"), the trachea, the
    spinal cord (or the spinal or vertebral canal, the thecal sac, the cauda equina: what lies
    inside the vertebrae's bony canal), the aorta, the
    autochthon (the erector spinae, the paraspinal muscles) of a side or both, the costal
    cartilages. A lesion ("the lung tumour") is the caller's to leave out."""
    lungs = lung_asked(query)
    if lungs is not None:
        return CtAsked("lung", lungs.side, lungs.lobe)
    if _HEART.search(query or "") and not _PART_OF_THE_HEART.search(query):
        return CtAsked("heart")
    if _TRACHEA.search(query or ""):
        return CtAsked("trachea")
    if _SPINAL_CORD.search(query or ""):
        return CtAsked("spinal cord")
    if _AORTA.search(query or ""):
        return CtAsked("aorta")
    if _AUTOCHTHON.search(in_atlas_words(query or "")):
        sides = {side.lower() for side in _SIDE.findall(query)}
        return CtAsked("autochthon", sides.pop() if len(sides) == 1 else None)
    if _COSTAL_CARTILAGES.search(query or ""):
        return CtAsked("costal cartilages")
    return None


# structures of one kind of tissue beside the spine, whose Hounsfield units are the same on every scanner and with
# contrast, where the map's point falls on a neighbour (the spinal canal, a lamina): the vertebrae and the muscles
# along the spine. Not the long and flat bones, whose fatty marrow lies below bone's units (moving a click inside one
# onto its cortex lowered the hip's and the femur's IoU: docs/BENCHMARKS.md)
_BONE = re.compile(r"\b(vertebrae?|spine)\b", re.IGNORECASE)
_MUSCLE = re.compile(r"\b(autochthon|erector spinae|iliopsoas|psoas)\b", re.IGNORECASE)
TISSUE_HU = {"bone": (150.0, 3000.0), "muscle": (10.0, 100.0)}  # a median over TISSUE_MM in this range is that tissue
TISSUE_MM = 3.0  # the median's width (noise smoothed; a thin bone at 3 mm pixels kept)
SNAP_MM = 20.0  # the first click moves at most this far onto the tissue
SNAP_DEPTH_MM = 3.0  # a click this deep inside the tissue already stays


def tissue_of(name: str) -> str | None:
    """"bone" for a vertebra, "muscle" for a muscle along the spine (the autochthon, the
    iliopsoas), else None."""
    if _BONE.search(name or ""):
        return "bone"
    if _MUSCLE.search(name or ""):
        return "muscle"
    return None


def onto_tissue(hu_slice: np.ndarray, probability: np.ndarray, row: int, col: int, tissue: str,
                pixel_mm: float) -> tuple[int, int, str] | None:
    """Where a first click at (``row``, ``col``) goes so that it lies on ``tissue`` (``TISSUE_HU``,
    a median of ``hu_slice`` over ``TISSUE_MM``): where it is already ``SNAP_DEPTH_MM`` inside it, nowhere
    (None); else, within ``SNAP_MM``, the pixel deepest inside that tissue weighted by the map's
    ``probability`` there (so that the left muscle is not taken for the right one). Returns
    (row, col, the agent's words) or None where no such tissue lies near."""
    from scipy import ndimage as ndi

    low, high = TISSUE_HU[tissue]
    reach = int(round(SNAP_MM / pixel_mm))
    top, left = max(0, row - reach), max(0, col - reach)
    window = (slice(top, row + reach + 1), slice(left, col + reach + 1))
    smooth = ndi.median_filter(np.asarray(hu_slice[window], dtype=np.float32),
                               size=max(1, int(round(TISSUE_MM / pixel_mm))) | 1)
    inside = (smooth >= low) & (smooth <= high)
    rows, cols = np.ogrid[window[0], window[1]]
    inside &= (rows - row) ** 2 + (cols - col) ** 2 <= reach**2
    if not inside.any():
        return None
    depth = ndi.distance_transform_edt(inside) * pixel_mm
    if depth[row - top, col - left] >= SNAP_DEPTH_MM:
        return None
    score = np.minimum(depth, 10.0) * (np.asarray(probability[window], dtype=np.float32) + 0.05)
    best = np.unravel_index(int(np.argmax(score)), score.shape)
    moved = (int(best[0] + top), int(best[1] + left))
    return (*moved, f"The map's point lies off {tissue} in this CT's Hounsfield units; I move it "
                    f"{np.hypot(moved[0] - row, moved[1] - col) * pixel_mm:.0f} mm onto the {tissue} there.")


def looks_like_ct(volume: np.ndarray) -> bool:
    """Whether ``volume`` holds Hounsfield units: air at about -1000 (at least 1% of the voxels
    below -900, as the air around a body or in its lungs is) and tissue above -200. An MRI's
    values are not below zero; a CT stored without its rescale is not either, and is not read."""
    grid = tuple(slice(None, None, max(1, n // 60)) for n in np.shape(volume))  # about 200,000 voxels, no copy of the rest
    sample = np.asarray(volume[grid], dtype=np.float32).ravel()
    return sample.size > 0 and float(np.mean(sample < -900)) >= 0.01 and float(np.mean(sample > -200)) >= 0.05 \
        and float(sample.min()) >= -3100


def _airways(lungs: np.ndarray, hu_slice: np.ndarray, max_pixels: int) -> np.ndarray:
    """The airways among the lungs on an axial slice, which join them in 3-D: each part of the
    slice's lung of at most ``max_pixels`` whose median is pure air (the trachea, a main
    bronchus: ``LUNG_MEDIAN_HU`` or below)."""
    from scipy import ndimage as ndi

    parts, _ = ndi.label(lungs)
    sizes = np.bincount(parts.ravel())
    airways = [label for label, box in enumerate(ndi.find_objects(parts), start=1)
               if box is not None and sizes[label] <= max_pixels  # only a small part's median is read
               and float(np.median(hu_slice[box][parts[box] == label])) <= LUNG_MEDIAN_HU]
    return np.isin(parts, airways) if airways else np.zeros(lungs.shape, bool)


def _trachea(airways: dict[int, np.ndarray], middle: np.ndarray, pixel_mm: float) -> dict[int, np.ndarray]:
    """The trachea on each axial slice it lies on, from the slices' ``airways``: from the highest
    slice (axis 0 runs to the head) with an airway within ``TRACHEA_MIDLINE_MM`` of the body's
    ``middle`` column, followed down while exactly one airway lies within ``TRACHEA_STEP_MM`` of
    where it was; two there (the main bronchi), none, or one that moved sideways
    (``TRACHEA_JUMP_MM``) or shrank (``TRACHEA_SHRINK``), a main bronchus, end it."""
    from scipy import ndimage as ndi

    found: dict[int, np.ndarray] = {}
    where = None
    for z in sorted(airways, reverse=True):
        parts, count = ndi.label(airways[z])
        centres = np.array(ndi.center_of_mass(airways[z], parts, range(1, count + 1))).reshape(-1, 2)
        if where is None:  # its top: the airway nearest the middle, if near enough
            near = np.abs(centres[:, 1] - middle[z]) * pixel_mm
            if count == 0 or near.min() > TRACHEA_MIDLINE_MM:
                continue
            chosen = int(np.argmin(near))
        else:
            close = np.flatnonzero(np.hypot(*(centres - where).T) * pixel_mm <= TRACHEA_STEP_MM)
            if close.size != 1 or z + 1 not in found:  # divided, ended, or a slice without it in between
                break
            chosen = int(close[0])
            if np.hypot(*(centres[chosen] - where)) * pixel_mm > TRACHEA_JUMP_MM \
                    or (parts == chosen + 1).sum() < TRACHEA_SHRINK * found[z + 1].sum():
                break
        found[z] = parts == chosen + 1
        where = centres[chosen]
    return found


def _vertebra(hu_slice: np.ndarray, body: np.ndarray, pixel_mm: float) -> tuple[int, float] | None:
    """(the row of the vertebra's front, the column of its centre) on an axial slice (anterior
    up): the foremost bone part of ``MIN_VERTEBRA_MM2`` or more whose centre lies within
    ``SPINE_MIDLINE_MM`` of the body's middle column in its back half (an old vertebral body's
    cancellous bone may lie below ``BONE_HU``, leaving its cortex in pieces smaller than the
    spinous process); None where there is none."""
    from scipy import ndimage as ndi

    rows, cols = np.nonzero(body)
    if not rows.size:
        return None
    middle, back = cols.mean(), rows.min() + 0.5 * (rows.max() - rows.min())
    parts, _ = ndi.label((hu_slice > BONE_HU) & body)
    best = None
    for label, box in enumerate(ndi.find_objects(parts), start=1):
        part_rows, part_cols = np.nonzero(parts[box] == label)
        centre = float(part_cols.mean() + box[1].start)
        if part_rows.size * pixel_mm**2 < MIN_VERTEBRA_MM2 or part_rows.mean() + box[0].start < back \
                or abs(centre - middle) * pixel_mm > SPINE_MIDLINE_MM:
            continue
        front = int(part_rows.min() + box[0].start)
        if best is None or front < best[0]:
            best = (front, centre)
    return best


def _closed_canal(hu_slice: np.ndarray, pixel_mm: float) -> tuple[float, float, np.ndarray] | None:
    """The spinal canal on an axial slice where the vertebra's bony ring around it is closed:
    (row, column of its centre, its section), or None. The ring: a 3 x 3 median above
    ``CANAL_BONE_HU`` closed by ``CANAL_CLOSE_MM``; the canal: a hole in it of ``CANAL_MM2``,
    centred within ``CANAL_MIDLINE_MM`` of the vertebra's centre behind its front, whose median
    lies in ``CANAL_HU`` (the marrow of the vertebral body, also a hole in its cortex, lies
    above); of several, the darkest."""
    from scipy import ndimage as ndi
    from skimage.morphology import disk

    found = _vertebra(hu_slice, _body(hu_slice), pixel_mm)
    if found is None:
        return None
    front, centre = found
    smooth = ndi.median_filter(np.asarray(hu_slice, dtype=np.float32), size=3)
    ring = ndi.binary_closing(smooth > CANAL_BONE_HU, structure=disk(max(1, int(round(CANAL_CLOSE_MM / pixel_mm)))))
    holes, _ = ndi.label(ndi.binary_fill_holes(ring) & ~ring)
    smallest, largest = (area / pixel_mm**2 for area in CANAL_MM2)
    best = None
    for label, box in enumerate(ndi.find_objects(holes), start=1):
        hole = holes[box] == label
        if not smallest <= hole.sum() <= largest:
            continue
        rows, cols = np.nonzero(hole)
        row, col = rows.mean() + box[0].start, cols.mean() + box[1].start
        level = float(np.median(smooth[box][hole]))
        if abs(col - centre) * pixel_mm > CANAL_MIDLINE_MM or row < front or not CANAL_HU[0] <= level <= CANAL_HU[1]:
            continue
        if best is None or level < best[0]:
            best = (level, row, col, holes == label)
    return None if best is None else best[1:]


def _canal_near(hu_slice: np.ndarray, pixel_mm: float, row: float,
                col: float) -> tuple[float, float, np.ndarray] | None:
    """The spinal canal on an axial slice next to one where it was at (``row``, ``col``):
    (row, column of its centre, its section), or None where it does not go on. Its centre: the
    point deepest in soft tissue (``CANAL_HU``, away from bone) within ``CANAL_STEP_MM``, at least
    ``CANAL_MIN_DEPTH_MM`` deep; its section: the soft tissue joined to it within
    ``CANAL_RADIUS_MM``, holes filled."""
    from scipy import ndimage as ndi

    reach = int(np.ceil((CANAL_STEP_MM + CANAL_RADIUS_MM + 3.0) / pixel_mm))
    top, left = max(0, int(row) - reach), max(0, int(col) - reach)
    window = (slice(top, int(row) + reach + 1), slice(left, int(col) + reach + 1))
    smooth = ndi.median_filter(np.asarray(hu_slice[window], dtype=np.float32), size=3)
    soft = (smooth > CANAL_HU[0]) & (smooth < CANAL_HU[1]) & ~ndi.binary_dilation(smooth > CANAL_BONE_HU)
    depth = ndi.distance_transform_edt(soft) * pixel_mm
    rows, cols = np.indices(soft.shape)
    near = (rows + top - row) ** 2 + (cols + left - col) ** 2 <= (CANAL_STEP_MM / pixel_mm) ** 2
    depth = np.where(near, depth, 0.0)
    if depth.max() < CANAL_MIN_DEPTH_MM:
        return None
    centre = np.unravel_index(int(np.argmax(depth)), depth.shape)
    within = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= (CANAL_RADIUS_MM / pixel_mm) ** 2
    parts, _ = ndi.label(soft & within)
    section = np.zeros(np.shape(hu_slice), bool)
    section[window] = ndi.binary_fill_holes(parts == parts[centre])
    return float(centre[0] + top), float(centre[1] + left), section


def _spinal_canal(volume: np.ndarray, pixel_mm: float) -> np.ndarray:
    """The spinal canal, bool on the volume's grid (empty on the slices it is not read on): from
    the slices (every ``CANAL_SEED_EVERY``th) where the vertebra's ring around it is closed
    (:func:`_closed_canal`), followed up and down slice by slice (:func:`_canal_near`) until it no
    longer goes on or meets a slice already read (each slice is read once; where the canal is
    lost, the next ring's following picks it up). Closed rings more than ``CANAL_MIDLINE_MM``
    from the others' median column are left out."""
    seeds = {}
    for z in range(0, volume.shape[0], CANAL_SEED_EVERY):
        found = _closed_canal(np.asarray(volume[z]), pixel_mm)
        if found is not None:
            seeds[z] = found
    if seeds:
        middle = float(np.median([col for _, col, _ in seeds.values()]))
        seeds = {z: s for z, s in seeds.items() if abs(s[1] - middle) * pixel_mm <= CANAL_MIDLINE_MM}
    canal = np.zeros(np.shape(volume), bool)
    for z, seed in seeds.items():
        canal[z] = seed[2]
    for start in sorted(seeds):  # from each closed ring up and down, to the next slice already read
        for step in (1, -1):
            row, col = seeds[start][:2]
            z = start + step
            while 0 <= z < volume.shape[0] and not canal[z].any():
                found = _canal_near(np.asarray(volume[z]), pixel_mm, row, col)
                if found is None:
                    break
                row, col, canal[z] = found
                z += step
    return canal


def _autochthon_section(hu_slice: np.ndarray, canal: np.ndarray, pixel_mm: float, side: str) -> np.ndarray | None:
    """The autochthon (the deep back muscles) of the patient's ``side`` on an axial slice whose
    spinal ``canal`` is read: the muscle (``AUTOCHTHON_HU``) within ``AUTOCHTHON_BEHIND_MM`` behind
    the canal's centre and ``AUTOCHTHON_SIDE_MM`` to that side (the patient's left is the image's
    right), behind the bone of the arch and the ribs in each column (``AUTOCHTHON_BONE_MM``: the
    muscles between the ribs and in front of them left out), opened by ``AUTOCHTHON_OPEN_MM``, the
    part nearest the point ``AUTOCHTHON_SEED_MM`` behind and beside the canal, holes filled; where
    that is under ``AUTOCHTHON_MIN_MM2``, muscle marbled with fat read as such
    (``AUTOCHTHON_FATTY_*``); None where there is none."""
    section = _muscle_behind(hu_slice, canal, pixel_mm, side, fatty=False)
    if section is None or section.sum() * pixel_mm**2 < AUTOCHTHON_MIN_MM2:
        section = _muscle_behind(hu_slice, canal, pixel_mm, side, fatty=True)
    return section


def _muscle_behind(hu_slice: np.ndarray, canal: np.ndarray, pixel_mm: float, side: str,
                   fatty: bool) -> np.ndarray | None:
    """:func:`_autochthon_section`'s reading of the muscle; ``fatty``: the units' mean over
    ``AUTOCHTHON_FATTY_MM`` above ``AUTOCHTHON_FATTY_HU`` is muscle (with the fat between its fibres)."""
    from scipy import ndimage as ndi
    from skimage.morphology import disk

    row, col = np.argwhere(canal).mean(axis=0)
    sign = 1 if side == "left" else -1
    near, far = (int(round(mm / pixel_mm)) for mm in AUTOCHTHON_SIDE_MM)
    top, bottom = (int(round(row + mm / pixel_mm)) for mm in AUTOCHTHON_BEHIND_MM)
    left, right = (int(round(col + near)), int(round(col + far))) if sign > 0 else \
        (int(round(col - far)), int(round(col - near)))
    top, left = max(0, top), max(0, left)
    window = (slice(top, max(top, bottom) + 1), slice(left, max(left, right) + 1))
    raw = np.asarray(hu_slice[window], dtype=np.float32)
    if raw.size == 0:
        return None
    smooth = ndi.median_filter(raw, size=3)
    tissue = smooth > AUTOCHTHON_HU[0]
    if fatty:
        width = max(3, int(round(2 * AUTOCHTHON_FATTY_MM / pixel_mm)) | 1)
        tissue = ndi.binary_fill_holes(ndi.uniform_filter(np.clip(raw, -200, 200), size=width) > AUTOCHTHON_FATTY_HU)
    rows, cols = np.mgrid[top:top + smooth.shape[0], left:left + smooth.shape[1]]
    bone = (smooth > CANAL_BONE_HU) & ((rows - row) * pixel_mm < AUTOCHTHON_BONE_MM[0]) \
        & (np.abs(cols - col) * pixel_mm > AUTOCHTHON_BONE_MM[1])
    deepest = np.where(bone.any(axis=0), top + smooth.shape[0] - 1 - np.argmax(bone[::-1], axis=0), -1)
    muscle = ndi.binary_opening(tissue & (smooth < AUTOCHTHON_HU[1]) & (rows > deepest),
                                structure=disk(max(1, int(round(AUTOCHTHON_OPEN_MM / pixel_mm)))))
    parts, count = ndi.label(muscle)
    if not count:
        return None
    seed = (int(np.clip(row + AUTOCHTHON_SEED_MM[0] / pixel_mm - top, 0, muscle.shape[0] - 1)),
            int(np.clip(col + sign * AUTOCHTHON_SEED_MM[1] / pixel_mm - left, 0, muscle.shape[1] - 1)))
    nearest = ndi.distance_transform_edt(parts == 0, return_indices=True)[1]
    label = parts[nearest[0][seed], nearest[1][seed]]
    section = np.zeros(np.shape(hu_slice), bool)
    section[window] = ndi.binary_fill_holes(parts == label)
    return section


def _cartilage_section(hu_slice: np.ndarray, pixel_mm: float) -> np.ndarray:
    """What has the costal cartilages' units where they lie on an axial slice (``CARTILAGE_*``):
    the anterior body wall's parts brighter than the slice's soft tissue and darker than bone, not
    at its sides.
    Where the slice is below or above them, other things may have those units there (bowel,
    calcified vessels): whether the cartilages are on the slice is not read here."""
    from scipy import ndimage as ndi

    smooth = ndi.median_filter(np.asarray(hu_slice, dtype=np.float32), size=3)
    body = _body(smooth)
    if not body.any():
        return body
    soft = smooth[body & (smooth > -30) & (smooth < 200)]
    level = float(np.median(soft)) if soft.size else 40.0
    rows = np.flatnonzero(body.any(axis=1))
    front = rows[0] + CARTILAGE_FRONT * (rows[-1] - rows[0])
    wall = body & (np.arange(body.shape[0])[:, None] <= front) \
        & (ndi.distance_transform_edt(body) * pixel_mm <= CARTILAGE_DEPTH_MM)
    found = wall & (smooth >= level + CARTILAGE_ABOVE_HU) & (smooth <= CARTILAGE_TOP_HU)
    parts, count = ndi.label(found)
    if not count:
        return found
    labels = range(1, count + 1)
    sizes = ndi.sum(found, parts, labels) * pixel_mm**2
    centres = np.array(ndi.center_of_mass(found, parts, labels)).reshape(-1, 2)
    columns = np.flatnonzero(body.any(axis=0))
    middle_row, middle_col = (rows[0] + rows[-1]) / 2, (columns[0] + columns[-1]) / 2
    above = np.degrees(np.arctan2(middle_row - centres[:, 0], np.abs(centres[:, 1] - middle_col)))
    return np.isin(parts, 1 + np.flatnonzero((sizes >= CARTILAGE_MIN_MM2) & (above >= CARTILAGE_MIN_DEG)))


def _disc(radius: float, inner: float = 0.0) -> np.ndarray:
    """A disc (or, given ``inner``, a ring from ``inner`` to ``radius``) of pixels, as weights summing to 1."""
    n = int(np.ceil(radius))
    distance = np.hypot(*np.mgrid[-n:n + 1, -n:n + 1])
    kernel = ((distance <= radius) & (distance >= inner)).astype(np.float32)
    return kernel / kernel.sum()


def _aorta_centre(hu_slice: np.ndarray, canal: np.ndarray, pixel_mm: float) -> tuple[float, float, float, float] | None:
    """The contrast-filled aorta below the chest on an axial slice whose spinal ``canal`` is read:
    (row, column, its blood's mean HU, score) of the round part likest a vessel in the window
    ``AORTA_AHEAD_MM`` in front of the canal and ``AORTA_SIDE_MM`` to the patient's left (the
    vertebral body, ``AORTA_BODY_MM``, left out). A vessel is a disc of even blood (``AORTA_HU``)
    whose ring (1.15-1.6 times its radius) differs from it: the score is the ring's spread about
    the disc's mean over the disc's own spread, best over ``AORTA_RADII_MM``. None where no disc of
    blood lies there."""
    from scipy import ndimage as ndi
    from scipy.signal import fftconvolve

    canal_row, canal_col = np.argwhere(canal).mean(axis=0)
    margin = 1.6 * max(AORTA_RADII_MM) + 2 * AORTA_GRID_MM  # the window and the rings around it, no more
    top = int(max(0, canal_row - (AORTA_AHEAD_MM[1] + margin) / pixel_mm))
    left = int(max(0, canal_col + (AORTA_SIDE_MM[0] - margin) / pixel_mm))
    window = (slice(top, max(top, int(canal_row - (AORTA_AHEAD_MM[0] - margin) / pixel_mm))),
              slice(left, max(left, int(canal_col + (AORTA_SIDE_MM[1] + margin) / pixel_mm))))
    canal_row, canal_col = canal_row - top, canal_col - left
    factor = max(1.0, AORTA_GRID_MM / pixel_mm)
    image = np.clip(np.asarray(hu_slice[window], dtype=np.float32), -200, 800)
    if image.size == 0:
        return None
    if factor > 1.2:
        image = ndi.zoom(image, 1 / factor, order=1)
    else:
        factor = 1.0
    grid_mm = pixel_mm * factor
    rows, cols = np.mgrid[:image.shape[0], :image.shape[1]]
    ahead, side = (canal_row / factor - rows) * grid_mm, (cols - canal_col / factor) * grid_mm
    allowed = (ahead >= AORTA_AHEAD_MM[0]) & (ahead <= AORTA_AHEAD_MM[1]) & (side >= AORTA_SIDE_MM[0]) \
        & (side <= AORTA_SIDE_MM[1]) & ~((np.abs(side) < AORTA_BODY_MM[0]) & (ahead < AORTA_BODY_MM[1]))
    squared, best = image * image, None
    for radius_mm in AORTA_RADII_MM:
        radius = radius_mm / grid_mm
        inside, ring = _disc(0.7 * radius), _disc(1.6 * radius, 1.15 * radius)
        mean = fftconvolve(image, inside, "same")
        spread = np.sqrt(np.maximum(fftconvolve(squared, inside, "same") - mean * mean, 0))
        ring_mean, ring_squared = fftconvolve(image, ring, "same"), fftconvolve(squared, ring, "same")
        differs = np.sqrt(np.maximum(ring_squared - 2 * mean * ring_mean + mean * mean, 0))
        score = np.where(allowed & (mean >= AORTA_HU[0]) & (mean <= AORTA_HU[1]),
                         differs / np.maximum(spread, 15.0), 0.0)
        at = np.unravel_index(int(np.argmax(score)), score.shape)
        if score[at] > 0 and (best is None or score[at] > best[3]):
            best = (top + at[0] * factor, left + at[1] * factor, float(mean[at]), float(score[at]))
    return best


def _aorta_section(hu_slice: np.ndarray, row: float, col: float, blood_hu: float, pixel_mm: float) -> np.ndarray:
    """The aorta's section around its centre (``row``, ``col``): the pixels within
    ``AORTA_REACH_MM`` whose 3 x 3 median reaches 0.7 of its blood's HU (100 HU at least), opened
    by a disc of ``AORTA_OPEN_MM``, the part holding the centre, holes filled, grown by 1 mm (its wall)."""
    from scipy import ndimage as ndi
    from skimage.morphology import disk

    reach = int(np.ceil(AORTA_REACH_MM / pixel_mm)) + 2
    top, left = max(0, int(row) - reach), max(0, int(col) - reach)
    window = (slice(top, int(row) + reach + 1), slice(left, int(col) + reach + 1))
    smooth = ndi.median_filter(np.asarray(hu_slice[window], dtype=np.float32), size=3)
    rows, cols = np.mgrid[:smooth.shape[0], :smooth.shape[1]]
    near = np.hypot(rows - (row - top), cols - (col - left)) * pixel_mm <= AORTA_REACH_MM
    blood = ndi.binary_opening(near & (smooth >= max(100.0, 0.7 * blood_hu)),
                               structure=disk(max(1, int(round(AORTA_OPEN_MM / pixel_mm)))))
    parts, _ = ndi.label(blood)
    section = np.zeros(np.shape(hu_slice), bool)
    label = parts[int(row) - top, int(col) - left]
    if label:
        section[window] = ndi.binary_dilation(ndi.binary_fill_holes(parts == label),
                                              iterations=max(1, int(round(1.0 / pixel_mm))))
    return section


def _lungs_flank(hu_slice: np.ndarray, row: float, col: float, pixel_mm: float) -> bool:
    """Whether lung lies on both sides of the point (``row``, ``col``) within ``AORTA_FLANK_MM`` of
    its row: air parts (3 x 3 median below ``AIR_HU``) of ``AORTA_FLANK_LUNG_MM2`` or more whose median
    lies above ``LUNG_MEDIAN_HU`` (lung, not gas or the air around the body)."""
    from scipy import ndimage as ndi

    top = max(0, int(row - AORTA_FLANK_MM / pixel_mm))
    strip = np.asarray(hu_slice[top:int(row + AORTA_FLANK_MM / pixel_mm) + 1], dtype=np.float32)
    parts, _ = ndi.label(ndi.median_filter(strip, size=3) < AIR_HU)
    sides = set()
    for label, box in enumerate(ndi.find_objects(parts), start=1):
        part = parts[box] == label
        if part.sum() * pixel_mm**2 >= AORTA_FLANK_LUNG_MM2 and float(np.median(strip[box][part])) > LUNG_MEDIAN_HU:
            sides.add(bool(np.nonzero(part)[1].mean() + box[1].start > col))
    return len(sides) == 2


def _abdominal_aorta(volume: np.ndarray, canal: np.ndarray, pixel_mm: float, slices) -> np.ndarray:
    """The contrast-filled aorta on the axial ``slices`` (below the chest, the canal read), bool on
    the volume's grid: :func:`_aorta_centre` where it scores ``AORTA_MIN_SCORE`` or more and lung
    does not flank it (:func:`_lungs_flank`), on runs of ``AORTA_MIN_SLICES`` such slices in a row
    or more whose centres move less than ``AORTA_STEP_MM`` (a vessel runs on; a marrow or a loop of
    gut that looks round on one slice does not), each slice's :func:`_aorta_section`. Empty where
    there is none (a CT without contrast)."""
    found = {}
    for z in slices:
        centre = _aorta_centre(np.asarray(volume[z]), canal[z], pixel_mm)
        if centre is not None and centre[3] >= AORTA_MIN_SCORE \
                and not _lungs_flank(np.asarray(volume[z]), centre[0], centre[1], pixel_mm):
            found[int(z)] = centre
    runs: list[list[int]] = []
    for z in sorted(found):
        last = runs[-1][-1] if runs else None
        if last == z - 1 and np.hypot(found[z][0] - found[last][0], found[z][1] - found[last][1]) * pixel_mm \
                < AORTA_STEP_MM:
            runs[-1].append(z)
        else:
            runs.append([z])
    aorta = np.zeros(np.shape(volume), bool)
    for z in (z for run in runs if len(run) >= AORTA_MIN_SLICES for z in run):
        row, col, blood_hu, _ = found[z]
        aorta[z] = _aorta_section(np.asarray(volume[z]), row, col, blood_hu, pixel_mm)
    return aorta


def _heart_section(hu_slice: np.ndarray, lungs: np.ndarray, pixel_mm: float) -> np.ndarray:
    """The heart's candidate on an axial slice where both lungs lie: the soft tissue (blood and
    wall, ``SOFT_TISSUE_HU``; fat left out) inside the lungs' convex hull and ``HEART_BEFORE_SPINE_MM``
    in front of the vertebra, opened by ``HEART_OPEN_MM`` to part the vessels that touch it, its largest part with
    its holes filled."""
    from scipy import ndimage as ndi
    from skimage.morphology import convex_hull_image, disk

    rows, cols = np.nonzero(lungs)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    hull = convex_hull_image(lungs[box])
    low, high = SOFT_TISSUE_HU
    tissue = hull & ~lungs[box] & (hu_slice[box] > low) & (hu_slice[box] < high)
    vertebra = _vertebra(hu_slice, _body(hu_slice), pixel_mm)
    if vertebra is not None:
        tissue[max(0, vertebra[0] - int(round(HEART_BEFORE_SPINE_MM / pixel_mm)) - box[0].start):] = False
    tissue = ndi.binary_opening(tissue, structure=disk(max(1, int(round(HEART_OPEN_MM / pixel_mm)))))
    parts, count = ndi.label(tissue)
    section = np.zeros(lungs.shape, bool)
    if count:
        sizes = np.bincount(parts.ravel())[1:]
        section[box] = ndi.binary_fill_holes(parts == 1 + int(np.argmax(sizes)))
    return section


def _right_lung(lungs: np.ndarray, middle: float, pixel_mm: float) -> np.ndarray:
    """The patient's right lung on an axial slice (display convention: the image's left). Each part
    of the lungs goes to the side of the body's middle column most of it lies on; a part lying
    across it (both lungs joined by the airways, or touching in front of the heart) is split where
    eroding it parts the two (each pixel to the nearer), else at the middle."""
    from scipy import ndimage as ndi

    parts, _ = ndi.label(lungs)
    image_left = np.broadcast_to(np.arange(lungs.shape[1])[None, :] < middle, lungs.shape)
    right = np.zeros(lungs.shape, bool)
    for label, box in enumerate(ndi.find_objects(parts), start=1):  # each part within its own box
        part = parts[box] == label
        share = float((part & image_left[box]).sum()) / float(part.sum())
        if share >= 0.75:
            right[box] |= part
        elif share > 0.25:
            right[box] |= _split(part, image_left[box], pixel_mm)
    return right


def _split(part: np.ndarray, image_left: np.ndarray, pixel_mm: float) -> np.ndarray:
    """The image-left lung of a part holding both: eroded until two large pieces part (up to
    ``SPLIT_MM``), each pixel then to the nearer piece; the middle column where they never part."""
    from scipy import ndimage as ndi
    from skimage.segmentation import expand_labels

    core = part
    for _ in range(max(1, int(SPLIT_MM / pixel_mm))):
        core = ndi.binary_erosion(core)
        pieces, count = ndi.label(core)
        if count < 2:
            if not core.any():
                break
            continue
        sizes = ndi.sum(core, pieces, range(1, count + 1))
        first, second = (np.argsort(sizes)[::-1][:2] + 1).tolist()
        if sizes[second - 1] < 0.1 * sizes[first - 1]:
            continue
        seeds = np.where(np.isin(pieces, (first, second)), pieces, 0)
        grown = np.where(part, expand_labels(seeds, distance=int(2 * SPLIT_MM / pixel_mm) + 2), 0)
        columns = np.arange(part.shape[1])
        left_of = min((first, second), key=lambda piece: columns[np.nonzero(seeds == piece)[1]].mean())
        return grown == left_of
    return part & image_left


def _body(hu_slice: np.ndarray) -> np.ndarray:
    """The body on an axial slice: its largest part above ``GAS_HU``, holes (the lungs, gas) filled."""
    from scipy import ndimage as ndi

    parts, count = ndi.label(hu_slice > GAS_HU)
    if not count:
        return np.zeros(hu_slice.shape, bool)
    sizes = ndi.sum(np.ones(hu_slice.shape), parts, range(1, count + 1))
    return ndi.binary_fill_holes(parts == 1 + int(np.argmax(sizes)))


class CtAnatomy:
    """The lungs of one CT volume (display order, axial slices along axis 0), read from its
    Hounsfield units once: ``lungs`` (bool, the volume's grid), ``right_lung`` (the patient's
    right lung, the image's left: :func:`_right_lung` on each axial slice), the body's area per
    axial slice."""

    def __init__(self, volume: np.ndarray, spacing: tuple[float, float, float]) -> None:
        from scipy import ndimage as ndi
        from skimage.morphology import remove_small_holes

        hu = np.asarray(volume)
        self.shape = hu.shape
        self.spacing = tuple(float(s) for s in spacing)
        pixel_mm2 = self.spacing[1] * self.spacing[2]
        body = np.stack([_body(hu[z]) for z in range(hu.shape[0])])
        air = body & (hu < AIR_HU)
        parts, _ = ndi.label(air)
        eroded = ndi.binary_erosion(air)  # partial volume at a part's edges raises gas's values
        voxel_cm3 = float(np.prod(self.spacing)) / 1000.0
        depth: dict[int, np.ndarray] = {}  # per slice: mm from the skin, as needed
        self.lungs = np.zeros(hu.shape, bool)
        for label, box in enumerate(ndi.find_objects(parts), start=1):
            if box is None:
                continue
            part = parts[box] == label
            size_cm3 = part.sum() * voxel_cm3
            if size_cm3 < MIN_LUNG_CM3:
                continue
            inner = part & eroded[box]
            surely = size_cm3 >= SURELY_LUNG_CM3
            if not surely and float(np.median(hu[box][inner if inner.any() else part])) <= LUNG_MEDIAN_HU:
                continue  # gas
            depths = []
            span = range(box[0].start, box[0].stop)
            for offset, z in list(enumerate(span))[:: max(1, len(span) // DEPTH_SLICES)]:
                if z not in depth:
                    depth[z] = ndi.distance_transform_edt(body[z], sampling=self.spacing[1:]).astype(np.float32)
                depths.append(depth[z][box[1:]][part[offset]])
            if float(np.median(np.concatenate(depths))) >= MIN_LUNG_DEPTH_MM:
                self.lungs[box] |= part
        del parts, eroded, air
        hole = max(1, int(MAX_HOLE_MM2 / pixel_mm2))
        self.right_lung = np.zeros(hu.shape, bool)  # the patient's right lung: the image's left
        self.middle = np.array([np.flatnonzero(b.any(axis=0)).mean() if b.any() else np.nan for b in body])
        airways: dict[int, np.ndarray] = {}  # per slice where there are any
        for z in np.flatnonzero(self.lungs.any(axis=(1, 2))):
            airway = _airways(self.lungs[z], hu[z], int(MAX_AIRWAY_MM2 / pixel_mm2))
            if airway.any():
                airways[int(z)] = airway
            self.lungs[z] = remove_small_holes(self.lungs[z] & ~airway, max_size=hole)  # its vessels belong to it
            self.right_lung[z] = _right_lung(self.lungs[z], self.middle[z], float(np.sqrt(pixel_mm2)))
        self.trachea = _trachea(airways, self.middle, float(np.sqrt(pixel_mm2)))  # per axial slice it lies on
        del airways
        self.body_area = body.sum(axis=(1, 2))
        self._sides: dict[str, np.ndarray] = {}
        self._heart: np.ndarray | None = None
        self._trachea: np.ndarray | None = None
        self._heart_slices: list[int] = []
        self._canal: np.ndarray | None = None
        self._aorta: np.ndarray | None = None
        chest = [z for z in range(hu.shape[0]) if self.lung_share(z) >= CHEST_LEVEL_SHARE]
        self.chest_from = chest[0] if chest else None  # the lowest slice of the chest's level (axis 0 runs to the head)

    @classmethod
    def read(cls, volume: np.ndarray, spacing) -> CtAnatomy | None:
        """The anatomy of ``volume`` where it holds Hounsfield units (:func:`looks_like_ct`), else None."""
        return cls(volume, spacing) if looks_like_ct(volume) else None

    def lung_volume(self, side: str | None = None) -> np.ndarray:
        """The lungs (``side`` "left", "right" or None for both), bool on the volume's grid."""
        if side is None:
            return self.lungs
        if side not in self._sides:
            self._sides[side] = self.right_lung if side == "right" else self.lungs & ~self.right_lung
        return self._sides[side]

    def lung(self, side: str | None, view: str, index: int) -> np.ndarray:
        """The lung(s) on slice ``index`` of ``view``, bool on that slice's grid; empty where they
        cover less than ``MIN_LUNG_MM2`` there."""
        from ..geometry import VIEWS, oriented

        cut = np.array(oriented(self.lung_volume(side), VIEWS[view])[index])
        return cut if cut.sum() * self.pixel_mm2(view) >= MIN_LUNG_MM2 else np.zeros_like(cut)

    def trachea_volume(self) -> np.ndarray:
        """The trachea (:func:`_trachea`), bool on the volume's grid (made once)."""
        if self._trachea is None:
            self._trachea = np.zeros(self.shape, bool)
            for z, cut in self.trachea.items():
                self._trachea[z] = cut
        return self._trachea

    @property
    def heart_read(self) -> bool:
        """Whether the heart was read already (:meth:`heart_volume`)."""
        return self._heart is not None

    def heart_volume(self, volume: np.ndarray) -> np.ndarray:
        """The heart, bool on the volume's grid (read from ``volume``, the Hounsfield units this
        anatomy was read from, once): :func:`_heart_section` on the chest's slices
        (:meth:`at_chest_level`) where each lung covers ``MIN_LUNG_BESIDE_MM2``; of those, the run
        of slices around the largest section whose sections cover ``HEART_MIN_MM2`` and
        ``HEART_SHARE`` of the largest or more.
        Empty where the volume holds no chest."""
        if self._heart is not None:
            return self._heart
        pixel_mm = float(np.sqrt(self.pixel_mm2("axial")))
        beside = MIN_LUNG_BESIDE_MM2 / pixel_mm**2
        sections: dict[int, np.ndarray] = {}
        for z in range(self.chest_from or self.shape[0], self.shape[0]):
            right = int(self.right_lung[z].sum())
            if right >= beside and int(self.lungs[z].sum()) - right >= beside:
                sections[z] = _heart_section(np.asarray(volume[z]), self.lungs[z], pixel_mm)
        self._heart = np.zeros(self.shape, bool)
        areas = {z: float(cut.sum()) * pixel_mm**2 for z, cut in sections.items()}
        if areas and max(areas.values()) >= HEART_MIN_MM2:
            widest = max(areas, key=areas.get)
            least = max(HEART_MIN_MM2, HEART_SHARE * areas[widest])
            for step in (-1, 1):
                z = widest if step < 0 else widest + 1
                while areas.get(z, 0.0) >= least:
                    self._heart[z] = sections[z]
                    z += step
        self._heart_slices = np.flatnonzero(self._heart.any(axis=(1, 2))).tolist()
        return self._heart

    @property
    def canal_read(self) -> bool:
        """Whether the spinal canal was read already (:meth:`canal_volume`)."""
        return self._canal is not None

    def canal_volume(self, volume: np.ndarray) -> np.ndarray:
        """The spinal canal (the cord and the fluid around it), bool on the volume's grid, read
        from ``volume`` (the Hounsfield units this anatomy was read from) once: :func:`_spinal_canal`."""
        if self._canal is None:
            self._canal = _spinal_canal(volume, float(np.sqrt(self.pixel_mm2("axial"))))
        return self._canal

    @property
    def aorta_read(self) -> bool:
        """Whether the aorta was read already (:meth:`aorta_volume`)."""
        return self._aorta is not None

    def aorta_volume(self, volume: np.ndarray) -> np.ndarray:
        """The contrast-filled aorta below the chest (:func:`_abdominal_aorta` on the slices where
        the spinal canal is read and the chest's level is not reached), bool on the volume's grid,
        read from ``volume`` once; empty on a CT without contrast."""
        if self._aorta is None:
            canal = self.canal_volume(volume)
            slices = [z for z in np.flatnonzero(canal.any(axis=(1, 2))) if not self.at_chest_level(int(z))]
            self._aorta = _abdominal_aorta(volume, canal, float(np.sqrt(self.pixel_mm2("axial"))), slices)
        return self._aorta

    def region(self, asked: CtAsked, view: str, index: int, volume: np.ndarray) -> np.ndarray | None:
        """The structure ``asked`` on slice ``index`` of ``view``, bool on that slice's grid, empty
        where it is not on it; None where this CT cannot say (the heart of a volume without a
        chest; the spinal canal on a slice it was not followed onto; the aorta where it was not
        read: in the chest, without contrast, in another view; the costal cartilages where none is
        read, and whether they are on the slice at all). ``volume``: the Hounsfield
        units this anatomy was read from (the heart and the canal are read from them when first
        asked)."""
        if asked.structure == "lung":
            return self.lung(asked.side, view, index)
        if asked.structure == "spinal cord":
            return self._canal_cut(view, index, volume)
        if asked.structure == "autochthon":
            return self._autochthon_cut(asked.side, view, index, volume)
        if asked.structure == "costal cartilages":  # on an axial slice, where any is read; whether they are there: no
            cut = _cartilage_section(np.asarray(volume[index]), float(np.sqrt(self.pixel_mm2("axial")))) \
                if view == "axial" else None
            return cut if cut is not None and cut.any() else None
        if asked.structure == "aorta":  # on the axial slices it was read on; elsewhere the map's
            cut = self.aorta_volume(volume)[index] if view == "axial" else None
            return np.array(cut) if cut is not None and cut.any() else None
        if self.span(asked, volume) is None:
            return None
        from ..geometry import VIEWS, oriented

        whole = self.trachea_volume() if asked.structure == "trachea" else self.heart_volume(volume)
        return np.array(oriented(whole, VIEWS[view])[index])

    def _canal_cut(self, view: str, index: int, volume: np.ndarray) -> np.ndarray | None:
        from ..geometry import VIEWS, oriented

        cut = np.array(oriented(self.canal_volume(volume), VIEWS[view])[index])
        return cut if cut.any() else None

    def _autochthon_cut(self, side: str | None, view: str, index: int, volume: np.ndarray) -> np.ndarray | None:
        """The autochthon of ``side`` (None: both) on an axial slice where the spinal canal is read
        (:func:`_autochthon_section`); None elsewhere and in other views (the map's)."""
        if view != "axial" or not self.canal_volume(volume)[index].any():
            return None
        pixel_mm = float(np.sqrt(self.pixel_mm2("axial")))
        found = [_autochthon_section(np.asarray(volume[index]), self._canal[index], pixel_mm, one)
                 for one in ((side,) if side else ("right", "left"))]
        found = [cut for cut in found if cut is not None]
        return np.logical_or.reduce(found) if found else None

    def span(self, asked: CtAsked, volume: np.ndarray) -> tuple[int, int] | None:
        """The first and last axial slice the structure ``asked`` lies on, or None."""
        if asked.structure == "costal cartilages":
            return None  # read slice by slice where they are asked, not followed through the volume
        if asked.structure in ("spinal cord", "autochthon"):
            held = np.flatnonzero(self.canal_volume(volume).any(axis=(1, 2))).tolist()
        elif asked.structure == "aorta":
            held = np.flatnonzero(self.aorta_volume(volume).any(axis=(1, 2))).tolist()
        elif asked.structure == "trachea":
            held = sorted(self.trachea)
        elif asked.structure == "heart":
            self.heart_volume(volume)
            held = self._heart_slices
        else:
            held = np.flatnonzero(self.lung_volume(asked.side).any(axis=(1, 2))).tolist()
        return (int(held[0]), int(held[-1])) if len(held) else None

    def pixel_mm2(self, view: str) -> float:
        s, r, c = self.spacing
        return {"axial": r * c, "coronal": s * c, "sagittal": s * r}[view]

    def lung_share(self, index: int) -> float:
        """The share of the body's cross-section that is lung on axial slice ``index``."""
        return float(self.lungs[index].sum()) / max(1, int(self.body_area[index]))

    def at_chest_level(self, index: int) -> bool:
        """Whether axial slice ``index`` lies at or above (towards the head) the lowest slice where
        the lungs fill ``CHEST_LEVEL_SHARE`` of the body: the chest, and above it the lungs' tops
        and the neck, where they fill less again."""
        return self.chest_from is not None and index >= self.chest_from

    def level_rules_out(self, name: str, index: int) -> str | None:
        """Why the structure ``name`` is not on axial slice ``index`` by the lungs' level, or None
        where the level does not rule it out: a structure wholly below the diaphragm at the
        chest's level (:meth:`at_chest_level`); the liver or the spleen ``DOME_MM`` or more above
        the chest's lowest slice (their domes, under the diaphragm's, end below that)."""
        if not self.at_chest_level(index):
            return None
        share = self.lung_share(index)
        lungs = "On this CT the lungs (air below -400 HU inside the body, with the texture of lung, not gas)"
        if below_the_diaphragm(name):
            where = (f"fill {share:.0%} of the body's cross-section on this slice" if share >= CHEST_LEVEL_SHARE else
                     f"fill {CHEST_LEVEL_SHARE:.0%} of the body's cross-section or more from slice {self.chest_from} "
                     f"up, and this slice ({index}) lies above it")
            return f"{lungs} {where}: it lies at the level of the chest, and the {name} lies below the diaphragm."
        above = (index - self.chest_from) * self.spacing[0]
        if _UNDER_THE_DOME.search(name) and above >= DOME_MM:
            return (f"{lungs} fill {CHEST_LEVEL_SHARE:.0%} of the body's cross-section or more from slice "
                    f"{self.chest_from} up; this slice lies {above:.0f} mm above it, and the {name} ends under the "
                    f"diaphragm's dome, within {DOME_MM:.0f} mm of it.")
        return None
