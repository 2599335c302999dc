"""The pointer agent (v8): its decisions from a probability map, its model folder, a whole run."""

import numpy as np
import pytest
from conftest import disk_image

from napari_ibis.policies.base import PolicyRequest
from napari_ibis.policies.pointer import decide, one_tissue
from napari_ibis.protocol import get_profile
from napari_ibis.segmenters.base import Click

PROFILE = get_profile("ibis-release")


def needs_assets(*names):
    from napari_ibis import assets

    missing = [n for n in names if not assets.available(n)]
    return pytest.mark.skipif(bool(missing), reason=f"{missing} not fetched: python -m napari_ibis.assets fetch")


def blob(shape, centre, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def request(mask=None, clicks=(), step=1):
    return PolicyRequest(profile=PROFILE, query="segment the left kidney", image=np.zeros((100, 120, 3), np.uint8),
                         mask=mask, clicks=tuple(clicks), step=step)


def landing(response):
    """(row, col, positive) where the response's one click lands on a 100 x 120 slice."""
    action = response.actions[0]
    return int(action.y * 100), int(action.x * 120), action.positive


def test_first_click_goes_inside_the_most_likely_region_and_says_where():
    probability = np.where(blob((100, 120), (30, 90), 12), 0.9, 0.02)
    response = decide(probability, request(), threshold=0.5, cell=8)
    row, col, positive = landing(response)
    assert positive and blob((100, 120), (30, 90), 12)[row, col]
    assert "upper right" in response.thought and not response.terminate


def test_nothing_likely_enough_is_answered_not_present():
    probability = np.full((100, 120), 0.2)
    response = decide(probability, request(), threshold=0.5, cell=8)
    assert response.not_present and response.terminate and not response.actions


def test_several_candidates_one_is_segmented_and_the_answer_says_how_many():
    probability = np.full((100, 120), 0.02)
    probability[blob((100, 120), (30, 30), 8)] = 0.7
    probability[blob((100, 120), (70, 90), 8)] = 0.9
    first = decide(probability, request(), threshold=0.5, cell=4)
    row, col, _ = landing(first)
    assert blob((100, 120), (70, 90), 8)[row, col] and "2 candidates" in first.thought
    done = decide(probability, request(mask=blob((100, 120), (70, 90), 8), clicks=[Click(row, col, True)]), 0.5, 4)
    assert done.terminate and "1 other candidate" in done.answer


def test_a_mask_spilling_far_outside_gets_a_negative_click_there():
    target = blob((100, 120), (50, 40), 10)
    probability = np.where(target, 0.9, 0.02)
    spilled = target | blob((100, 120), (50, 95), 14)
    response = decide(probability, request(mask=spilled, clicks=[Click(50, 40, True)]), 0.5, 4)
    row, col, positive = landing(response)
    assert not positive and blob((100, 120), (50, 95), 14)[row, col]


def test_on_a_ct_a_spill_with_the_units_of_the_rest_of_the_mask_is_kept():
    target = blob((100, 120), (50, 40), 10)
    probability = np.where(target, 0.9, 0.02)
    spilled = target | blob((100, 120), (50, 62), 16)  # the organ goes on past where the map puts it
    rng = np.random.default_rng(0)
    organ = 70 + rng.normal(0, 8, (100, 120))
    kept = decide(probability, request(mask=spilled, clicks=[Click(50, 40, True)]), 0.5, 4,
                  same_tissue=lambda spill, rest: one_tissue(organ, spill, rest))
    assert kept.terminate and not kept.actions and "units of what it keeps" in kept.thought and "so I keep it" in kept.thought
    fat_beside = np.where(blob((100, 120), (50, 62), 16) & ~target, -90.0, organ)  # a neighbour of other units
    cut = decide(probability, request(mask=spilled, clicks=[Click(50, 40, True)]), 0.5, 4,
                 same_tissue=lambda spill, rest: one_tissue(fat_beside, spill, rest))
    assert not landing(cut)[2]
    mixed = np.where(rng.random((100, 120)) < 0.5, 0.0, 120.0)  # one median, but two tissues
    assert one_tissue(mixed, blob((100, 120), (50, 62), 16) & ~target, target) is None


def test_a_muscles_or_a_lesions_spill_is_cut_even_where_its_units_match():
    from types import SimpleNamespace

    from napari_ibis.policies.pointer import PointerPolicy

    agent = SimpleNamespace(_slice_units=lambda volume, shape: (np.full(shape, 70.0), 1.0))
    asked = lambda query: PolicyRequest(profile=PROFILE, query=query, image=np.zeros((100, 120, 3), np.uint8),  # noqa: E731
                                        mask=None, clicks=(), step=2)
    assert PointerPolicy._same_tissue(agent, asked("segment the spleen"), (100, 120)) is not None
    for query in ("segment the left gluteus medius", "segment the psoas", "segment the liver tumour"):
        assert PointerPolicy._same_tissue(agent, asked(query), (100, 120)) is None


def test_on_a_ct_a_solid_structure_is_not_looked_for_in_air():
    """A map whose peak lies in a lung gives no click there for the liver on a CT: the click goes to
    the soft tissue the map favours next; the lungs, the gut and anything off a CT keep their map."""
    from types import SimpleNamespace

    from napari_ibis.grounding.ct_anatomy import holds_air
    from napari_ibis.policies.pointer import PointerPolicy

    rows, cols = np.mgrid[:100, :120]
    hu = np.full((100, 120), 50.0)
    lung = blob((100, 120), (40, 40), 18)
    hu[lung] = -850
    agent = SimpleNamespace(_slice_units=lambda volume, shape: (hu, 1.0))
    probability = 0.9 * blob((100, 120), (40, 40), 12) + 0.5 * blob((100, 120), (70, 90), 8)
    gated = PointerPolicy._off_air(agent, probability, object(), "segment the liver")
    row, col, _ = landing(decide(gated, request(), 0.3, 4.0))
    assert not lung[row, col] and hu[row, col] == 50
    assert not decide(PointerPolicy._off_air(agent, 0.9 * blob((100, 120), (40, 40), 12), object(), "segment the liver"),
                      request(), 0.3, 4.0).actions  # only air was likely: not present
    rim = blob((100, 120), (40, 40), 20) & ~lung  # the soft tissue within 2 mm of the lung
    assert not decide(PointerPolicy._off_air(agent, 0.9 * rim, object(), "segment the liver"), request(), 0.3, 4.0).actions
    assert holds_air("right lung upper lobe") and holds_air("stomach") and not holds_air("spleen")
    for query in ("segment the right lung", "segment the stomach", "segment the colon"):
        assert PointerPolicy._off_air(agent, probability, object(), query) is probability
    off_ct = SimpleNamespace(_slice_units=lambda volume, shape: None)
    assert PointerPolicy._off_air(off_ct, probability, None, "segment the liver") is probability


def test_a_mask_missing_most_of_the_region_gets_a_positive_click_in_the_missed_part():
    target = np.zeros((100, 120), bool)
    target[20:80, 20:100] = True
    probability = np.where(target, 0.9, 0.02)
    partial = np.zeros_like(target)
    partial[20:80, 20:40] = True
    response = decide(probability, request(mask=partial, clicks=[Click(50, 30, True)]), 0.5, 4)
    row, col, positive = landing(response)
    assert positive and target[row, col] and not partial[row, col]


def test_a_mask_matching_the_region_ends_the_run():
    target = blob((100, 120), (50, 60), 20)
    response = decide(np.where(target, 0.9, 0.02), request(mask=target, clicks=[Click(50, 60, True)]), 0.5, 4)
    assert response.terminate and not response.not_present and response.answer


@needs_assets("mobile_sam", "minilm")
def test_a_pointer_folder_loads_as_a_model_and_runs_a_session(tmp_path, monkeypatch):
    from napari_ibis.grounding import head as head_module
    from napari_ibis.grounding.head import PointerHead, PointerHeadConfig
    from napari_ibis.policies import load_policy
    from napari_ibis.policies.pointer import PointerPolicy
    from napari_ibis.segmenters import build_segmenter
    from napari_ibis.session import Session

    boxes = []  # how the policy found the body: the way its head was trained to
    real = head_module.position_channels
    monkeypatch.setattr(head_module, "position_channels", lambda f, image, box="bright": boxes.append(box) or real(f, image, box))
    PointerHead(PointerHeadConfig(presence_threshold=0.0, body_box="largest_part")).save_pretrained(tmp_path / "v8")
    policy = load_policy(tmp_path / "v8")
    assert isinstance(policy, PointerPolicy)
    image, _ = disk_image(128, centre=(60, 70), radius=18)
    session = Session(image, "segment the bright disk", policy, build_segmenter("classical"), max_steps=3)
    events = list(session.run())
    assert session.steps, "the agent took no step"
    assert all(step.mask.shape == image.shape for step in session.steps)
    assert type(events[-1]).__name__ == "Stopped"
    assert boxes and set(boxes) == {"largest_part"}


def test_the_pointer_agent_locates_a_structure_on_a_slice_for_the_volume_search(tmp_path):
    """``locate`` reads the first turn's map: present where its peak reaches the presence
    threshold (then scored by the probability over the likeliest region), else absent."""
    from napari_ibis.grounding.head import PointerHead, PointerHeadConfig
    from napari_ibis.policies import load_policy

    image, _ = disk_image(128, centre=(60, 70), radius=18)
    rgb = np.repeat(image[..., None], 3, axis=2)
    for threshold, present in ((0.0, True), (1.01, False)):
        folder = tmp_path / f"v8-{threshold}"
        PointerHead(PointerHeadConfig(presence_threshold=threshold)).save_pretrained(folder)
        seen = load_policy(folder).locate(rgb, "segment the bright disk")
        assert seen.present is present and 0.0 <= seen.peak <= 1.0
        assert (seen.score > 0) is present


# -- what the agent was taught ------------------------------------------------------------
TAUGHT = ["left kidney", "right kidney", "liver", "liver tumour", "inferior vena cava", "L1 vertebra",
          "L2 vertebra", "gallbladder", "pancreas", "nucleus", "left frontal inf oper"]


@pytest.mark.parametrize("query", [
    "segment the left kidney", "Please segment the kidney in this CT image.", "segment the kidneys",
    "outline the IVC", "segment the vertebrae", "segment the nuclei", "segment the liver tumor",
    "where is the gall bladder?", "segment the left inferior frontal gyrus, opercular part"])
def test_a_query_naming_a_taught_structure_its_kind_alias_or_plural_is_taken(query):
    from napari_ibis.grounding.vocabulary import Vocabulary

    assert Vocabulary(TAUGHT).untaught(query) is None


@pytest.mark.parametrize("query, refused, said", [
    ("segment the banana", False, "lists the 11 it knows"),
    ("segment the gallblader", False, "did you mean the gallbladder?"),
    ("segment the pancreatic head", False, "did you mean the pancreas?"),
    ("segment the right kidny", False, "did you mean the right kidney?"),
    ("segment the lung tumour", True, "the lesions it was taught are the liver tumour"),  # the lung is known, not a tumour
    ("segment the brain tumour", True, "the lesions it was taught are the liver tumour")])
def test_a_query_naming_nothing_taught_gets_one_line_with_what_it_knows_and_a_lesion_is_refused(query, refused, said):
    from napari_ibis.grounding.vocabulary import Vocabulary

    untaught = Vocabulary(TAUGHT).untaught(query)
    assert untaught is not None and untaught.refused is refused
    assert "\n" not in untaught.line and untaught.line.startswith("this agent was not taught the ") and said in untaught.line
    assert ("is a guess" in untaught.line) is not refused


@pytest.mark.parametrize("names, query, fixed", [
    (TAUGHT, "segment the gallblader", "segment the gallbladder"),
    (TAUGHT, "Please segment the right kidny.", "Please segment the right kidney."),
    (TAUGHT, "where is the Inferior Vena Cva?", "where is the inferior vena cava?"),
    (TAUGHT, "segment the L3 vertebra", None),  # another level, not a misspelt L1 or L2
    (TAUGHT, "segment the pancreatic head", None),  # a word stem alike: a suggestion, not a reading
    (TAUGHT, "segment the banana", None),
    (TAUGHT, "segment the livr tumour", None),  # a lesion is never read as another
    (TAUGHT, "segment the liver", None),
    (["kidney", "kidnay"], "segment the kidny", None)])  # two names as close: which one is not guessed
def test_a_misspelt_name_is_read_as_the_one_taught_name_spelled_almost_alike(names, query, fixed):
    from napari_ibis.grounding.vocabulary import Vocabulary

    misspelt = Vocabulary(names).misspelt(query)
    assert (misspelt and misspelt.fixed) == fixed
    if fixed:
        assert Vocabulary(names).untaught(misspelt.fixed) is None and "\n" not in misspelt.line


@pytest.mark.parametrize("query, fixed, others", [
    ("segment the liver and the gallbladder in this CT", "segment the liver", ["gallbladder"]),
    ("segment the IVC and the pancreas", "segment the inferior vena cava", ["pancreas"]),
    ("segment the L1 vertebra and the L2 vertebra", "segment the L1 vertebra", ["L2 vertebra"]),
    ("segment the left kidney and the right kidney", None, None),  # one mask of the two (pair_asked)
    ("segment the kidney and the left kidney", None, None),  # one structure, named twice
    ("segment the kidneys", None, None),
    ("segment the liver tumour", None, None)])
def test_a_query_naming_several_structures_is_run_for_the_first_and_says_so(query, fixed, others):
    from napari_ibis.grounding.vocabulary import Vocabulary

    several = Vocabulary(TAUGHT).several(query)
    assert (several and several.fixed) == fixed
    if fixed:
        assert several.others == others and "this agent segments one structure a run" in several.line


def test_a_folder_that_lists_no_structures_takes_any_query():
    from napari_ibis.grounding.vocabulary import Vocabulary

    assert Vocabulary([]).untaught("segment the banana") is None


@needs_assets("mobile_sam", "minilm")
def test_an_untaught_structure_is_a_guess_it_says_so_and_an_untaught_lesion_is_refused(tmp_path):
    """Every route into the agent: a run on an untaught structure goes on, its first thought and
    its answer saying it guesses; an untaught lesion stops the run with the line (the mask stays
    empty) and the search through a volume alike."""
    from napari_ibis.errors import InputError
    from napari_ibis.grounding.head import PointerHead, PointerHeadConfig
    from napari_ibis.policies import check_query, load_policy
    from napari_ibis.segmenters import build_segmenter
    from napari_ibis.protocol import Response
    from napari_ibis.session import Session

    PointerHead(PointerHeadConfig(presence_threshold=0.0, structures=TAUGHT)).save_pretrained(tmp_path / "v8")
    # read from the config, before anything loads
    assert check_query(tmp_path / "v8", "segment the liver") is None
    assert "not taught the appendix: its answer is a guess" in check_query(tmp_path / "v8", "segment the appendix")
    with pytest.raises(InputError, match="not taught the lung tumour"):
        check_query(tmp_path / "v8", "segment the lung tumour")
    policy = load_policy(tmp_path / "v8")
    image, _ = disk_image(128, centre=(60, 70), radius=18)
    session = Session(image, "segment the appendix", policy, build_segmenter("classical"), max_steps=2)
    events = list(session.run())
    assert session.steps[0].thought.startswith("I was not taught the appendix; I look where its words lead me")
    assert events and session.steps  # it looked
    policy._decide = lambda request: Response(thought="It is covered.", terminate=True,
                                             answer="The segmentation is complete.")  # whatever it answers
    answer = policy.decide(PolicyRequest(profile=PROFILE, query="segment the appendix", image=image, mask=None,
                                         clicks=(), step=1)).answer
    assert answer == "The segmentation is complete. This is a guess: I was not taught the appendix."
    tumour = Session(image, "segment the lung tumour", policy, build_segmenter("classical"), max_steps=3)
    stop = list(tumour.run())[-1]
    assert stop.reason == "error" and stop.message.startswith("this agent was not taught the lung tumour")
    assert not tumour.steps and not tumour.mask.any()
    with pytest.raises(InputError, match="not taught"):
        policy.locate(np.repeat(image[..., None], 3, axis=2), "segment the lung tumour")
    liver = Session(image, "segment the liver", policy, build_segmenter("classical"), max_steps=2)
    list(liver.run())
    assert "not taught" not in liver.steps[0].thought


def test_a_query_box_is_offered_an_aal_region_by_its_full_name_too():
    from napari_ibis.grounding.vocabulary import Vocabulary

    offered = Vocabulary(TAUGHT).suggestions()
    assert "left frontal inf oper" in offered and "left inferior frontal gyrus, opercular part" in offered
    assert "left kidney" in offered and len(offered) == len(TAUGHT) + 1


@needs_assets("mobile_sam", "minilm")
def test_the_head_reads_a_radiologists_name_as_the_name_it_learnt(tmp_path, monkeypatch):
    """"The IVC" and "the left inferior frontal gyrus, opercular part" reach the map as "the inferior
    vena cava" and "the left frontal inf oper", the names it was trained on."""
    from napari_ibis.grounding.head import PointerHead, PointerHeadConfig
    from napari_ibis.policies import load_policy
    from napari_ibis.policies.pointer import PointerPolicy

    PointerHead(PointerHeadConfig(presence_threshold=0.0, structures=TAUGHT)).save_pretrained(tmp_path / "v8")
    policy = load_policy(tmp_path / "v8")
    asked = []
    real = PointerPolicy.probability_map
    monkeypatch.setattr(PointerPolicy, "probability_map", lambda self, image, query: asked.append(query) or real(self, image, query))
    image = np.repeat(disk_image(128, centre=(60, 70), radius=18)[0][..., None], 3, axis=2)
    for query in ("segment the IVC", "segment the left inferior frontal gyrus, opercular part"):
        policy.decide(PolicyRequest(profile=PROFILE, query=query, image=image, mask=None, clicks=(), step=1))
    assert "segment the inferior vena cava" in asked and "segment the left frontal inf oper" in asked
    assert "segment the IVC" not in asked


def test_a_query_is_checked_without_loading_torch():
    """The CLI checks a query, and the widget fills its query box, before any model loads."""
    import subprocess
    import sys

    code = ("import sys; from napari_ibis.policies import check_query, vocabulary_of; "
            "check_query(None, 'segment the liver'); vocabulary_of(None); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'a model library was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_rib_asked_by_its_number_or_a_vertebra_by_its_level_is_said_not_to_be_counted(tmp_path):
    """One slice cannot tell rib 9 from rib 10, or L3 from L4 (they are counted from the first or
    the twelfth rib, or from the sacrum): the first thought and the answer say so, whether the
    structure is found or answered not present; a rib or vertebra not named by number, a T2 image,
    and other structures get no such words."""
    from napari_ibis.grounding.head import PointerHead, PointerHeadConfig
    from napari_ibis.policies import load_policy
    from napari_ibis.protocol import Response

    PointerHead(PointerHeadConfig(presence_threshold=0.0, structures=TAUGHT + ["left rib 9"])).save_pretrained(
        tmp_path / "v8")
    policy = load_policy(tmp_path / "v8")
    image = np.zeros((64, 64, 3), np.uint8)
    first = policy.decide(PolicyRequest(profile=PROFILE, query="segment the left rib 9", image=image, mask=None,
                                        clicks=(), step=1))
    assert first.thought.startswith("A rib's number is counted from the first or the twelfth rib")
    for answer, absent, check in (("The segmentation is complete.", False, "check that this is rib 9"),
                                  ("The requested structure is not present in this image.", True,
                                   "rib 9 may be one of the ribs here")):
        policy._decide = lambda request, answer=answer, absent=absent: Response(
            thought="Done.", terminate=True, answer=answer, not_present=absent)
        said = policy.decide(PolicyRequest(profile=PROFILE, query="Outline the left rib 9.", image=image, mask=None,
                                           clicks=(), step=2)).answer
        assert said == f"{answer} The rib's number is not counted on one slice: {check}."
    policy._decide = lambda request: Response(thought="Done.", terminate=True, answer="The segmentation is complete.")
    said = policy.decide(PolicyRequest(profile=PROFILE, query="segment the L2 vertebra", image=image, mask=None,
                                       clicks=(), step=1))
    assert said.thought.startswith("A vertebra's level is counted from the sacrum or from the first rib")
    assert said.answer.endswith("The vertebra's level is not counted on one slice: check that this is L2.")
    for query in ("segment the liver", "segment the ribs", "segment the vertebrae", "segment the liver on this T2 image"):
        said = policy.decide(PolicyRequest(profile=PROFILE, query=query, image=image, mask=None, clicks=(), step=2))
        assert "not counted" not in said.answer and "not counted" not in said.thought
