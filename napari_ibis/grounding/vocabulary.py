"""The structures a pointer agent was taught, and whether a query names one of them.

The pointer agent's head maps any sentence to a place on the slice, so asked for
"the banana" or "the appendix" (never in its training data) it used to click with 60-85%
confidence and answer "segmentation complete". A model folder therefore lists the names
it was trained on (``structures`` in its ``config.json``, written by ``napari-ibis
pointer``), and a query is checked against them: it may name one by its name ("the left
kidney"), by a name a radiologist uses for it (:data:`~napari_ibis.grounding.names.ALIASES`:
"the IVC"), or by its kind without side, lobe or level ("the kidney", "the vertebrae"). A
query naming a lesion ("the lung tumour") must name a lesion the agent was taught: the organ
alone is not enough. What happens otherwise: :class:`Untaught`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

LESION_WORDS = ("tumour", "tumor", "lesion", "cyst", "nodule", "mass", "metasta", "cancer", "carcinoma", "polyp",
                "infarct", "mitotic")
IRREGULAR_PLURALS = {"vertebra": "vertebrae", "nucleus": "nuclei", "hippocampus": "hippocampi", "thalamus": "thalami",
                     "putamen": "putamina", "amygdala": "amygdalae"}
SUGGESTIONS = 3  # closest known names offered
STEM = 5  # letters of a word compared when no known name is spelled alike
CLOSE_SPELLING = 0.75  # difflib's ratio from which a known name counts as a likely misspelling
MISSPELT = 0.85  # difflib's ratio from which the one known name spelled so alike is taken as the one meant


def names_a_lesion(query: str) -> bool:
    """Whether ``query`` asks for a lesion ("the liver tumour"), not the organ it names."""
    lowered = query.lower()
    return any(word in lowered for word in LESION_WORDS)


def _spelled(query: str) -> str:
    """``query`` lower-cased, in the atlas's words, with US spellings made British ("tumor")."""
    from .names import in_atlas_words

    return re.sub(r"\btumor", "tumour", in_atlas_words(query).lower())


def _term_pattern(term: str) -> str:
    """A regular expression for ``term`` and its plural ("kidneys", "vertebrae", "nuclei")."""
    *head, last = term.split()
    forms = [re.escape(last) + "(?:s|es)?"] + ([re.escape(IRREGULAR_PLURALS[last])] if last in IRREGULAR_PLURALS else [])
    return r"\s+".join([*map(re.escape, head), "(?:" + "|".join(forms) + ")"])


def _unsided(name: str) -> str:
    """A name without its side, lower-cased ("Left Kidney" -> "kidney")."""
    return re.sub(r"^(left|right)\s+", "", name.lower())


def _kind_word(term: str) -> str:
    """A term's kind, for telling two structures from one named twice ("kidneys", "left kidney": kidney)."""
    return re.sub(r"(s|es)$", "", _unsided(term))


def _stems(text: str) -> set[str]:
    """The first five letters of each word of five or more, but the sides ("pancreatic" -> "pancr")."""
    return {word[:STEM] for word in re.findall(r"[a-z]+", text.lower()) if len(word) >= STEM} - {"right"}


