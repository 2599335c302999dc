"""What structures are called: the names a person types for the atlas's structures.

Text only (no model, no torch), so that a query can be read before anything heavy loads
(:mod:`napari_ibis.grounding.vocabulary`, the CLI's early checks, the widget's query box):

- :data:`ALIASES`: what a radiologist may call a structure ("the IVC", "the bladder");
- :data:`AAL_FULL_NAMES` and the wording rules behind :func:`in_atlas_words`: an AAL brain
  region by its full name ("the left inferior frontal gyrus, opercular part");
- :func:`structure_kinds`: a kind of structure asked for without its side, lobe or level
  ("the kidney");
- :func:`spoken`: an atlas name as a person says it.
"""

from __future__ import annotations

import re


# what a radiologist may call a structure -> the atlas's name for it (or for its kind)
ALIASES = {
    "bladder": "urinary bladder", "gall bladder": "gallbladder", "ivc": "inferior vena cava",
    "vena cava": "inferior vena cava", "portal vein": "portal vein and splenic vein",
    "splenic vein": "portal vein and splenic vein", "small intestine": "small bowel",
    "large intestine": "colon", "large bowel": "colon", "sma": "superior mesenteric artery",
    "pulmonary trunk": "pulmonary artery", "psoas": "iliopsoas", "psoas muscle": "iliopsoas",
    "erector spinae": "autochthon", "paraspinal muscle": "autochthon", "back muscle": "autochthon",
    "adrenal": "adrenal gland", "suprarenal gland": "adrenal gland", "spine": "vertebra",
}
# the AAL regions' full names (Tzourio-Mazoyer et al. 2002, as a neurologist says them) for the
# atlas's abbreviations; the cerebellum's and the vermis's lobules keep their numbered names
AAL_FULL_NAMES = {
    "precentral": "precentral gyrus", "frontal sup": "superior frontal gyrus, dorsolateral",
    "frontal sup orb": "superior frontal gyrus, orbital part", "frontal mid": "middle frontal gyrus",
    "frontal mid orb": "middle frontal gyrus, orbital part", "frontal inf oper": "inferior frontal gyrus, opercular part",
    "frontal inf tri": "inferior frontal gyrus, triangular part",
    "frontal inf orb": "inferior frontal gyrus, orbital part", "rolandic oper": "rolandic operculum",
    "supp motor area": "supplementary motor area", "olfactory": "olfactory cortex",
    "frontal sup medial": "superior frontal gyrus, medial", "frontal med orb": "superior frontal gyrus, medial orbital",
    "rectus": "gyrus rectus", "cingulum ant": "anterior cingulate and paracingulate gyri",
    "cingulum mid": "median cingulate and paracingulate gyri", "cingulum post": "posterior cingulate gyrus",
    "para hippocampal": "parahippocampal gyrus", "calcarine": "calcarine fissure and surrounding cortex",
    "lingual": "lingual gyrus", "occipital sup": "superior occipital gyrus", "occipital mid": "middle occipital gyrus",
    "occipital inf": "inferior occipital gyrus", "fusiform": "fusiform gyrus", "postcentral": "postcentral gyrus",
    "parietal sup": "superior parietal gyrus", "parietal inf": "inferior parietal lobule",
    "supra marginal": "supramarginal gyrus", "angular": "angular gyrus", "caudate": "caudate nucleus",
    "pallidum": "globus pallidus", "heschl": "Heschl's gyrus", "temporal sup": "superior temporal gyrus",
    "temporal pole sup": "temporal pole: superior temporal gyrus", "temporal mid": "middle temporal gyrus",
    "temporal pole mid": "temporal pole: middle temporal gyrus", "temporal inf": "inferior temporal gyrus",
}
def spoken(name: str) -> str:
    """An atlas name as a person says it: an AAL region by its full name ("left temporal sup" ->
    "left superior temporal gyrus"), any other name as it is."""
    side, _, region = name.partition(" ")
    if side in ("left", "right") and region in AAL_FULL_NAMES:
        return f"{side} {AAL_FULL_NAMES[region]}"
    return AAL_FULL_NAMES.get(name, name)


_ALIAS_PATTERN = re.compile(r"\b(" + "|".join(map(re.escape, sorted(ALIASES, key=len, reverse=True))) + r")s?\b",
                            re.IGNORECASE)


