import numpy as np
import pytest
from conftest import disk_image

from napari_ibis.errors import InputError, ModelError
from napari_ibis.evaluation import simulate_clicks
from napari_ibis.overlay import to_rgb8
from napari_ibis.segmenters import Click, build_segmenter


def needs_assets(name):
    from napari_ibis import assets

    return pytest.mark.skipif(not assets.available(name), reason=f"{name} not fetched: python -m napari_ibis.assets fetch")


@pytest.fixture(scope="module")
def litemedsam():
    return build_segmenter("litemedsam")


@pytest.mark.parametrize("spec", ["classical", "litemedsam", pytest.param("mobilesam", marks=needs_assets("mobile_sam"))])
def test_clicks_segment_a_bright_disk(spec, litemedsam):
    segmenter = litemedsam if spec == "litemedsam" else build_segmenter(spec)
    image, mask = disk_image(128, centre=(60, 70), radius=18)
    run = simulate_clicks(segmenter, to_rgb8(image), mask, max_clicks=5)
    assert max(run.ious) > 0.7, run.ious
    assert run.mask.shape == mask.shape and run.mask.dtype == bool


def test_the_image_is_embedded_once_per_slice(litemedsam):
    image, mask = disk_image(96)
    before = litemedsam.encoder_calls
    run = simulate_clicks(litemedsam, to_rgb8(image), mask, max_clicks=10)
    litemedsam.set_image(to_rgb8(image))  # same pixels again: no new embedding
    assert len(run.clicks) == 10 and litemedsam.encoder_calls - before == 1
    other, _ = disk_image(96, seed=5)
    litemedsam.set_image(to_rgb8(other))
    assert litemedsam.encoder_calls - before == 2


def test_litemedsam_respects_a_negative_click(litemedsam):
    image, mask = disk_image(96, centre=(48, 48), radius=20)
    litemedsam.set_image(to_rgb8(image))
    first = litemedsam.segment([Click(48, 48, True)])
    assert first.mask[48, 48]
    second = litemedsam.segment([Click(48, 48, True), Click(50, 60, False)], first.logits)
    assert not second.mask[50, 60] and second.mask[48, 48]


def test_clicks_outside_the_image_are_refused():
    segmenter = build_segmenter("classical")
    segmenter.set_image(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(InputError, match="outside"):
        segmenter.segment([Click(16, 3, True)])


def test_unknown_segmenter_and_missing_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="unknown segmenter"):
        build_segmenter("nnunet")
    with pytest.raises(ModelError, match="not found"):
        build_segmenter(f"sam2:{tmp_path / 'missing.pt'}")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read"):
        build_segmenter(f"sam2:{garbage}")
    with pytest.raises(ModelError):
        build_segmenter(f"litemedsam:{garbage}")


@pytest.mark.slow
def test_sam2_checkpoint_round_trip_infers_its_config(tmp_path):
    import torch

    random_model = build_segmenter("sam2:random")
    checkpoint = tmp_path / "medsam2_like.pt"
    torch.save({"model": random_model.predictor.model.state_dict()}, checkpoint)
    loaded = build_segmenter(f"sam2:{checkpoint}")
    assert loaded.config == "configs/sam2.1/sam2.1_hiera_t.yaml"
    image, _ = disk_image(64)
    loaded.set_image(to_rgb8(image))
    first = loaded.segment([Click(40, 52, True)])
    second = loaded.segment([Click(40, 52, True), Click(5, 5, False)], first.logits)
    assert first.logits.shape == (256, 256) and second.mask.shape == (64, 64)
    with pytest.raises(ModelError, match="does not match"):
        build_segmenter(f"sam2:{checkpoint}#configs/sam2.1/sam2.1_hiera_s.yaml")


@pytest.fixture(scope="module")
def hand_drawn_nucleus():
    """stardist's real fluorescence image and one of its hand-drawn nuclei (a person's imported mask)."""
    from stardist.data import test_image_nuclei_2d

    image, labels = test_image_nuclei_2d(return_mask=True)
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    nucleus = labels == ids[np.argmin(np.abs(counts - 560))]  # about the size of the one in the report
    return to_rgb8(image), nucleus


