import numpy as np
import pytest

from napari_ibis.phantoms import phantom
from napari_ibis.segmenters import build_segmenter
from training.data import text
from training.data.sources import phantom_samples, split_by_group, stardist_nuclei
from training.data.trajectories import keep, self_correction, simulate


def test_phantoms_are_seeded_and_hold_several_disjoint_named_structures():
    a, b = phantom(7), phantom(7)
    assert np.array_equal(a.image, b.image) and a.masks.keys() == b.masks.keys()
    assert not np.array_equal(phantom(8).image, a.image)
    for seed in range(10):
        ph = phantom(seed)
        assert len(ph.masks) >= 2 and ph.image.dtype == np.uint8
        names = list(ph.masks)
        for i, first in enumerate(names):
            for second in names[i + 1:]:
                overlap = (ph.masks[first] & ph.masks[second]).any()
                lesion_in_host = "tumour" in second or second in ("infarct", "nodule", "polyp", "mitotic figure")
                assert not overlap or lesion_in_host


def test_phantom_anatomy_is_readable_from_the_image():
    """Paired structures on their own side (radiological convention), lesions in their organ."""
    from napari_ibis.phantoms import LESION_HOSTS, LESIONS

    for seed in range(40):
        ph = phantom(seed)
        centre = {name: np.argwhere(mask)[:, 1].mean() for name, mask in ph.masks.items() if mask.any()}
        for name, column in centre.items():
            if name.startswith("left ") or name == "spleen":
                assert column > ph.image.shape[1] / 2 - 1, (seed, name)
            if name.startswith("right ") or name == "liver":
                assert column < ph.image.shape[1] / 2 + 1, (seed, name)
        lesion = LESIONS[ph.modality]
        if lesion in ph.masks:
            assert any(host in ph.masks and (ph.masks[lesion] <= ph.masks[host]).all() for host in LESION_HOSTS[ph.modality])


def test_the_leak_check_catches_planted_privileged_words():
    assert text.leaks("The red region is a FP of the mask") == ["fp", "red"]
    assert text.leaks("Compare with the ground truth") == ["ground truth"]
    assert text.leaks("The mask covers the liver well") == []


def test_synthesised_reasoning_never_leaks():
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 40), bool)
    mask[10:20, 10:20] = True
    for _ in range(500):
        row, col = rng.integers(0, 40, 2)
        for current in (None, mask):
            thought = text.reasoning("liver", "CT", current, int(row), int(col), bool(rng.integers(2)), rng)
            assert not text.leaks(thought) and "liver" in thought
        assert "liver" in text.query("liver", "CT", rng)


def test_splits_by_group_are_disjoint():
    samples = list(phantom_samples(range(30))) + list(stardist_nuclei(count=10))
    train, evaluation = split_by_group(samples, eval_fraction=0.3)
    assert train and evaluation
    assert not {s.group for s in train} & {s.group for s in evaluation}


@pytest.fixture(scope="module")
def classical():
    return build_segmenter("classical")


def test_trajectories_reach_the_stop_iou_and_absent_targets_say_so(classical):
    rng = np.random.default_rng(1)
    sample = next(s for s in phantom_samples([0]) if s.target == "liver")
    trajectory = simulate(sample, classical, rng, stop_iou=0.85, max_steps=12)
    assert trajectory.moves[-1].keyword == "terminate" and trajectory.final_iou >= 0.85
    ious = [m.iou_after for m in trajectory.moves if m.click is not None]
    assert ious == sorted(ious) or max(ious) >= 0.85
    assert keep(trajectory, max_clicks=12, min_dice=0.8)
    absent = simulate(type(sample)(sample.image, np.zeros_like(sample.mask), "appendix", "CT", "x", "g"), classical, rng)
    assert absent.kind == "absent" and [m.keyword for m in absent.moves] == ["not_present"]