class Vocabulary:
    """The structure names a model folder was taught (``structures``), and their kinds."""

    def __init__(self, names) -> None:
        from .names import structure_kinds

        self.names = sorted({str(n) for n in names})
        self.kinds = structure_kinds(self.names)
        terms = {n.lower() for n in self.names} | set(self.kinds)
        alternatives = "|".join(_term_pattern(t) for t in sorted(terms, key=len, reverse=True))
        self._pattern = re.compile(rf"\b({alternatives})\b") if terms else None

    def __len__(self) -> int:
        return len(self.names)

    def suggestions(self) -> list[str]:
        """What a query box may offer: every name, and an AAL region also by its full name ("left
        inferior frontal gyrus, opercular part" beside "left frontal inf oper")."""
        from .names import AAL_FULL_NAMES

        full = [f"{side} {AAL_FULL_NAMES[region]}" for side, _, region in (n.partition(" ") for n in self.names)
                if side in ("left", "right") and region in AAL_FULL_NAMES]
        return [*self.names, *full]

    def paired(self) -> list[str]:
        """The names for a person to read: a left and a right one as one entry ("left/right
        kidney"), case-insensitive order."""
        sides: dict[str, set[str]] = {}
        for name in self.names:
            side, _, rest = name.partition(" ")
            if side in ("left", "right"):
                sides.setdefault(rest, set()).add(side)
        pairs = {rest for rest, found in sides.items() if len(found) == 2}
        out = {f"left/right {rest}" for rest in pairs}
        out |= {n for n in self.names if not (n.partition(" ")[0] in ("left", "right") and n.partition(" ")[2] in pairs)}
        return sorted(out, key=lambda n: n.removeprefix("left/right ").lower())

    def _closest(self, target: str) -> list[str]:
        """Known names or kinds a person may have meant by ``target``: spelled alike apart from the
        side ("the gallblader"), else sharing a word stem ("the pancreatic head": the pancreas);
        kinds first ("the vertebral column": the vertebra), a side kept where ``target`` has one."""
        side = re.match(r"(left|right)\s+", target)
        core = target[side.end():] if side else target
        kinds, names = sorted(self.kinds), [n for n in self.names if n.lower() not in self.kinds]
        choices = [*names, *kinds] if side else [*kinds, *names]

        def kind_of(name: str) -> str:  # "left kidney", "L1 vertebra", "left lung upper lobe": one entry each kind
            return re.sub(r" (upper|middle|lower) lobe$", "", re.sub(r"^[clts]\d+ ", "", _unsided(name)))

        def fits(name: str) -> bool:  # no "left kidney" for "the right kidny"
            return side is None or not re.match(r"(left|right)\s", name) or name.startswith(side.group(1))

        close = set(difflib.get_close_matches(core, sorted({_unsided(c) for c in choices}), n=SUGGESTIONS,
                                              cutoff=CLOSE_SPELLING))
        found = [c for c in choices if _unsided(c) in close and fits(c)]
        if not found:
            stems = _stems(core)
            found = [c for c in choices if stems & _stems(c) and fits(c)]
        seen = []
        for name in found:  # "kidney" and "left kidney" alike: the first of them
            if kind_of(name) not in {kind_of(s) for s in seen}:
                seen.append(name)
        return seen[:SUGGESTIONS]

    def misspelt(self, query: str) -> Misspelt | None:
        """Where ``query`` names nothing taught but one known name or kind is spelled almost like
        what it names (difflib's ratio at least ``MISSPELT``, no other as close, the same digits:
        "highlight the livr", "the left kidny", not "the L6 vertebra" for the L5), the query with
        that name put in; None otherwise, and for a lesion (refused or looked for as asked)."""
        if not self.names or self.named_in(query) or names_a_lesion(query):
            return None
        from ..inbox import target_of

        target = target_of(query)
        side = re.match(r"(left|right)\s+", target)
        core = target[side.end():] if side else target
        digits = re.findall(r"\d+", core)
        known = sorted({_unsided(n) for n in self.names} | set(self.kinds))
        scored = sorted(((difflib.SequenceMatcher(None, core, name).ratio(), name) for name in known
                         if re.findall(r"\d+", name) == digits), reverse=True)
        if not scored or scored[0][0] < MISSPELT or (len(scored) > 1 and scored[1][0] >= MISSPELT):
            return None
        meant = (side.group(0) if side else "") + scored[0][1]
        words = r"\s+".join(map(re.escape, target.split()))
        fixed, found = re.subn(rf"\b{words}\b", lambda _: meant, query, count=1, flags=re.IGNORECASE)
        fixed = fixed if found else f"segment the {meant}"
        return Misspelt(query, fixed, target, meant) if self.named_in(fixed) else None

    def several(self, query: str) -> Several | None:
        """Where ``query`` names more than one structure this vocabulary knows ("the liver and the
        spleen"), the query for the first of them alone ("segment the liver") and the others; None
        where it names one, or a left and a right one of a kind (one mask of the two: "the left
        kidney and the right kidney"), or one of them within the other's kind ("the kidney and
        the left kidney")."""
        spelled = {name.lower(): name for name in self.names}
        found = list(dict.fromkeys(spelled.get(term.lower(), term.lower()) for term in self.named_in(query)))
        if len({_kind_word(term) for term in found}) < 2:
            return None
        return Several(query, f"segment the {found[0]}", found[0], found[1:])

    def named_in(self, query: str) -> list[str]:
        """The known names and kinds ``query`` names, as they are spelled in the query."""
        return [] if self._pattern is None else self._pattern.findall(_spelled(query))

    def untaught(self, query: str) -> Untaught | None:
        """What to tell a person whose ``query`` names no structure of this vocabulary (see
        :class:`Untaught`); None where it names one, or where the vocabulary is empty (an older
        folder that does not list what it was taught)."""
        if not self.names:
            return None
        found = self.named_in(query)
        lesion = names_a_lesion(query)
        if lesion:  # "the lung tumour": the lung is known, a tumour in it is not
            found = [term for term in found if names_a_lesion(term)]
        if found:
            return None
        from ..inbox import target_of

        target = target_of(query)
        if lesion:  # no "did you mean": the liver tumour is not what a lung tumour was misspelt for
            lesions = [n for n in self.names if names_a_lesion(n)]
            known = f"the lesions it was taught are the {', the '.join(lesions)}" if lesions else "it was taught no lesion"
            return Untaught(target, refused=True, line=(
                f"this agent was not taught the {target} and has never found a lesion it was not taught ({known}): "
                "mark it yourself (propagation then carries your mask through a volume)"))
        closest = self._closest(target)
        hint = (f"did you mean the {' or the '.join(closest)}?" if closest
                else f"`napari-ibis structures` lists the {len(self.names)} it knows")
        from .ct_anatomy import ct_structure_asked

        on_ct = "on a CT volume it reads it from the Hounsfield units; elsewhere " if ct_structure_asked(query) else ""
        return Untaught(target, refused=False,
                        line=f"this agent was not taught the {target}: {on_ct}its answer is a guess from the words ({hint})")