ALL_SEGMENTERS = ["classical", "litemedsam", pytest.param("mobilesam", marks=needs_assets("mobile_sam")),
                  pytest.param("sam2:random", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def segmenters(litemedsam):
    built = {"litemedsam": litemedsam}

    def get(spec):
        if spec not in built:
            built[spec] = build_segmenter(spec)
        return built[spec]

    return get


@pytest.mark.parametrize("spec", ALL_SEGMENTERS)
def test_a_negative_click_outside_an_imported_mask_leaves_it_as_it_was(spec, segmenters, hand_drawn_nucleus):
    image, nucleus = hand_drawn_nucleus
    segmenter = segmenters(spec)
    segmenter.set_image(image)
    prior = segmenter.prior_from_mask(nucleus)
    rows, cols = np.nonzero(nucleus)
    far = (int(rows.mean() + 170) % image.shape[0], int(cols.mean()))
    assert not nucleus[far]
    result = segmenter.segment([Click(*far, False, source="user")], prior)
    overlap = (result.mask & nucleus).sum() / (result.mask | nucleus).sum()
    assert overlap > 0.9, (spec, result.mask.sum(), nucleus.sum())


@pytest.mark.parametrize("spec", ALL_SEGMENTERS)
def test_a_negative_click_inside_an_imported_mask_removes_only_the_part_around_it(spec, segmenters, hand_drawn_nucleus):
    image, nucleus = hand_drawn_nucleus
    segmenter = segmenters(spec)
    segmenter.set_image(image)
    rows, cols = np.nonzero(nucleus)
    edge = int(np.argmax(cols))  # a click near the nucleus's right edge, inside it
    click = Click(int(rows[edge]), int(cols[edge]) - 2, False, source="user")
    assert nucleus[click.row, click.col]
    result = segmenter.segment([click], segmenter.prior_from_mask(nucleus))
    assert not result.mask[click.row, click.col]
    assert result.mask.sum() > 0.5 * nucleus.sum() and (result.mask & ~nucleus).sum() < 0.05 * nucleus.sum()


@pytest.mark.parametrize("spec", ALL_SEGMENTERS)
def test_no_sequence_of_clicks_on_an_imported_mask_raises(spec, segmenters, hand_drawn_nucleus):
    image, nucleus = hand_drawn_nucleus
    segmenter = segmenters(spec)
    segmenter.set_image(image)
    rng = np.random.default_rng(0)
    height, width = nucleus.shape
    for trial in range(4):
        logits = segmenter.prior_from_mask(nucleus) if trial % 2 == 0 else None
        clicks = []
        for _ in range(3):
            clicks.append(Click(int(rng.integers(height)), int(rng.integers(width)), bool(rng.random() < 0.4)))
            result = segmenter.segment(clicks, logits)
            assert result.mask.shape == nucleus.shape and result.mask.dtype == bool
            logits = result.logits


@needs_assets("mobile_sam")
def test_mobilesam_takes_a_point_natively_and_loads_every_weight_of_the_checkpoint():
    import torch

    from napari_ibis import assets
    from napari_ibis.segmenters.mobilesam import build_mobile_sam

    state = torch.load(assets.path("mobile_sam", "ISAT/checkpoints/mobile_sam.pt"), map_location="cpu", weights_only=True)
    missing, unexpected = build_mobile_sam().load_state_dict(state, strict=False)
    assert missing == [] and sorted(unexpected) == ["image_encoder.head.bias", "image_encoder.head.weight",
                                                    "image_encoder.norm_head.bias", "image_encoder.norm_head.weight"]
    segmenter = build_segmenter("mobilesam")
    image, mask = disk_image(128, centre=(60, 70), radius=18)
    segmenter.set_image(to_rgb8(image))
    one = segmenter.segment([Click(60, 70, True)]).mask  # one point, no box: LiteMedSAM's decoder cannot do this
    assert (one & mask).sum() / (one | mask).sum() > 0.9


def test_mobilesam_mask_on_a_small_slice_has_no_specks_from_the_decoders_grid_texture():
    """Where SAM's decoder is unsure its low-res logits carry a fine grid texture; sampled at
    the pixels of a small slice (a 3 mm CT is about 100 x 120) it came out as specks and pinholes."""
    from scipy import ndimage as ndi

    from napari_ibis.segmenters.mobilesam import LOW_RES, MobileSAMSegmenter, _resized

    segmenter = MobileSAMSegmenter.__new__(MobileSAMSegmenter)  # the resize alone: no weights needed
    segmenter._shape, segmenter._resized = (101, 122), _resized((101, 122))
    rows, cols = np.mgrid[:LOW_RES, :LOW_RES]
    inside = (rows - 90) ** 2 + (cols - 120) ** 2 < 60 ** 2  # a disc, well inside the 101 x 122 frame
    texture = np.where((rows + cols) % 2 == 0, 3.0, -3.0)  # +-3 from one low-res cell to the next
    logits = np.where(inside, 1.0 + texture, -1.0 + texture).astype(np.float32)
    mask = segmenter.mask_from_prior(logits)
    assert ndi.label(mask)[1] == 1 and ndi.label(~mask)[1] == 1  # one piece, no holes


def test_a_missing_fetched_file_is_one_line_that_says_how_to_fetch_it(monkeypatch, tmp_path):
    from napari_ibis import assets

    monkeypatch.setenv("NAPARI_IBIS_ASSETS", str(tmp_path))
    with pytest.raises(ModelError, match=r"mobile_sam.pt is missing .* run python -m napari_ibis.assets fetch"):
        build_segmenter("mobilesam")
    assert not assets.available("mobile_sam")


def test_clicks_whose_objects_lie_apart_are_grouped_into_parts():
    from napari_ibis.segmenters.parts import click_groups

    rows, cols = np.mgrid[:60, :90]
    left, right = (rows - 30) ** 2 + (cols - 20) ** 2 < 100, (rows - 30) ** 2 + (cols - 70) ** 2 < 100
    wide = (rows - 30) ** 2 + (cols - 45) ** 2 < 900  # what a click found alone that holds both
    clicks = [Click(30, 20, True), Click(30, 70, True), Click(32, 22, True)]
    assert click_groups(clicks, [left, right, left]) == [[0, 2], [1]]
    assert click_groups(clicks[:2], [wide, right]) == [[0, 1]]  # the first's object holds the second click
    touching = (rows - 30) ** 2 + (cols - 31) ** 2 < 4  # within two pixels of the left object's edge
    assert click_groups([clicks[0], Click(30, 31, True)], [left, touching]) == [[0, 1]]


@needs_assets("mobile_sam")
@needs_assets("totalsegmentator")
def test_a_click_on_each_kidney_segments_both_not_what_lies_between():
    """SAM's decoder reads all clicks of one call as one object: a click on each kidney of a real
    MR slice decoded together covers the belly between them (IoU about 0.06); decoded part by part
    (segmenters/parts.py) each kidney is found, and a later negative click and the prior keep both."""
    from napari_ibis import assets, io
    from napari_ibis.metrics import iou
    from napari_ibis.propagation import default_window
    from scipy import ndimage as ndi
    from training.data.sources import TOTALSEG_VOLUMES, totalseg_class_maps

    root = assets.path("totalsegmentator", "tests/reference_files").parent.parent
    image_file, labels_file, class_map = TOTALSEG_VOLUMES["abdomen_mr"]
    volume, labels = io.read_image(root / image_file).data, io.read_image(root / labels_file).data
    value = {name: v for v, name in totalseg_class_maps()[class_map].items()}
    kidneys = [labels[4] == value[f"kidney_{side}"] for side in ("left", "right")]
    clicks = [Click(*map(int, np.unravel_index(np.argmax(ndi.distance_transform_edt(k)), k.shape)), True)
              for k in kidneys]
    segmenter = build_segmenter("mobilesam")
    segmenter.set_image(to_rgb8(volume[4], default_window(volume)[0]))
    both = kidneys[0] | kidneys[1]
    assert iou(both, segmenter._segment(clicks, None).mask) < 0.2  # what SAM's decoder makes of them together
    first = segmenter.segment(clicks)
    assert iou(both, first.mask) > 0.75
    settled = segmenter.segment(clicks, first.logits)  # nothing new asked: each part kept, not re-decoded smaller
    assert iou(first.mask, settled.mask) > 0.95
    one = segmenter.segment(clicks[:1])
    assert iou(both, segmenter.segment(clicks, one.logits).mask) > 0.75  # the second kidney clicked later
    assert all(iou(k, first.mask & ndi.binary_dilation(k, iterations=3)) > 0.6 for k in kidneys)
    outside = np.argwhere(~ndi.binary_dilation(both, iterations=6) & (volume[4] > np.percentile(volume[4], 60)))[0]
    again = segmenter.segment([*clicks, Click(int(outside[0]), int(outside[1]), False)], first.logits)
    assert iou(both, again.mask) > 0.75