_POSITIONS = {"superior": "sup", "middle": "mid", "median": "mid", "inferior": "inf", "anterior": "ant",
              "posterior": "post", "opercular": "oper", "opercularis": "oper", "triangular": "tri",
              "triangularis": "tri", "orbital": "orb", "orbitalis": "orb"}
_FILLER = r"(?: (?:gyrus|gyri|lobule|cortex|sulcus|fissure))?"
# a full AAL name in the atlas's words, in this order (each rule sees what the ones before left)
_AAL_WORDING = tuple((re.compile(pattern, re.IGNORECASE), replace) for pattern, replace in (
    (rf"\b(superior|middle|inferior) (frontal|occipital|temporal|parietal){_FILLER}\b",
     lambda m: f"{m[2].lower()} {_POSITIONS[m[1].lower()]}"),
    (r"\btemporal pole:? temporal (sup|mid)\b|\btemporal (sup|mid) pole\b", lambda m: f"temporal pole {m[1] or m[2]}"),
    (r"\bfrontal sup,? medial orbit(?:al|ofrontal)(?: part)?\b|\bmedial orbitofrontal" + _FILLER + r"\b", "frontal med orb"),
    (r"\bfrontal sup,? medial\b", "frontal sup medial"),
    (r"\b(frontal (?:sup|mid|inf)),? (?:(opercular|triangular|orbital) part|pars (opercularis|triangularis|orbitalis))\b",
     lambda m: f"{m[1].lower()} {_POSITIONS[(m[2] or m[3]).lower()]}"),
    (r"\b(anterior|middle|median|posterior) cingulate(?: and paracingulate)?" + _FILLER + r"\b",
     lambda m: f"cingulum {_POSITIONS[m[1].lower()]}"),
    (r"\bsupplementary motor (?:area|cortex)\b", "supp motor area"),
    (r"\bparahippocampal" + _FILLER + r"\b", "para hippocampal"),
    (r"\bsupramarginal" + _FILLER + r"\b", "supra marginal"),
    (r"\brolandic operculum\b", "rolandic oper"),
    (r"\b(?:gyrus rectus|straight gyrus|rectal gyrus)\b", "rectus"),
    (r"\b(?:transverse temporal|heschl'?s?)" + _FILLER + r"\b", "heschl"),
    (r"\bcaudate nucleus\b", "caudate"), (r"\bglobus pallidus\b", "pallidum"), (r"\binsular cortex\b", "insula"),
    (r"\b(precentral|postcentral|angular|lingual|fusiform|calcarine|olfactory)" + _FILLER + r"\b",
     lambda m: m[1].lower()),
))


def in_atlas_words(query: str) -> str:
    """``query`` with the names a radiologist may use ("the IVC", "the bladder") and the full names
    of the AAL regions ("the left inferior frontal gyrus, opercular part": :data:`AAL_FULL_NAMES`)
    in the atlas's words ("the left frontal inf oper")."""
    for pattern, replace in _AAL_WORDING:
        query = pattern.sub(replace, query)

    def canonical(found: re.Match) -> str:  # "inferior vena cava" stays, "vena cava" becomes it
        name = ALIASES[found.group(1).lower()]
        spans = [(m.start(), m.end()) for m in re.finditer(re.escape(name), query.lower())]
        named_already = any(start <= found.start() and found.end() <= end for start, end in spans)
        return found.group(0) if named_already else name

    return _ALIAS_PATTERN.sub(canonical, query)


def structure_kinds(names) -> dict[str, list[str]]:
    """Kinds of structure among ``names`` that a person may ask for without the side, the lobe
    or the level: "kidney" for the left and the right kidney, "lung" and "left lung" for the
    lobes, "vertebra" for L1 to T12; only kinds with two or more members and no name of their own."""
    kinds: dict[str, list[str]] = {}
    for name in names:
        lobe = re.sub(r" (upper|middle|lower) lobe$", "", name)
        keys = {re.sub(r"^(left|right) ", "", name), lobe, re.sub(r"^(left|right) ", "", lobe),
                re.sub(r"^[CTLS]\d+ ", "", name)}
        for key in keys - {name}:
            kinds.setdefault(key.lower(), []).append(name)
    known = {n.lower() for n in names}
    return {key: members for key, members in kinds.items() if len(members) > 1 and key not in known}