@dataclass(frozen=True)
class Misspelt:
    """A query whose structure's name was misspelt, and the query with the known name put in."""

    query: str  # as typed
    fixed: str  # as the agent works on it
    written: str  # the name as typed ("livr")
    meant: str  # the known name taken for it ("liver")

    @property
    def line(self) -> str:
        """One line for a person."""
        return f"read '{self.written}' as the {self.meant} (a name this agent was taught)"


@dataclass(frozen=True)
class Several:
    """A query naming several structures, and the query for the first of them, which a run takes."""

    query: str  # as typed
    fixed: str  # "segment the FIRST"
    first: str
    others: list[str]

    @property
    def line(self) -> str:
        """One line for a person."""
        return (f"you asked for the {' and the '.join([self.first, *self.others])}: this agent segments one "
                f"structure a run, so it takes the {self.first}; ask for the {' and the '.join(self.others)} next")


@dataclass(frozen=True)
class Untaught:
    """A query naming nothing the agent was taught. ``refused``: a lesion, which it does not
    look for (asked for the real tumours of benchmarks/agents_real.py, none of them taught, its
    first click landed inside none of 27; the map lands on the organ or the spine). Otherwise it
    looks, and says that its answer is a guess: the words alone sometimes carry it (the humerus,
    never taught, IoU 0.83-0.86 on 4 held-out slices; the sixth ribs 0 of 3). ``line``: one
    line for a person."""

    target: str
    refused: bool
    line: str
