"""The pointer agent (v8): a frozen pretrained image encoder, the query as a sentence
embedding, and a trained query-conditioned head that maps where the named structure lies.

Each turn it looks at the map and at the current mask, as a reader of both would:

1. no cell reaches the model's presence threshold (half of it where the folder's atlas
   fitted the structure onto the slice by its grey levels), or the query names an atlas
   region and the slice is very like atlas slices (``ATLAS_KNOWN``) whose level lacks it,
   or the slice's nearest atlas slices by the encoder's features are all of a kind of scan
   that never holds the structure (a liver asked for on a brain:
   :meth:`~napari_ibis.grounding.atlas.SliceAtlas.kind_elsewhere`): it answers that the
   structure is not in the image;
2. the target region is the connected part of the map (probability at least half the
   peak) around the peak; other parts as likely as that are other candidates (several
   nuclei for "segment the nucleus"): it segments the most likely one and says how many
   it saw and where the one it took lies;
3. no mask yet: a positive click at the point of the target region farthest from its edge;
4. then, the mask is compared with the region: a large part of the mask well outside the
   region gets a negative click, a large part of the region the mask misses gets a
   positive one; otherwise it answers that the structure is segmented.

Its words are composed from what it measured (where, how sure, what the mask misses or
spills over); no language model writes them. The folder is an ordinary transformers
model folder (``config.json`` with ``model_type: ibis_pointer`` and the head's
``model.safetensors``, about 1 MB); the encoder and the sentence encoder are read from
the fetched assets at load time. A folder may also hold an ``atlas.npz``
(:mod:`napari_ibis.grounding.atlas`, ``napari-ibis atlas FOLDER``): labelled slices whose
structure, moved onto the slice, weights the map where the query names one the atlas holds.
Where the atlas lists the structure as a region (AAL's brain regions: borders drawn by the
atlas, not seen as edges) and fits it onto the slice, the agent first places the atlas's
mask (:meth:`PointerPolicy.place`) and then judges it as it judges any mask
(benchmarks/atlas_mask.py measured it against clicking). Given the whole volume a slice was
cut from, and a ``brain_atlas.npz`` in the folder, it registers that brain atlas onto the
volume in 3-D instead (:mod:`napari_ibis.grounding.brain_atlas`): on a real brain MRI the
region's place and whether it reaches the slice come from that fit
(:meth:`PointerPolicy.brain_region`), which a slice alone could not give. Given a CT volume in
Hounsfield units, it reads the lungs and the chest's level from them
(:mod:`napari_ibis.grounding.ct_anatomy`, :meth:`PointerPolicy.ct_reading`): a lung is segmented
from the air inside the body, a kidney or the bladder asked at the chest's level is not there.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..grounding.ct_anatomy import (AIR_HU, CARTILAGE_ABOVE_HU, CARTILAGE_DEPTH_MM, CARTILAGE_TOP_HU, CtAsked,
                                    by_the_lungs_level, ct_structure_asked)
from ..grounding.names import in_atlas_words, spoken
from ..grounding.vocabulary import IRREGULAR_PLURALS, Vocabulary, names_a_lesion
from ..protocol import Response
from .base import DecidingPolicy, Located, Placement, PolicyRequest, VolumeSlice
from .oracle import describe_place

SPILL_SHARE = 0.25  # of the mask, outside the (grown) target region, before a negative click
MISS_SHARE = 0.3  # of the (shrunk) target region, outside the mask, before a positive click
# on a CT, a spill is kept where it has the units of the rest of the mask: medians this close, in HU,
ONE_TISSUE_HU = 20.0
ONE_TISSUE_SPREAD_HU = 45.0  # and both interquartile ranges at most this (docs/BENCHMARKS.md)
# not for a muscle: muscles lie against muscles of their own units (the gluteus minimus under the medius)
MUSCLE_NAME = re.compile(r"\b(gluteus|iliopsoas|psoas|autochthon|erector spinae|muscles?)\b", re.IGNORECASE)
# read from a CT's units to their edges (bone, fat): placed as the mask, not clicked (place; docs/BENCHMARKS.md)
PLACED_FROM_UNITS = {"spinal cord", "autochthon", "costal cartilages"}
# a rib named by its number ("the left rib 9") or a vertebra by its level ("the L3 vertebra"), which one
# slice cannot give (docs/BENCHMARKS.md, "Numbered ribs" and "A vertebra's level")
NUMBERED_RIB = re.compile(r"\brib (\d+)\b", re.IGNORECASE)
VERTEBRA_LEVEL = re.compile(r"\b([CTLS]\d{1,2}) vertebra|\bvertebra ([CTLS]\d{1,2})\b", re.IGNORECASE)
BOTH_SIDES = re.compile(r"\b(both|bilateral|left and right|right and left)\b", re.IGNORECASE)
ATLAS_FILE = "atlas.npz"
BRAIN_ATLAS_FILE = "brain_atlas.npz"
ATLAS_POWER = 2  # the first click: the map times the atlas prior to this power (benchmarks/atlas_prior.py --fuse)
ATLAS_EXTENT = 0.5  # later turns: the atlas's extent of the structure, where its prior is above this
ATLAS_REACH = 0.1  # later turns: the map where the atlas prior is above this
ATLAS_PRESENCE = 0.5  # the presence threshold is this much of the model's where the atlas fitted the named structure
ATLAS_KNOWN = 0.9  # a slice this like an atlas slice (before any fit) whose level lacks a region: "not present"


def interior_point(region: np.ndarray) -> tuple[int, int]:
    """The pixel of ``region`` farthest from its edge."""
    from scipy import ndimage as ndi

    distance = ndi.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(row), int(col)


def one_tissue(hu: np.ndarray, spill: np.ndarray, rest: np.ndarray) -> str | None:
    """Why the ``spill`` of a mask and the ``rest`` of it are one tissue on a CT slice in Hounsfield
    units ``hu`` (their medians within ``ONE_TISSUE_HU``, both interquartile ranges within
    ``ONE_TISSUE_SPREAD_HU``), or None where they are not."""
    if not spill.any() or not rest.any():
        return None
    (low_s, mid_s, high_s), (low_r, mid_r, high_r) = (np.percentile(hu[part], [25, 50, 75]) for part in (spill, rest))
    if abs(mid_s - mid_r) > ONE_TISSUE_HU or max(high_s - low_s, high_r - low_r) > ONE_TISSUE_SPREAD_HU:
        return None
    return f"what it would cut has the units of what it keeps ({mid_s:.0f} against {mid_r:.0f} HU)"


def _largest_part(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    labels, count = ndi.label(mask)
    if count <= 1:
        return mask
    sizes = ndi.sum(mask, labels, range(1, count + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def candidates(probability: np.ndarray, threshold: float) -> list[np.ndarray]:
    """Regions as likely as the peak (at least half its probability) whose peak reaches
    ``threshold``, most likely first."""
    from scipy import ndimage as ndi

    peak = float(probability.max())
    labels, count = ndi.label(probability >= max(0.5 * peak, 0.5 * threshold))
    peaks = ndi.maximum(probability, labels, range(1, count + 1)) if count else []
    order = np.argsort(peaks)[::-1]
    return [labels == (int(i) + 1) for i in order if peaks[i] >= threshold]


def decide(probability: np.ndarray, request: PolicyRequest, threshold: float, cell: float,
           extent: np.ndarray | None = None, one_target: bool = False, measured: bool = True,
           snap=None, same_tissue=None) -> Response:
    """One turn from the probability map (per pixel of the slice) and the current mask;
    ``cell``: the map's resolution in pixels (how far its edges may be trusted). ``extent``:
    where a second source (the atlas) puts the target; then the mask spills only where it
    leaves both the map's region and the extent, and misses only what both hold. ``one_target``:
    all the likely parts are one structure (both lungs), not candidates to choose among.
    ``measured``: ``probability`` is the model's (its peak is a confidence it states), not a
    region read by other means (which it does not). ``snap``: where the first click goes instead
    of the region's innermost point, given it, (row, col, why) or None to leave it there.
    ``same_tissue``: given the spill and the rest of the mask, why they are one tissue (the spill
    is kept, no negative click) or None."""
    from scipy import ndimage as ndi

    height, width = probability.shape
    peak = float(probability.max())
    found = candidates(probability, threshold)
    if one_target and found:
        found = [np.logical_or.reduce(found)]
    if not found:
        return Response(
            thought=(f"I look for what the query asks for: the most likely place reaches only {peak:.0%} "
                     f"confidence, below the {threshold:.0%} I need to call it present."),
            terminate=True, not_present=True, answer="The requested structure is not present in this image.")
    region, others = found[0], len(found) - 1
    mask = np.zeros((height, width), dtype=bool) if request.mask is None else np.asarray(request.mask, dtype=bool)
    centre = interior_point(region)
    place = describe_place(*centre, height, width)
    if not mask.any():
        if request.clicks:
            return Response(thought="My clicks have not produced a mask of the target; I stop here.",
                            terminate=True, answer="I could not segment the structure.")
        seen = (f" I see {others + 1} candidates; I take the most likely one, around {place}." if others
                else f" It lies around {place}" + (f" ({peak:.0%} confident)." if measured else "."))
        moved = snap(*centre) if snap is not None else None
        if moved is not None:
            centre, seen = moved[:2], f"{seen} {moved[2]}"
        action = request.profile.action_at(*centre, True, height, width, target=None)
        return Response(thought=f"There is no mask yet.{seen} I place a positive point inside it.", actions=(action,))
    reach = max(1, int(round(cell)))
    grown = ndi.binary_dilation(region if extent is None else region | extent, iterations=reach)
    shrunk = ndi.binary_erosion(region if extent is None else region & extent, iterations=max(1, reach // 2))
    spill = _largest_part(mask & ~grown)
    kept = ""
    if spill.sum() > SPILL_SHARE * mask.sum():
        row, col = interior_point(spill)
        same = same_tissue(spill, mask & ~spill) if same_tissue is not None else None
        if same is None:
            action = request.profile.action_at(row, col, False, height, width, target=None)
            return Response(thought=(f"The mask spills over tissue that is not the target around "
                                     f"{describe_place(row, col, height, width)}; I place a negative point there."),
                            actions=(action,))
        kept = (f"The mask reaches past where I expect the target around {describe_place(row, col, height, width)}, "
                f"but {same}, so I keep it. ")
    miss = _largest_part(shrunk & ~mask)
    if shrunk.any() and miss.sum() > MISS_SHARE * shrunk.sum():
        row, col = interior_point(miss)
        if not any(c.row == row and c.col == col for c in request.clicks):
            action = request.profile.action_at(row, col, True, height, width, target=None)
            return Response(thought=(f"{kept}The mask misses part of the target around "
                                     f"{describe_place(row, col, height, width)}; I add a positive point there."),
                            actions=(action,))
    which = f" I segmented the one around {place}; {others} other candidate(s) remain." if others else ""
    covers = "The mask covers the target" if kept else "The green mask covers the target and stays within it"
    return Response(thought=f"{kept}{covers}; no further click is needed." + which,
                    terminate=True, answer="The segmentation is complete." + which)


class PointerPolicy(DecidingPolicy):
    name = "pointer"
    read_ct_units = True  # read a CT volume's Hounsfield units (ct_reading); benchmarks/ct_anatomy.py turns it off to compare

    def __init__(self, folder: str | Path, device: str = "cpu") -> None:
        import torch

        from ..grounding.encoders import build_encoder
        from ..grounding.head import PointerHead
        from ..grounding.text import QueryEncoder
        from .vlm import quiet_loading

        self.folder = Path(folder)
        with quiet_loading():
            self.head = PointerHead.from_pretrained(str(self.folder), local_files_only=True).eval()
            self.queries = QueryEncoder()
        self.encoder = build_encoder(self.head.config.encoder)
        self.vocabulary = Vocabulary(self.head.config.structures)
        from ..grounding.atlas import SliceAtlas
        from ..grounding.brain_atlas import VolumeAtlas

        self.atlas = self._optional(SliceAtlas, ATLAS_FILE, "an atlas", "")
        # the brain atlas registered onto brain volumes (napari_ibis.grounding.brain_atlas)
        self.brain = self._optional(VolumeAtlas, BRAIN_ATLAS_FILE, "a brain atlas", " --what brain")
        self._brain_fit: tuple | None = None  # (the volume's key: _volume_key, its fit)
        self._ct_read: tuple | None = None  # (the volume's key, its CtAnatomy or None where it is no CT)
        self._turn = threading.local()  # the Stop event of the turn running on this thread
        self.device = torch.device("cpu" if device == "auto" else device)
        self._image_key = None
        self._units: tuple | None = None  # the last slice read: (its volume array, (view, index, shape), _slice_units)
        self._cells = None
        self._framing = None
        self._maps: dict[str, np.ndarray] = {}
        self._priors: dict[str, np.ndarray | None] = {}  # the atlas prior per query (None: not used)
        self._fits: dict[str, tuple[str, float] | None] = {}  # per query: the atlas's fit ("grey"/"edges"), how well
        self._elsewhere: dict[str, float | None] = {}  # per region query: how like an atlas slice whose level lacks it
        self._known: dict[str, np.ndarray | None] = {}  # per region query on a slice like the atlas's own: the region
        self._descriptor = None  # the slice's scan_descriptor, where the atlas keeps descriptors by this encoder
        self._kinds: dict[str, str | None] = {}  # per query: the kind of scan the slice is, where it never holds the structure

    def _optional(self, kind, file_name: str, what: str, option: str):
        """``kind.load`` of the folder's ``file_name``, None where there is none; a file that
        does not read is one line (ModelError) saying how to write it again."""
        if not (self.folder / file_name).is_file():
            return None
        from ..errors import ModelError

        try:
            return kind.load(self.folder / file_name)
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"{self.folder / file_name} is not readable as {what} ({exc}): remove it, or write it "
                             f"again with napari-ibis atlas {self.folder}{option}") from None

    def identity(self) -> dict:
        return {"name": self.name, "folder": str(self.folder), "model_type": "ibis_pointer",
                "encoder": self.head.config.encoder,
                "presence_threshold": self.head.config.presence_threshold,
                "atlas": None if self.atlas is None else f"{len(self.atlas.grey)} slices, {len(self.atlas.names)} structures"}

    # -- the map -----------------------------------------------------------------------
    def probability_map(self, image: np.ndarray, query: str) -> np.ndarray:
        """Per pixel of ``image``: how likely it belongs to the structure ``query`` names."""
        import torch

        from ..grounding.head import pool_features, position_channels, query_vectors
        from ..segmenters.base import image_key

        key = image_key(image)
        if key != self._image_key:
            features, framing = self.encoder.encode(image)
            self._descriptor = self._scan_descriptor(features, framing, image)
            features = pool_features(features[None], self.head.config.grid)
            framing = dataclasses.replace(framing, grid=features.shape[-1])
            positions = torch.from_numpy(position_channels(framing, image, self.head.config.body_box)[None])
            with torch.inference_mode():
                self._cells = self.head.cells(features, positions)
            self._image_key, self._framing = key, framing
            self._maps, self._priors, self._fits, self._elsewhere, self._known, self._kinds = {}, {}, {}, {}, {}, {}
            self._members = {}
        if query not in self._maps:
            vector = query_vectors(self.queries, [query])[0]
            with torch.inference_mode():
                logits = self.head(cells=self._cells, query=torch.from_numpy(vector[None]))[0].clone()
                rows, cols = self._framing.valid_cells
                logits[rows:, :] = -20.0  # cells over the padding
                logits[:, cols:] = -20.0
            self._maps[query] = self._framing.to_image(torch.sigmoid(logits).numpy())
            self._priors[query] = None if self.atlas is None else self.atlas.prior(image, query)
            self._fits[query] = None if self._priors[query] is None else (self.atlas.last_fit,
                                                                           self.atlas.last_similarity)
            region = self.atlas is not None and self.atlas.name_in(query) in self.atlas.regions
            self._elsewhere[query] = self.atlas.last_likest if region and self.atlas.last_elsewhere else None
            known = region and self._priors[query] is not None and self.atlas.last_likest >= ATLAS_KNOWN
            self._known[query] = self.atlas.last_region if known else None
            self._kinds[query] = None if self._descriptor is None else self.atlas.kind_elsewhere(
                self._descriptor, self.atlas.name_in(query))
        return self._maps[query]

    def _scan_descriptor(self, features, framing, image: np.ndarray) -> np.ndarray | None:
        """The slice's :func:`~napari_ibis.grounding.atlas.scan_descriptor` where the atlas keeps
        descriptors by this model's encoder (an atlas written before them keeps none)."""
        if self.atlas is None or self.atlas.descriptors is None or self.atlas.encoder != self.head.config.encoder:
            return None
        from ..grounding.atlas import scan_descriptor

        return scan_descriptor(features, framing, image)

    def member_asked(self, image: np.ndarray, query: str, volume: VolumeSlice | None = None,
                     cancel=None) -> tuple[str, str | None]:
        """The query the agent works on, and why where it is not ``query``: where ``query`` names a
        kind of the atlas's structures without its side, lobe or level ("segment the kidney":
        the head learnt only a left and a right kidney and answers "not present"), the member
        that the map and the atlas together find likeliest on ``image``. Only where the atlas fits
        a member onto the slice (a synthetic phantom's "kidney" is left as asked); where every
        member belongs to another kind of scan, the first, so that the agent says so. A query
        naming a lesion the folder was not taught (:class:`~napari_ibis.grounding.vocabulary.Untaught`):
        :class:`~napari_ibis.errors.InputError`, so that no route (a run, a placement, a search
        through the volume) guesses at it. Given the ``volume`` the slice is from, where the
        brain atlas registered onto it places the members (:meth:`brain_region`), the member
        whose region is largest on the slice."""
        untaught = self.vocabulary.untaught(query)
        if untaught is not None and untaught.refused:
            from ..errors import InputError

            raise InputError(untaught.line)
        query = in_atlas_words(query)  # the names it learnt: "the IVC" is the inferior vena cava to the head too
        read = ct_structure_asked(query)
        if read is not None and not read.lobe and self.read_ct_units and self.ct_anatomy(volume) is not None \
                and not names_a_lesion(query):
            return query, None  # the lungs, heart or trachea, read from the Hounsfield units (ct_reading), not a lobe
        if self.pair_asked(query) is not None:
            return query, None  # both members, as one mask (_decide_pair)
        found = None if self.atlas is None or names_a_lesion(query) else self.atlas.members_in(query)
        if found is None:  # a lesion ("the lung tumour") is looked for as asked, not as its organ
            return query, None
        self.probability_map(image, query)  # the image's caches
        key = (query, volume is not None)
        if key not in self._members:
            kind, members = found
            scored, elsewhere, registered = [], [], []
            for member in members:
                asked = f"segment the {member}"
                placed = self.brain_region(image, asked, volume, cancel)
                if placed is not None:
                    registered.append((int(placed[0].sum()), member))
                    continue
                probability = self.probability_map(image, asked)
                prior = self._priors.get(asked)
                if self._kinds.get(asked):
                    elsewhere.append(member)
                elif prior is not None:
                    scored.append((float((probability * prior**ATLAS_POWER).max()), member))
            chosen, why = query, None
            if registered or scored:
                value, member = max(registered or scored)
                chosen = f"segment the {member}"
                why = (f"You asked for the {spoken(kind)}; " + (
                    f"the atlas brain has the {' and the '.join(map(spoken, members))}. I look for the "
                    f"{spoken(member)}, the larger on this slice where the atlas registered onto this volume puts "
                    f"them ({value} px)." if registered else
                    f"the labelled scans I know have the {' and the '.join(map(spoken, members))}. I look for the "
                    f"{spoken(member)}, where my map and their fitted slices agree best ({value:.0%})."))
            elif elsewhere:
                chosen = f"segment the {elsewhere[0]}"
            self._members[key] = (chosen, why)
        return self._members[key]

    def pair_asked(self, query: str) -> list[str] | None:
        """The left and the right member of a kind where ``query`` asks for both ("the kidneys",
        "both hippocampi", "the left and right iliopsoas": one mask of the two), else None (a
        kind without a side is one member, :meth:`member_asked`)."""
        if self.atlas is None or names_a_lesion(query):
            return None
        named = sorted({name.lower() for name in self.vocabulary.named_in(query)})
        if len(named) == 2 and [n.partition(" ")[0] for n in named] == ["left", "right"] \
                and len({n.partition(" ")[2] for n in named}) == 1:  # "the left kidney and the right kidney"
            return sorted(name for name in self.vocabulary.names if name.lower() in named)
        words = in_atlas_words(query).lower()
        for singular, plural in IRREGULAR_PLURALS.items():
            words = re.sub(rf"\b{plural}\b", f"{singular}s", words)
        found = self.atlas.members_in(re.sub(r"\b(left|right) and (left|right) ", "", words))
        if found is None:
            return None
        kind, members = found
        if sorted(m.partition(" ")[0].lower() for m in members) != ["left", "right"]:
            return None
        plural = re.search(rf"\b{re.escape(kind)}(?:s|es)\b", words)
        return sorted(members) if plural or BOTH_SIDES.search(words) else None

    def guided_map(self, image: np.ndarray, query: str, first_turn: bool) -> np.ndarray:
        """The map the agent decides on: :meth:`probability_map`, weighted where the folder's
        atlas holds the named structure. On the first turn the map times the prior squared
        says where to click; on later turns the map inside the prior's reach (above
        ``ATLAS_REACH``) keeps the features' extent of the structure for judging the mask.
        Either way the peak stays the features' own. Where the atlas fitted by grey levels (a
        labelled slice holding the structure resembles this one, which is rarer where the
        structure is absent: docs/BENCHMARKS.md), :meth:`decide` asks that peak for
        ``ATLAS_PRESENCE`` of the model's presence threshold; a fit by edges (an MR slice, a CT
        atlas) places the structure but comes as readily where it is absent."""
        probability = self.probability_map(image, query)
        prior = self._priors.get(query)
        if prior is None:
            return probability
        weighted = probability * (prior**ATLAS_POWER if first_turn else prior > ATLAS_REACH)
        return weighted * (probability.max() / max(float(weighted.max()), 1e-12))

    def _presence_threshold(self, query: str) -> float:
        """The model's presence threshold, times ``ATLAS_PRESENCE`` where the atlas fitted the
        structure by grey levels (see :meth:`guided_map`)."""
        fit = self._fits.get(query)
        sure = fit is not None and fit[0] == "grey"  # an edges fit comes as readily where the structure is absent
        if names_a_lesion(query):
            sure = False  # the organ fitted; of a lesion in it the atlas knows nothing
        return self.head.config.presence_threshold * (ATLAS_PRESENCE if sure else 1.0)

    def _extent(self, query: str) -> np.ndarray:
        """Where the atlas puts the structure: the region itself on a slice it knows
        (``ATLAS_KNOWN``), else its prior above ``ATLAS_EXTENT``."""
        known = self._known.get(query)
        return self._priors[query] > ATLAS_EXTENT if known is None else known

    def place(self, image: np.ndarray, query: str, volume: VolumeSlice | None = None,
              cancel=None) -> Placement | None:
        """The atlas's extent of the structure ``query`` names on ``image`` (its prior above
        ``ATLAS_EXTENT``, the extent the agent judges masks by) where the atlas lists it as a
        region and fitted it onto ``image``; otherwise None (the agent clicks from nothing). On a
        slice very like one of the atlas's own (``ATLAS_KNOWN``) the fit is close enough for the
        region itself, moved without the blur, which is then also the extent it judges by.
        Whether a region is on the slice is then the atlas's call where it fitted by grey
        levels (a brain region is there or not by the slice's level, which the fit matches; on
        a second brain this cuts v8's false "not present" from 0.25 to 0.08), and still the
        map's where it fitted by edges, which come as readily where the structure is absent.
        Measured against other choices in docs/BENCHMARKS.md ("Atlas regions placed"). Given
        the ``volume`` the slice is from, the region the brain atlas registered onto it puts on
        the slice (:meth:`brain_region`) where that applies, and on a CT the spinal canal and the
        back muscles beside it read from its units (:meth:`ct_reading`, ``PLACED_FROM_UNITS``),
        whose edges are the bone's and the fat's."""
        query, why = self.member_asked(image, query, volume, cancel)
        pair = self.pair_asked(query)
        if pair is not None:  # both members: each one's placement, united
            placed = {member: self.place(image, f"segment the {member}", volume, cancel) for member in pair}
            placed = {member: placement for member, placement in placed.items() if placement is not None}
            if not placed:
                return None
            which = " and the ".join(map(spoken, placed))
            return Placement(np.logical_or.reduce([p.mask for p in placed.values()]), thought=(
                f"You asked for both of the {' and the '.join(map(spoken, pair))}: I place the {which} as one mask. "
                + next(iter(placed.values())).thought))
        registered = self.brain_region(image, query, volume, cancel)
        if registered is not None:
            region, fit = registered
            if not region.any():
                return None  # the first turn says where it lies instead
            return Placement(region, thought=(f"{why} " if why else "") + (
                f"The {spoken(self.atlas.name_in(query))} is a region whose borders an atlas draws, not edges I could "
                f"click along. {_registered_words(fit)}; I place the region where it lands on this slice, then check "
                f"that mask against what I see."))
        read = self.ct_reading(image, query, volume)
        if read is not None and read.asked is not None and read.asked.structure in PLACED_FROM_UNITS \
                and read.region.any():
            its, it = ("Their", "them as they are") if read.asked.structure in _PLURAL else ("Its", "it as it is")
            return Placement(read.region, thought=(f"{why} " if why else "") + (
                f"{read.why} {its} edges are read to the pixel ({_PLACED_EDGES[read.asked.structure]}), where a "
                f"click would give a coarser mask: I place {it}, then check that mask against what I see."))
        if self.atlas is None or self.atlas.name_in(query) not in self.atlas.regions or names_a_lesion(query):
            return None
        probability = self.guided_map(image, query, first_turn=True)
        prior = self._priors.get(query)
        if prior is None or self._kinds.get(query):
            return None
        name, (fit, similarity) = self.atlas.name_in(query), self._fits[query]
        if fit != "grey" and not candidates(probability, self._presence_threshold(query)):
            return None
        what = "correlates" if fit == "grey" else "matches in its edges at"
        return Placement(self._extent(query), thought=(f"{why} " if why else "") + (
            f"The {spoken(name)} is a region whose borders an atlas draws, not edges I could click along. I place "
            f"it where labelled scans have it (their closest slice, fitted to this one, {what} "
            f"{similarity:.2f}), then check that mask against what I see."))

    def locate(self, image: np.ndarray, query: str, volume: VolumeSlice | None = None, cancel=None) -> Located:
        """The map the first click is chosen on (:meth:`guided_map`), read as a whole: its
        probability summed over the most likely region (an expected area in pixels), its peak,
        and whether that region reaches the presence threshold the first turn asks for. Where
        the atlas places the structure elsewhere (another kind of scan, a brain level without
        the region), it is not present whatever the map says, as :meth:`decide` would answer.
        Where the brain atlas registered onto ``volume`` applies (:meth:`brain_region`), the
        region's area on the slice is the score."""
        asked, _ = self.member_asked(image, query, volume, cancel)
        pair = self.pair_asked(asked)
        if pair is not None:  # both members: where the two together are seen best
            located = [self.locate(image, f"segment the {member}", volume, cancel) for member in pair]
            return dataclasses.replace(located[0], score=sum(one.score for one in located),
                                       peak=max(one.peak for one in located), present=any(one.present for one in located))
        registered = self.brain_region(image, asked, volume, cancel)
        if registered is not None:  # the region's cross-section where the registered brain atlas puts it
            area = float(registered[0].sum())
            return Located(score=area, peak=1.0 if area else 0.0, present=area > 0,
                           basis="where the atlas brain registered onto the volume puts it")
        read = self.ct_reading(image, asked, volume)
        if read is not None:
            area = float(read.region.sum())
            return Located(score=area, peak=1.0 if area else 0.0, present=area > 0, basis=read.basis)
        probability = self._off_air(self.guided_map(image, asked, first_turn=True), volume, asked)
        found = candidates(probability, self._presence_threshold(asked))
        likest = self._elsewhere.get(asked)
        ruled_out = bool(self._kinds.get(asked)) or (likest is not None and likest >= ATLAS_KNOWN)
        present = bool(found) and not ruled_out
        score = float(probability[found[0]].sum()) if present else 0.0
        return Located(score=score, peak=float(probability.max()), present=present)

    def respond(self, request: PolicyRequest, on_text=None, cancel=None) -> str:
        self._turn.cancel = cancel  # a fit of the brain atlas within the turn obeys Stop too
        try:
            return super().respond(request, on_text, cancel)
        finally:
            self._turn.cancel = None

    def decide(self, request: PolicyRequest) -> Response:
        asked, why = self.member_asked(request.image, request.query, request.volume)
        response = self._decide(dataclasses.replace(request, query=asked))
        fresh = (request.mask is None or not np.asarray(request.mask).any()) and not request.clicks
        if why and fresh:
            response = dataclasses.replace(response, thought=f"{why} {response.thought}")
        untaught = self.vocabulary.untaught(request.query)
        if untaught is not None and self.ct_reading(request.image, asked, request.volume) is not None:
            untaught = None  # read from a CT's units (the trachea), not guessed
        if untaught is not None:  # it looks all the same, and says that it guesses
            if fresh:
                response = dataclasses.replace(response, thought=(
                    f"I was not taught the {untaught.target}; I look where its words lead me, so this is a guess. "
                    f"{response.thought}"))
            if response.terminate and response.answer:
                response = dataclasses.replace(response, answer=(
                    f"{response.answer} This is a guess: I was not taught the {untaught.target}."))
        else:
            response = _not_counted_caveat(response, request.query, fresh)
        return response

    def _decide(self, request: PolicyRequest) -> Response:
        first_turn = request.mask is None or not np.asarray(request.mask).any()
        read = self.ct_reading(request.image, request.query, request.volume)
        if read is not None and (read.region.any() or (first_turn and not request.clicks)):
            return self._decide_ct(request, first_turn, read)  # both back muscles too, read from the units
        pair = self.pair_asked(request.query)
        if pair is not None:  # before the registered region: "the left and right caudate" names the right one too
            return self._decide_pair(request, first_turn, pair)
        registered = self.brain_region(request.image, request.query, request.volume)
        if registered is not None:
            return self._decide_registered(request, first_turn, *registered)
        mapped = self.guided_map(request.image, request.query, first_turn)
        probability = self._off_air(mapped, request.volume, request.query)
        kind = self._kinds.get(request.query)
        if first_turn and not request.clicks and kind:
            name = self.atlas.name_in(request.query)
            held = sorted(set(self.atlas.kinds[self.atlas.holders[name]]))
            return Response(
                thought=(f"The {self.atlas.kind_nearest} scans I know most like this image, as my image encoder "
                         f"sees them, are all from scans of the {kind}, and I have seen the {spoken(name)} only on scans of "
                         f"the {' and '.join(held)}."),
                terminate=True, not_present=True, answer="The requested structure is not present in this image.")
        likest = self._elsewhere.get(request.query)
        if first_turn and not request.clicks and likest is not None and likest >= ATLAS_KNOWN:
            name = self.atlas.name_in(request.query)
            return Response(
                thought=(f"The {spoken(name)} is a region an atlas draws. This slice is very like labelled slices of "
                         f"mine (correlation {likest:.2f}), and those at its level do not hold the {spoken(name)}."),
                terminate=True, not_present=True, answer="The requested structure is not present in this image.")
        threshold = self._presence_threshold(request.query)
        if first_turn and not request.clicks and probability is not mapped and candidates(mapped, threshold) \
                and not candidates(probability, threshold):
            return Response(
                thought=(f"My map puts the {spoken(self.atlas.name_in(request.query) if self.atlas else None) or 'structure'}"
                         f" where this CT's units are air (below {AIR_HU:.0f} HU: the lungs, gas), and it does not "
                         f"hold air; where they are not, the most likely place reaches only {probability.max():.0%}, "
                         f"below the {threshold:.0%} I need to call it present."),
                terminate=True, not_present=True, answer="The requested structure is not present in this image.")
        prior = self._priors.get(request.query)
        extent = None if prior is None or first_turn else self._extent(request.query)
        cell = self._framing.size / self._framing.grid / self._framing.scale
        fit = self._fits.get(request.query)
        snap = self._tissue_snap(request, probability) if first_turn and not request.clicks else None
        same_tissue = None if first_turn else self._same_tissue(request, probability.shape)
        response = decide(probability, request, threshold, cell, extent, snap=snap, same_tissue=same_tissue)
        if prior is not None and first_turn and response.actions:
            what = "correlates" if fit[0] == "grey" else "matches in its edges at"
            name = self.atlas.name_in(request.query)
            response = dataclasses.replace(response, thought=response.thought + (
                f" I weighted my map by where labelled scans have the {spoken(name)} (their closest slice, fitted to this"
                f" one, {what} {fit[1]:.2f})."))
        return response

    def _decide_pair(self, request: PolicyRequest, first_turn: bool, members: list[str]) -> Response:
        """A turn for both members of a pair as one mask: each member's map, or its region where
        the brain atlas registered onto the volume places it; those found on the slice are one
        target (:func:`decide`'s ``one_target``). The first click goes into one; while the mask
        does not reach a member found, a click goes where a first click for it would, and the
        segmenter decodes the two parts apart (:mod:`napari_ibis.segmenters.parts`; in the paper's
        grammar, where a click names its target, the two members' clicks are never joined)."""
        asked = {member: f"segment the {member}" for member in members}
        registered = {m: self.brain_region(request.image, q, request.volume) for m, q in asked.items()}
        found = []  # (member, its map, its extent for later turns, where a first click for it goes)
        if all(r is not None for r in registered.values()):
            for member, (region, _) in registered.items():
                if region.any():
                    lifted = np.maximum(self.probability_map(request.image, asked[member]), region.astype(np.float32))
                    found.append((member, lifted, region, region))
            threshold, measured = self.head.config.presence_threshold, False
        else:
            for member, q in asked.items():
                probability = self._off_air(self.guided_map(request.image, q, first_turn), request.volume, q)
                if candidates(probability, self._presence_threshold(q)):
                    first = candidates(self._off_air(self.guided_map(request.image, q, True), request.volume, q), 0.0)
                    extent = None if self._priors.get(q) is None else self._extent(q)
                    found.append((member, probability, extent, first[0] if first else None))
            threshold, measured = min(self._presence_threshold(q) for q in asked.values()), True
        both = " and the ".join(map(spoken, members))
        if not found:
            return Response(thought=f"You asked for both: I look for the {both}, and find neither on this slice.",
                            terminate=True, not_present=True, answer="The requested structure is not present in this image.")
        height, width = np.shape(request.image)[:2]
        mask = np.zeros((height, width), bool) if first_turn else np.asarray(request.mask, dtype=bool)
        for member, _, _, spot in sorted(found, key=lambda f: -float(f[1].max())):
            if spot is None or (spot & mask).any():
                continue
            row, col = interior_point(spot)  # a member the mask does not reach at all (the click names it)
            if any(c.row == row and c.col == col for c in request.clicks):
                continue
            place = describe_place(row, col, height, width)
            if first_turn and not request.clicks:
                seen = "both" if len(found) == 2 else (
                    f"only the {spoken(member)} on this slice: the "
                    f"{spoken(next(m for m in members if m != member))} is not here")
                thought = (f"You asked for both: I look for the {both} as one mask, and find {seen}. There is no mask "
                           f"yet. The {spoken(member)} lies around {place}; I place a positive point inside it.")
            else:
                thought = (f"The mask holds one of the two but not the {spoken(member)}, around {place}; I add a "
                           "positive point there.")
            return Response(thought=thought, actions=(request.profile.action_at(row, col, True, height, width,
                                                                                target=member),))
        peak = max(float(p.max()) for _, p, _, _ in found)
        probability = np.maximum.reduce([p * (peak / max(float(p.max()), 1e-12)) for _, p, _, _ in found])
        extents = [e for _, _, e, _ in found]
        extent = None if first_turn or any(e is None for e in extents) else np.logical_or.reduce(extents)
        cell = self._framing.size / self._framing.grid / self._framing.scale
        return decide(probability, request, threshold, cell, extent, one_target=True, measured=measured)

    # -- a CT volume's Hounsfield units -------------------------------------------------
    def ct_anatomy(self, volume: VolumeSlice | None):
        """The :class:`~napari_ibis.grounding.ct_anatomy.CtAnatomy` of ``volume`` (read once per
        volume: 0.9 s for 512 x 512 x 61, 10 s for 500 slices on 2 cores), or None: no volume, or
        not in Hounsfield units (an MRI)."""
        if volume is None:
            return None
        from ..grounding.ct_anatomy import CtAnatomy

        key = self._volume_key(volume)
        if self._ct_read is None or self._ct_read[0] != key:
            self._ct_read = (key, CtAnatomy.read(np.asarray(volume.volume), volume.spacing))
        return self._ct_read[1]

    def ct_reading(self, image: np.ndarray, query: str, volume: VolumeSlice | None) -> CtRead | None:
        """What the Hounsfield units of the CT ``volume`` decide about ``query`` on its slice
        ``image``, or None where they decide nothing: the lungs, the heart, the trachea, the
        spinal cord, the aorta or the autochthon asked for (their region on the slice, empty where
        they are not on it; for a lobe only its absence; the cord and the muscles beside it only
        where the cord was followed onto the slice; the aorta only on the axial slices below the
        chest where it was read, never its absence), or a structure the lungs' level rules out on an
        axial slice (an empty region: :meth:`~napari_ibis.grounding.ct_anatomy.CtAnatomy.level_rules_out`).
        A lesion ("the lung tumour") is left to the map."""
        question = self._ct_question(query, volume)
        if question is None:
            return None
        asked, name = question
        anatomy = self.ct_anatomy(volume)
        if anatomy is None:
            return None
        if asked is None:
            why = anatomy.level_rules_out(spoken(name or "structure asked for"), volume.index)
            if why is None:
                return None
            return CtRead(np.zeros(image.shape[:2], bool), basis="the lungs' share of this CT's slices", why=why)
        cut = anatomy.region(asked, volume.view, volume.index, volume.volume)
        if cut is None:
            return None  # no chest in this volume (the heart), the canal not followed onto this slice: the map's
        region = _on_grid(cut, image.shape[:2])
        if asked.lobe and region.any():
            return None  # which lobe, the units cannot tell: the map decides
        if asked.structure == "costal cartilages" and not self._map_finds(image, query):
            return None  # whether they are on the slice, the units cannot tell: the map decides
        return CtRead(region, basis=_CT_BASIS[asked.structure], why=_ct_words(anatomy, asked, volume, region),
                      asked=asked)

    def _map_finds(self, image: np.ndarray, query: str) -> bool:
        """Whether the first turn's map finds the structure ``query`` names on ``image`` (a
        region reaching the presence threshold, on a kind of scan that may hold it)."""
        probability = self.guided_map(image, query, first_turn=True)
        return bool(candidates(probability, self._presence_threshold(query))) and not self._kinds.get(query)

    def _ct_question(self, query: str, volume: VolumeSlice | None) -> tuple[CtAsked | None, str | None] | None:
        """Where a CT's units may decide ``query`` on ``volume``'s slice: (the structure they give,
        or None; the atlas's name for what the lungs' level may rule out); else None (no volume,
        the units not read, a lesion, nothing they speak of)."""
        if volume is None or not self.read_ct_units or names_a_lesion(query):
            return None
        asked = ct_structure_asked(query)
        name = None if asked is not None or self.atlas is None else self.atlas.name_in(query)
        if asked is None and not (volume.view == "axial" and by_the_lungs_level(name or query)):
            return None
        return asked, name

    def _tissue_snap(self, request: PolicyRequest, probability: np.ndarray):
        """On a CT volume, for a structure of one kind of tissue (a vertebra, a muscle along the
        spine: :func:`~napari_ibis.grounding.ct_anatomy.tissue_of`), the first click's move onto
        that tissue near where the map put it (:func:`~napari_ibis.grounding.ct_anatomy.onto_tissue`);
        else None. Only the slice's units are read, not the volume's anatomy."""
        from ..grounding.ct_anatomy import onto_tissue, tissue_of

        if self.atlas is None or names_a_lesion(request.query):
            return None
        tissue = tissue_of(self.atlas.name_in(request.query) or "")
        units = None if tissue is None else self._slice_units(request.volume, probability.shape)
        if units is None:
            return None
        hu, pixel_mm = units
        return lambda row, col: onto_tissue(hu, probability, row, col, tissue, pixel_mm)

    def _same_tissue(self, request: PolicyRequest, shape: tuple[int, int]):
        """On a CT volume, :func:`one_tissue` on its slice's units, as a function of (spill, rest);
        None off a CT, for a lesion or for a muscle (``MUSCLE_NAME``)."""
        if names_a_lesion(request.query) or MUSCLE_NAME.search(in_atlas_words(request.query)):
            return None
        units = self._slice_units(request.volume, shape)
        if units is None:
            return None
        return lambda spill, rest: one_tissue(units[0], spill, rest)

    def _off_air(self, probability: np.ndarray, volume: VolumeSlice | None, query: str) -> np.ndarray:
        """On a CT volume, ``probability`` zeroed where its slice is air
        (:func:`~napari_ibis.grounding.ct_anatomy.solid_tissue`), for a structure that never holds
        air (the liver, not the lungs or the gut: :func:`~napari_ibis.grounding.ct_anatomy.holds_air`);
        else ``probability`` itself."""
        from ..grounding.ct_anatomy import holds_air, solid_tissue

        if holds_air(in_atlas_words(query)):
            return probability
        units = self._slice_units(volume, probability.shape)
        return probability if units is None else probability * solid_tissue(*units)

    def _slice_units(self, volume: VolumeSlice | None, shape: tuple[int, int]) -> tuple[np.ndarray, float] | None:
        """The Hounsfield units of ``volume``'s slice on a grid of ``shape`` and that grid's pixel
        in mm, or None: no volume, not a CT, or the units not read (:attr:`read_ct_units`). A turn
        asks for them up to three times (the air, the first click's tissue, a spill's): the last
        slice's are kept."""
        if volume is None or not self.read_ct_units:
            return None
        key = (volume.view, volume.index, tuple(shape))
        if self._units is None or self._units[0] is not volume.volume or self._units[1] != key:
            self._units = (volume.volume, key, _read_slice_units(volume, tuple(shape)))
        return self._units[2]

    def _decide_ct(self, request: PolicyRequest, first_turn: bool, read: CtRead) -> Response:
        """A turn where the CT's Hounsfield units decide (:meth:`ct_reading`): "not present" where
        the region is empty, else the region is where the structure lies and what the mask is
        judged by."""
        if not read.region.any():
            return Response(thought=read.why, terminate=True, not_present=True,
                            answer="The requested structure is not present in this image.")
        cell = max(2.0, min(read.region.shape) / 100)  # the region is exact to a pixel; the mask's edge may differ a little
        response = decide(read.region.astype(np.float32), request, 0.5, cell, None if first_turn else read.region,
                          one_target=True, measured=False)
        if first_turn and not request.clicks:
            response = dataclasses.replace(response, thought=f"{read.why} {response.thought}")
        return response

    # -- a brain volume ----------------------------------------------------------------
    def brain_region(self, image: np.ndarray, query: str, volume: VolumeSlice | None, cancel=None):
        """(the region ``query`` names on ``image`` by the folder's brain atlas registered onto
        ``volume`` in 3-D, bool on ``image``'s grid and empty where the region misses the slice;
        the fit), or None where that does not apply: no volume, no brain atlas, a query that
        names none of its regions (or a lesion), an axial slice asked before the fit whose kind of
        scan never holds the region (:meth:`~napari_ibis.grounding.atlas.SliceAtlas.kind_elsewhere`,
        learnt on axial slices: in another view a coronal brain slice could read as a trunk, and
        the fit's own match tells a head), or a fit that matched poorly (a volume that is no
        head). The fit is made once per volume (a few seconds; ``cancel``, or the turn's own,
        stops it); the slices after it need no encoder pass here."""
        if volume is None or self.brain is None or self.atlas is None or names_a_lesion(query):
            return None
        name = self.atlas.name_in(query)
        if not self.brain.holds(name):
            return None
        if volume.view == "axial" and not self._fitted(volume):
            # the kind of scan (learnt on axial slices), read before the first fit: a trunk is not worth its seconds
            self.probability_map(image, query)
            if self._kinds.get(query):
                return None
        fit = self._registered(volume, cancel or getattr(self._turn, "cancel", None))
        if not fit.trusted:
            return None
        return _on_grid(fit.region(name, volume.view, volume.index), image.shape[:2]), fit

    def region_through(self, image: np.ndarray, query: str, volume: VolumeSlice | None) -> RegionThrough | None:
        """Where the brain atlas registered onto ``volume`` applies to ``query`` on its slice
        ``image`` (:meth:`brain_region`; a region named without its side: the member it takes),
        the region through every slice of the volume, to carry a finished slice's result
        through the volume without a segmenter; else None."""
        if volume is None:
            return None
        asked, _ = self.member_asked(image, query, volume)
        pair = self.pair_asked(asked)
        if pair is not None:  # both members, each where it is through the volume
            parts = [self.region_through(image, f"segment the {member}", volume) for member in pair]
            return None if any(part is None for part in parts) else RegionsThrough(parts)
        registered = self.brain_region(image, asked, volume)
        if registered is None:
            read = self.ct_reading(image, asked, volume)
            if read is None or read.through is None:
                return None
            return CtThrough(self.ct_anatomy(volume), read.through, volume.view, volume.volume)
        return RegionThrough(self.atlas.name_in(asked), registered[1], volume.view)

    def will_fit(self, query: str, volume: VolumeSlice | None) -> bool:
        """Whether the first turn on ``volume`` for ``query`` will fit the brain atlas onto it (a
        few seconds the widget says it is spending): the query names one of its regions, or a
        kind of them ("the thalamus"), and this volume has no fit yet."""
        if volume is None or self.brain is None or self.atlas is None or self._fitted(volume):
            return False
        query = in_atlas_words(query)
        found = self.atlas.members_in(query)
        names = found[1] if found else [self.atlas.name_in(query)]
        return any(self.brain.holds(name) for name in names)

    def will_read_ct(self, query: str, volume: VolumeSlice | None) -> bool:
        """Whether the first turn on ``volume`` for ``query`` will read the CT's Hounsfield units
        (:meth:`ct_anatomy`; about 1 s per 50 slices, the heart as much again when first asked,
        the spinal canal about 1.5 s per 100 slices, the aorta 0.5 s more), which the widget says it
        is spending: the query names a structure they give or rule out, the volume holds Hounsfield
        units and they were not read for it (or, for the heart, the spinal cord, the autochthon or
        the aorta beside it, not that structure)."""
        from ..grounding.ct_anatomy import looks_like_ct

        question = self._ct_question(query, volume)
        if question is None:
            return False
        asked = question[0]
        if self._ct_read is None or self._ct_read[0] != self._volume_key(volume):
            return looks_like_ct(volume.volume)
        anatomy = self._ct_read[1]
        if anatomy is None or asked is None:
            return False
        return (asked.structure == "heart" and not anatomy.heart_read) or \
            (asked.structure in ("spinal cord", "autochthon") and not anatomy.canal_read) or \
            (asked.structure == "aorta" and not anatomy.aorta_read)

    @staticmethod
    def _volume_key(volume: VolumeSlice) -> tuple:
        """What tells one volume from another: its shape, spacing and a grid of its values, so that
        the same scan read twice (an evaluation's cases cut from one file) is fitted and read once."""
        import hashlib

        data = volume.volume
        shape = tuple(np.shape(data))
        grid = tuple(slice(None, None, max(1, n // 24)) for n in shape)
        sample = np.ascontiguousarray(np.asarray(data[grid]))
        return shape, volume.spacing, str(sample.dtype), hashlib.blake2b(sample.tobytes(), digest_size=16).hexdigest()

    def _fitted(self, volume: VolumeSlice) -> bool:
        return self._brain_fit is not None and self._brain_fit[0] == self._volume_key(volume)

    def _registered(self, volume: VolumeSlice, cancel=None):
        key = self._volume_key(volume)
        if not self._fitted(volume):
            self._brain_fit = (key, self.brain.register(np.asarray(volume.volume), volume.spacing, cancel))
        return self._brain_fit[1]

    def _decide_registered(self, request: PolicyRequest, first_turn: bool, region: np.ndarray, fit) -> Response:
        """A turn on a slice of a brain volume the brain atlas fitted: the region it puts there
        is where the structure lies; the map still judges the mask, lifted to certainty inside
        the region (where the map alone sees no region on a real MRI, the fit does)."""
        name = self.atlas.name_in(request.query)
        if first_turn and not request.clicks and not region.any():
            span = _span(fit.region_volume(name), request.volume.view)
            where = (f"it lies on slices {span[0]}-{span[1]} of this view, not on slice {request.volume.index}"
                     if span else "it does not reach this volume's slices")
            return Response(
                thought=f"{_registered_words(fit)}: the {spoken(name)} is a region it draws, and {where}.",
                terminate=True, not_present=True, answer="The requested structure is not present in this image.")
        probability = np.maximum(self.probability_map(request.image, request.query), region.astype(np.float32))
        cell = self._framing.size / self._framing.grid / self._framing.scale
        return decide(probability, request, self.head.config.presence_threshold, cell, None if first_turn else region,
                      measured=False)


def _not_counted_caveat(response: Response, query: str, fresh: bool) -> Response:
    """``response`` saying, where ``query`` names a rib by its number or a vertebra by its level,
    that the number is not counted: ribs and vertebrae are numbered by counting from the first or
    the twelfth rib, or from the sacrum, which one slice does not show, and the agent's map places
    them where labelled scans have them (on the held-out CT series its first click landed on the
    named rib for none of 26 ribs, and it calls every lumbar and lower thoracic level present on
    every slice with a vertebra: docs/BENCHMARKS.md)."""
    words = in_atlas_words(query)
    rib, level = NUMBERED_RIB.search(words), VERTEBRA_LEVEL.search(words)
    if rib is not None:
        kind, noun, what, counted_from = "rib", "number", f"rib {rib.group(1)}", "the first or the twelfth rib"
        here = "one of the ribs here"
    elif level is not None:
        kind, noun, what, counted_from = "vertebra", "level", (level.group(1) or level.group(2)).upper(), \
            "the sacrum or from the first rib"
        here = "the vertebra here"
    else:
        return response
    if fresh:
        response = dataclasses.replace(response, thought=(
            f"A {kind}'s {noun} is counted from {counted_from}, which one slice does not show; I look where labelled "
            f"scans have {what}, so the {noun} is not counted. {response.thought}"))
    if response.terminate and response.answer:
        check = f"{what} may be {here}" if response.not_present else f"check that this is {what}"
        response = dataclasses.replace(response, answer=(
            f"{response.answer} The {kind}'s {noun} is not counted on one slice: {check}."))
    return response


def _read_slice_units(volume: VolumeSlice, shape: tuple[int, int]) -> tuple[np.ndarray, float] | None:
    """:meth:`PointerPolicy._slice_units`, read: None where ``volume`` is no CT."""
    from ..geometry import VIEWS, oriented
    from ..grounding.ct_anatomy import looks_like_ct

    if not looks_like_ct(volume.volume):
        return None
    hu = np.asarray(oriented(volume.volume, VIEWS[volume.view])[volume.index], dtype=np.float32)
    cut_width = hu.shape[1]
    if hu.shape != shape:
        from skimage.transform import resize

        hu = resize(hu, shape, order=1, preserve_range=True, anti_aliasing=False)
    columns_mm = volume.spacing[1] if volume.view == "sagittal" else volume.spacing[2]
    return hu, float(columns_mm) * cut_width / shape[1]


@dataclass
class RegionThrough:
    """A region of the brain atlas registered onto a volume, slice by slice in one view."""

    name: str
    fit: object  # a napari_ibis.grounding.brain_atlas.RegisteredBrain
    view: str

    def __call__(self, index: int) -> np.ndarray:
        """The region on slice ``index`` (bool, the slice's own grid; empty where it is not)."""
        return self.fit.region(self.name, self.view, index)

    def describe(self) -> str:
        return (f"the {spoken(self.name)} where an atlas brain (Colin27, AAL) registered onto this volume in 3-D puts it "
                f"(mutual information {self.fit.match:.2f})")


@dataclass
class RegionsThrough:
    """Both members of a pair through a volume (each a :class:`RegionThrough` or :class:`CtThrough`), united."""

    parts: list

    def __call__(self, index: int) -> np.ndarray:
        return np.logical_or.reduce([part(index) for part in self.parts])

    def describe(self) -> str:
        if all(isinstance(part, RegionThrough) for part in self.parts):
            names = " and the ".join(spoken(part.name) for part in self.parts)
            return (f"the {names} where an atlas brain (Colin27, AAL) registered onto this volume in 3-D puts them "
                    f"(mutual information {self.parts[0].fit.match:.2f})")
        return "; ".join(part.describe() for part in self.parts)


@dataclass
class CtRead:
    """What a CT's Hounsfield units decide for a query on one slice (:meth:`PointerPolicy.ct_reading`):
    the structure's region on the slice as the agent sees it (empty: not there), what it rests on,
    the agent's words and the structure read."""

    region: np.ndarray
    basis: str
    why: str
    asked: CtAsked | None = None

    @property
    def through(self) -> CtAsked | None:
        """The structure read where the units follow it through the volume (lungs, heart, trachea,
        spinal cord, autochthon), else None: a lobe (which one, the units cannot tell), the aorta
        (it runs on into the chest, where it is not read: the segmenter carries it), the costal
        cartilages (whether they are on a slice, the units cannot tell)."""
        if self.asked is None or self.asked.lobe or self.asked.structure in ("aorta", "costal cartilages"):
            return None
        return self.asked


_PLURAL = {"lung", "costal cartilages"}  # the structures read that the agent names in the plural ("the lungs")
_CT_BASIS = {"lung": "the air-filled lung in this CT's Hounsfield units",
             "heart": "the soft tissue between the lungs in this CT's Hounsfield units",
             "trachea": "the airway joining the lungs in this CT's Hounsfield units",
             "spinal cord": "the soft tissue inside the vertebrae's bony ring in this CT's Hounsfield units",
             "autochthon": "the muscle behind the spine, beside the spinal canal, in this CT's Hounsfield units",
             "aorta": "the contrast-filled vessel in front of the spine in this CT's Hounsfield units",
             "costal cartilages": "what is brighter than soft tissue, and darker than bone, in the front of the "
                                  "body wall in this CT's Hounsfield units"}
_PLACED_EDGES = {"spinal cord": "the bony ring's", "autochthon": "the fat's and the bone's around it",
                 "aorta": "the contrast's", "costal cartilages": "the muscle's and the fat's around them"}
_CT_WHAT = {"lung": "the air inside the body below -400 HU (gas in the gut, purer air, left out)",
            "heart": "the soft tissue between the two lungs in front of the spine (fat left out), on the slices where "
                     "it is heart-sized",
            "trachea": "the pure-air tube in the middle of the neck and chest that joins the lungs, down to where it "
                       "divides",
            "spinal cord": "the soft tissue inside the vertebrae's bony ring (the cord and the fluid around it), "
                           "followed from the slices where the ring is closed",
            "autochthon": "the muscle (-20 to 120 HU) behind the spine and beside the spinal canal, parted from the "
                          "thin muscles over it",
            "aorta": "the round vessel of contrast-filled blood (above 120 HU) in front of the spine, to its left, "
                     "below the chest, followed over the slices in a row where it is found",
            "costal cartilages": f"what lies in the front of the body wall, not at its sides, within {CARTILAGE_DEPTH_MM:.0f} mm of the "
                                 f"skin, {CARTILAGE_ABOVE_HU:.0f} HU or more above the slice's soft tissue and below "
                                 f"bone's {CARTILAGE_TOP_HU:.0f} HU"}


def _ct_words(anatomy, asked: CtAsked, volume: VolumeSlice, region: np.ndarray) -> str:
    """What the agent says it read from the units for ``asked`` on this slice."""
    structure = "lungs" if asked.structure == "lung" else " ".join(filter(None, (asked.side, asked.structure)))
    where = f"on the patient's {asked.side} of this slice" if asked.side else "on this slice"
    plural = asked.structure in _PLURAL
    said = f"On this CT the {structure} {'are' if plural else 'is'} {_CT_WHAT[asked.structure]}: "
    if region.any():
        return said + f"{'they cover' if plural else 'it covers'} {int(region.sum()):,} px {where}."
    if asked.structure == "lung" or volume.view != "axial":
        return said + f"there is none {where}."
    span = anatomy.span(asked, volume.volume)
    return said + (f"it lies on axial slices {span[0]}-{span[1]}, not on slice {volume.index}." if span
                   else "it is on none of this volume's slices.")


@dataclass
class CtThrough:
    """A structure read from a CT's Hounsfield units (lungs, heart, trachea, spinal cord, autochthon), slice by
    slice in one view."""

    anatomy: object  # a napari_ibis.grounding.ct_anatomy.CtAnatomy
    asked: CtAsked
    view: str
    volume: object  # the Hounsfield units it was read from (the heart is read from them)

    def __call__(self, index: int) -> np.ndarray:
        """The structure on slice ``index`` (bool, the slice's own grid; empty where there is none)."""
        cut = self.anatomy.region(self.asked, self.view, index, self.volume)
        return np.zeros_like(self.anatomy.lung(None, self.view, index)) if cut is None else cut

    def describe(self) -> str:
        if self.asked.structure == "lung":
            which = "lungs" if self.asked.side is None else f"{self.asked.side} lung"
            return f"the {which} as the air inside the body below -400 HU on each slice of this CT (gas in the gut left out)"
        name = " ".join(filter(None, (self.asked.side, self.asked.structure)))  # "the right autochthon"
        return f"the {name} as {_CT_WHAT[self.asked.structure]}, on each slice of this CT"


def _on_grid(cut: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``cut`` (bool, a slice's own grid) on ``shape``, the slice as the agent sees it (square pixels)."""
    if cut.shape == tuple(shape):
        return cut
    from skimage.transform import resize

    return resize(cut.astype(np.float32), shape, order=1, anti_aliasing=False) >= 0.5


def _registered_words(fit) -> str:
    variant = "its whole head" if fit.variant == "head" else "its brain alone"
    return (f"I registered an atlas brain (Colin27 with the AAL regions, {variant}) onto this whole volume in 3-D "
            f"(mutual information {fit.match:.2f})")


def _span(region_volume: np.ndarray, view: str) -> tuple[int, int] | None:
    """The first and last slice, in ``view``, that hold any of a 3-D region."""
    from ..geometry import VIEWS, oriented

    held = np.nonzero(np.asarray(oriented(region_volume, VIEWS[view])).any(axis=(1, 2)))[0]
    return (int(held[0]), int(held[-1])) if held.size else None