def test_self_correction_flags_the_wrong_click_and_undoes_it(classical):
    rng = np.random.default_rng(3)
    sample = next(s for s in phantom_samples([0]) if s.target == "liver")
    corrected = None
    for _ in range(5):
        corrected = self_correction(sample, classical, rng, stop_iou=0.85, max_steps=8)
        if corrected:
            break
    assert corrected is not None and corrected.kind == "self_correction"
    index = next(i for i, m in enumerate(corrected.moves) if m.wrong)
    wrong, undo = corrected.moves[index], corrected.moves[index + 1]
    assert wrong.iou_after < undo.iou_after and undo.keyword == "undo"  # the wrong click made it worse
    assert np.array_equal(undo.mask_after, wrong.mask_before)


def test_release_self_correction_repairs_the_worse_mask_and_trains_only_the_repair(classical):
    from training.samples import render

    rng = np.random.default_rng(3)
    sample = next(s for s in phantom_samples([0]) if s.target == "liver")
    corrected = next(filter(None, (self_correction(sample, classical, rng, undo=False, stop_iou=0.85, max_steps=8)
                                   for _ in range(5))))
    index = next(i for i, m in enumerate(corrected.moves) if m.wrong)
    wrong, repair = corrected.moves[index], corrected.moves[index + 1]
    assert not any(m.keyword == "undo" for m in corrected.moves)
    assert np.array_equal(repair.mask_before, wrong.mask_after)  # the next decision sees the worse mask
    assert corrected.final_iou > wrong.iou_after
    samples = render(corrected, "ibis-release")
    assert len(samples) == len(corrected.moves) - 1  # the wrong click is never a training target


def _labelled_volume(seed: int):
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 10, (12, 40, 48)).astype(np.float32)  # slices, rows, cols
    labels = np.zeros(image.shape, np.uint8)
    labels[2:9, 10:25, 12:30] = 1  # an organ over 7 slices
    labels[4:6, 14:18, 15:19] = 2  # a lesion in 2 of them
    return image, labels


def test_msd_task_folders_slice_each_named_label_and_keep_volumes_whole(tmp_path):
    import json

    import nibabel as nib

    from training.data.sources import msd_task

    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    training = []
    for case in range(2):
        image, labels = _labelled_volume(case)
        affine = np.eye(4)
        nib.save(nib.Nifti1Image(image.T, affine), tmp_path / f"imagesTr/liver_{case}.nii.gz")  # NIfTI order (x, y, z)
        nib.save(nib.Nifti1Image(labels.T, affine), tmp_path / f"labelsTr/liver_{case}.nii.gz")
        training.append({"image": f"./imagesTr/liver_{case}.nii.gz", "label": f"./labelsTr/liver_{case}.nii.gz"})
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"labels": {"0": "background", "1": "Liver", "2": "Cancer"}, "modality": {"0": "CT"}, "training": training}))
    samples = list(msd_task(tmp_path, slices_per_label=3, min_area=10))
    assert {s.target for s in samples} == {"liver", "cancer"} and {s.modality for s in samples} == {"CT"}
    assert sum(s.target == "liver" for s in samples) == 6 and sum(s.target == "cancer" for s in samples) == 4
    liver = next(s for s in samples if s.target == "liver")
    assert liver.image.shape == liver.mask.shape == (40, 48) and liver.mask.sum() == 15 * 18
    assert len({s.group for s in samples}) == 2  # one group per volume: splits never cut a volume


def test_image_mask_folders_pair_files_by_name_and_name_labels(tmp_path):
    import tifffile
    from PIL import Image

    from training.data.sources import image_mask_folder

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    image, labels = _labelled_volume(0)
    tifffile.imwrite(tmp_path / "images/vol.tif", image)
    tifffile.imwrite(tmp_path / "masks/vol.tif", labels)
    Image.fromarray(np.full((32, 32), 80, np.uint8)).save(tmp_path / "images/slice.png")
    flat = np.zeros((32, 32), np.uint8)
    flat[5:20, 5:20] = 255
    Image.fromarray(flat).save(tmp_path / "masks/slice.png")
    Image.fromarray(flat).save(tmp_path / "images/unpaired.png")
    samples = list(image_mask_folder(tmp_path, names={1: "kidney", 2: "kidney tumour", 255: "kidney"}, modality="CT", min_area=10))
    by_source = {s.source.split(":")[1] for s in samples}
    assert by_source == {"vol", "slice"}  # the unpaired image is skipped
    flat_sample = next(s for s in samples if s.source.split(":")[1] == "slice")
    assert flat_sample.mask.sum() == 225 and flat_sample.target == "kidney"
    assert {s.target for s in samples} == {"kidney", "kidney tumour"}


