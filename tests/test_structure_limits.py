"""What propagation is told about the structure a query names: one vertebra reaches only so far;
the liver and the spleen look alike throughout; everything else is left to the slices."""

import pytest

from napari_ibis.structure_limits import VERTEBRA_REACH_MM, StructureLimits, limits_for


@pytest.mark.parametrize("query", ["segment the L3 vertebra", "Segment the T12 Vertebra", "outline vertebra L4",
                                   "segment the vertebral body of L2", "segment the vertebra"])
def test_one_vertebra_reaches_so_far(query):
    assert limits_for(query) == StructureLimits(reach_mm=VERTEBRA_REACH_MM, why="a vertebra")


@pytest.mark.parametrize("query", ["segment the vertebrae", "segment the spine", "segment the lumbar spine",
                                   "segment the sacrum", "segment the vertebral column", "segment the T1 lesion",
                                   "segment the aorta", "", None])
def test_several_vertebrae_or_another_structure_have_no_reach(query):
    assert limits_for(query).reach_mm is None


@pytest.mark.parametrize("query, organ", [("segment the liver", "the liver"), ("Outline the SPLEEN", "the spleen")])
def test_the_liver_and_the_spleen_are_uniform(query, organ):
    assert limits_for(query) == StructureLimits(uniform=True, why=organ)


@pytest.mark.parametrize("query", ["segment the liver tumour", "segment the liver lesions", "segment the hepatic vein",
                                   "segment the splenic vein", "segment the stomach", "segment the left kidney",
                                   "segment the splenic flexure"])
def test_lesions_vessels_hollow_organs_and_kidneys_are_not_uniform(query):
    assert not limits_for(query).uniform


def test_the_reach_in_slices_needs_the_spacing():
    limits = limits_for("segment the L1 vertebra")
    assert limits.reach_slices(3.0) == 11 and limits.reach_slices(0.5) == 70
    assert limits.reach_slices(None) is None and StructureLimits().reach_slices(1.0) is None
