import numpy as np
import pytest

from napari_ibis.clicker import next_click
from napari_ibis.errors import InputError
from napari_ibis.metrics import click_summary, dice, entity_f1, iou, miou_at, never_reached, noc
from napari_ibis.overlay import compose, to_rgb8


def release_overlay(img, mask, color=(34, 139, 34), alpha=0.4):
    """The release's overlay_mask, restated with numpy only."""
    img_np = img.astype(np.float32)
    overlay = img_np.copy()
    overlay[mask > 0] = color
    return np.clip(img_np * (1 - alpha) + overlay * alpha, 0, 255).astype(np.uint8)


def test_compose_matches_the_release_pixel_for_pixel():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    mask = rng.random((64, 80)) > 0.5
    out = compose(img, mask)
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(out, release_overlay(img, mask))
    expected = np.clip(img[mask].astype(np.float32) * 0.6 + np.float32([34, 139, 34]) * 0.4, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out[mask], expected)


def test_compose_rejects_a_mask_of_the_wrong_shape():
    with pytest.raises(InputError, match="differs"):
        compose(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9), bool))


def test_to_rgb8_handles_grey_16bit_float_and_rgb():
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert np.array_equal(to_rgb8(grey)[..., 1], grey)
    sixteen = (np.arange(100, dtype=np.uint16) * 600).reshape(10, 10)
    out = to_rgb8(sixteen)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    ct = np.array([-1000.0, -160.0, 40.0, 240.0] * 2).reshape(8, 1).repeat(8, 1)
    windowed = to_rgb8(ct, "ct:40,400")
    assert windowed[0, 0, 0] == 0 and windowed[2, 0, 0] == 128 and windowed[3, 0, 0] == 255
    rgb = np.random.default_rng(1).integers(0, 256, (9, 9, 3), dtype=np.uint8)
    assert np.array_equal(to_rgb8(rgb), rgb)
    with pytest.raises(InputError, match="NaN"):
        to_rgb8(np.full((9, 9), np.nan))


def test_next_click_goes_to_the_centre_of_the_larger_error():
    gt = np.zeros((50, 50), bool)
    gt[10:31, 10:31] = True
    row, col, positive = next_click(gt, None)
    assert positive and (row, col) == (20, 20)
    pred = gt.copy()
    pred[35:48, 35:48] = True  # a false positive blob
    row, col, positive = next_click(gt, pred)
    assert not positive and 35 <= row < 48 and 35 <= col < 48
    assert next_click(gt, gt) is None


def test_tie_rules_and_border_padding():
    gt = np.zeros((20, 20), bool)
    gt[2:5, 2:5] = True
    pred = np.zeros((20, 20), bool)
    pred[12:15, 12:15] = True  # FN and FP of identical size: a tie
    assert next_click(gt, pred)[2] is False  # benchmark rule: negative
    assert next_click(gt, pred, ties="positive")[2] is True  # release rule: positive
    edge = np.zeros((20, 20), bool)
    edge[:, :6] = True  # touches the border: padding puts the click away from it
    assert next_click(edge, None)[1] == 2
    assert next_click(edge, None, padding=False)[1] == 0  # on the image border


def test_iou_dice_f1_noc_and_miou():
    a = np.zeros((10, 10), bool)
    a[:5] = True
    b = np.zeros((10, 10), bool)
    b[:5, :5] = True
    assert iou(a, b) == 0.5 and dice(a, b) == pytest.approx(2 / 3)
    assert iou(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    empty = np.zeros((10, 10), bool)
    # found, wrong (FP + FN), absent target correctly left empty, absent target wrongly segmented
    cases = [(a, a), (a, ~a), (empty, empty), (empty, a)]
    assert entity_f1(cases) == pytest.approx(2 * 1 / (2 * 1 + 2 + 1))
    curve = [0.3, 0.7, 0.86, 0.91]
    assert noc(curve, 0.85) == 3 and noc(curve, 0.9) == 4 and noc(curve, 0.95) == 20
    assert never_reached([curve, [0.99]], 0.95) == 1
    assert miou_at([curve, [0.5]], 3) == pytest.approx((0.86 + 0.5) / 2)
    summary = click_summary([curve], max_clicks=4, ks=(1, 4))
    assert summary["noc@85"] == 3 and summary["never@90"] == 0 and summary["miou@4"] == 0.91


def round_ct(outside: float, size: int = 64) -> np.ndarray:
    """A CT-like slice in Hounsfield units: air in a round field of view, a soft-tissue block,
    a bone rod, and ``outside`` beyond the field of view."""
    rows, cols = np.ogrid[:size, :size]
    inside = (rows - size / 2) ** 2 + (cols - size / 2) ** 2 <= (size / 2 - 2) ** 2
    image = np.full((size, size), outside, dtype=np.float32)
    image[inside] = -1000.0
    image[20:44, 16:48] = 40.0
    image[28:36, 28:36] = 700.0
    return image


def test_ct_padding_outside_the_field_of_view_is_windowed_as_air():
    """Scanners write -2048 or -3024 outside the round field of view; counted in the window it
    turned air mid-grey and squashed the tissue (the agent then lost a spleen: IoU 0.91 -> 0)."""
    as_air = to_rgb8(round_ct(-1024.0))  # a scan that writes air outside its field of view
    for padding in (-2048.0, -3024.0):
        shown = to_rgb8(round_ct(padding))
        assert np.array_equal(shown, as_air)
        assert shown[32, 32, 0] == 255 and shown[30, 20, 0] > 100 and shown[32, 5, 0] < 10  # bone, tissue, air
    mr = np.zeros((64, 64), dtype=np.float32)  # an MR's zero background is data, not padding
    mr[10:50, 10:50] = np.linspace(100, 900, 40)[None, :]
    low, high = np.percentile(mr, [0.5, 99.5])
    assert np.array_equal(to_rgb8(mr)[..., 0], np.clip(np.round((mr - low) * 255 / (high - low)), 0, 255).astype(np.uint8))


def test_nan_outside_a_masked_scan_is_background_and_an_all_nan_slice_is_refused():
    """SPM and other tools write NaN where a masked image has no data: it is shown as the
    darkest grey, not refused; a slice with no finite value at all is still one line."""
    image = np.full((32, 32), np.nan, dtype=np.float32)
    image[8:24, 8:24] = np.linspace(200.0, 800.0, 16)[None, :]
    shown = to_rgb8(image)[..., 0]
    assert shown[0, 0] == 0 and shown[8:24, 8:24].max() == 255 and shown[8:24, 8:24].min() <= 1
    with pytest.raises(InputError, match="only NaN"):
        to_rgb8(np.full((9, 9), np.inf))