def test_totalsegmentator_volumes_give_named_real_slices_split_by_patient():
    from napari_ibis import assets
    from training.data.sources import TOTALSEG_HELD_OUT, structure_name, totalseg_reference

    if not assets.available("totalsegmentator"):
        pytest.skip("totalsegmentator not fetched: python -m napari_ibis.assets fetch")
    train = list(totalseg_reference(side="train"))
    held_out = list(totalseg_reference(side="held_out"))
    assert len(train) > 100 and len(held_out) > 50
    assert not {s.group for s in train} & {s.group for s in held_out}  # no patient on both sides
    assert {s.source.split(":")[1] for s in held_out} == set(TOTALSEG_HELD_OUT)
    kidney = next(s for s in held_out if s.target == "left kidney")
    assert np.nonzero(kidney.mask)[1].mean() > kidney.mask.shape[1] / 2  # the patient's left on the image's right
    liver = next(s for s in held_out if s.target == "liver")
    assert np.nonzero(liver.mask)[1].mean() < liver.mask.shape[1] / 2
    assert {s.modality for s in held_out} == {"CT", "MRI"}
    assert structure_name("lung_upper_lobe_right") == "right lung upper lobe"
    assert structure_name("vertebrae_L1") == "L1 vertebra" and structure_name("rib_left_3") == "left rib 3"


def test_pyradiomics_tumours_are_real_volumes_with_their_drawn_masks_in_the_display_convention():
    from napari_ibis import assets
    from training.data.sources import RADIOMICS_CASES, radiomics_lesions, radiomics_volumes

    if not assets.available("pyradiomics"):
        pytest.skip("pyradiomics not fetched: python -m napari_ibis.assets fetch")
    volumes = {case.name: case for case in radiomics_volumes()}
    assert set(volumes) == set(RADIOMICS_CASES)
    lung = volumes["lung2"]
    assert lung.volume.shape == lung.mask.shape == (61, 512, 512) and lung.modality == "CT"
    assert lung.volume.min() <= -1000  # Hounsfield units, as read from the NRRD
    # this tumour lies in the patient's left lung: on the right of the displayed slice
    assert np.nonzero(lung.mask)[2].mean() > 256
    slices = list(radiomics_lesions(["lung2"]))
    assert len(slices) == 11 and all(s.mask.sum() >= 20 and s.target == "lung tumour" for s in slices)
    assert len({s.group for s in radiomics_lesions()}) == 5  # one group per patient: never split


def test_threshold_lungs_puts_the_patients_right_lung_on_the_images_left_and_leaves_the_airway_out():
    from training.data.sources import threshold_lungs

    rows, cols = np.mgrid[:200, :240]
    hu = np.full((200, 240), -1000.0)  # the air around the patient
    hu[((rows - 100) / 80) ** 2 + ((cols - 120) / 110) ** 2 <= 1] = 40.0  # the body
    right = ((rows - 100) / 50) ** 2 + ((cols - 70) / 35) ** 2 <= 1  # on the image's left
    left = ((rows - 100) / 45) ** 2 + ((cols - 172) / 30) ** 2 <= 1
    hu[right | left] = -850.0
    hu[(rows - 100) ** 2 + (cols - 170) ** 2 <= 6 ** 2] = 60.0  # a vessel inside the left lung: kept in it
    airway = (rows - 60) ** 2 + (cols - 120) ** 2 <= 7 ** 2
    hu[airway] = -1000.0
    found_right, found_left = threshold_lungs(hu)
    assert (found_right == right).mean() > 0.999 and (found_left == left).mean() > 0.999
    assert not (found_right | found_left)[airway].any()
    assert threshold_lungs(np.full((50, 50), -1000.0))[0].sum() == 0  # nothing but air: no lung, no error
