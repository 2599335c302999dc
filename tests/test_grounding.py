"""The grounding parts: real data in the display convention, splits that keep held-out data
out of training, the DINOv2 weights read from ONNX, and the head learning and round-tripping."""

from pathlib import Path

import numpy as np
import pytest

from napari_ibis import assets


def needs(*names):
    missing = [n for n in names if not assets.available(n)]
    return pytest.mark.skipif(bool(missing), reason=f"{missing} not fetched: python -m napari_ibis.assets fetch")


@needs("totalsegmentator")
def test_the_left_kidney_is_drawn_on_the_right_of_the_displayed_slice():
    from training.data.sources import totalseg_reference

    samples = [s for s in totalseg_reference(volumes=["abdomen_ct"], slices_per_label=1)
               if s.target in ("left kidney", "right kidney")]
    assert {s.target for s in samples} == {"left kidney", "right kidney"}
    for sample in samples:
        column = np.nonzero(sample.mask)[1].mean() / sample.mask.shape[1]
        assert (column > 0.5) == (sample.target == "left kidney"), (sample.target, column)


@needs("totalsegmentator")
def test_held_out_patients_and_slices_never_reach_training():
    from training.data.sources import TOTALSEG_HELD_OUT
    from training.grounding.dataset import aal_slices, nuclei_slices, totalseg_slices

    train = totalseg_slices("train", step_mm=12.0)
    held = totalseg_slices("held_out", step_mm=12.0)
    assert train and held
    assert all(s.source.split(":")[1] in TOTALSEG_HELD_OUT for s in held)
    assert not any(s.source.split(":")[1] in TOTALSEG_HELD_OUT for s in train)
    assert {s.source for s in aal_slices("train", step=4)}.isdisjoint({s.source for s in aal_slices("held_out", step=1)})
    left, right = nuclei_slices("train")[0], nuclei_slices("held_out")[0]
    assert left.rgb.shape[1] + right.rgb.shape[1] == 512 and "nucleus" in left.ambiguous
    for item in train[:5]:
        assert set(item.masks).isdisjoint(item.absent) and all(m.any() for m in item.masks.values())


@needs("dinov2_small")
def test_dinov2_weights_from_the_onnx_file_match_onnxruntime():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import torch

    from training.grounding.probe_encoders import DINO_ONNX, dinov2_from_onnx

    file = str(assets.path("dinov2_small", DINO_ONNX))
    graph = onnx.load(file)
    graph.graph.output.append(onnx.helper.make_tensor_value_info("/backbone/layernorm/Add_1_output_0",
                                                                 onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    expected = session.run(["/backbone/layernorm/Add_1_output_0"], {"input_image": pixels})[0]
    with torch.inference_mode():
        got = dinov2_from_onnx(file)(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    assert np.abs(expected - got).max() < 1e-3


def _toy_data(count=24, grid=8, seed=0):
    """Random features in which one channel marks where 'square' is, another where 'disk' is."""
    import torch

    from napari_ibis.grounding.encoders import Framing
    from training.grounding.dataset import Slice
    from training.grounding.train import Prepared

    rng = np.random.default_rng(seed)
    features = rng.standard_normal((count, 16, grid, grid)).astype(np.float32) * 0.3
    slices = []
    for i in range(count):
        masks = {}
        for channel, name in ((0, "square"), (1, "disk")):
            row, col = rng.integers(grid, size=2)
            features[i, channel, row, col] += 3.0
            mask = np.zeros((grid * 8, grid * 8), bool)
            mask[row * 8:(row + 1) * 8, col * 8:(col + 1) * 8] = True
            masks[name] = mask
        slices.append(Slice(np.zeros((grid * 8, grid * 8, 3), np.uint8), masks, (), "CT", f"toy:{i}", "toy"))
    framings = [Framing(grid * 8, grid * 8, grid * 8, grid)] * count
    return Prepared(torch.from_numpy(features).half(), torch.zeros(count, 4, grid, grid),
                    torch.ones(count, grid, grid, dtype=torch.bool), framings, slices)


class _Bank:
    """Two fixed query vectors instead of the sentence encoder."""

    vectors = {"square": np.eye(385, dtype=np.float32)[0], "disk": np.eye(385, dtype=np.float32)[1]}

    def sample(self, name, modality):
        return self.vectors[name]

    def vectors_for(self, name, modality):
        return self.vectors[name][None]


def test_the_head_learns_which_structure_the_query_names_and_round_trips(tmp_path):
    import torch

    from napari_ibis.grounding.head import PointerHead, PointerHeadConfig
    from training.grounding.train import evaluate, fit

    train, held = _toy_data(seed=0), _toy_data(seed=1)
    head = PointerHead(PointerHeadConfig(feature_channels=16, grid=8, hidden=32))
    untrained = evaluate(head, held, _Bank())["summary"]["first_click_inside"]
    fit(head, train, _Bank(), steps=150, slices_per_step=8, queries_per_slice=2, log=None)
    trained = evaluate(head, held, _Bank())["summary"]["first_click_inside"]
    assert trained >= 0.9 and trained > untrained + 0.3, (untrained, trained)
    head.save_pretrained(tmp_path / "head")
    again = PointerHead.from_pretrained(tmp_path / "head")
    query = torch.from_numpy(_Bank.vectors["disk"][None])
    saved, loaded = head.state_dict(), again.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    with torch.inference_mode():  # the same weights; kernels may sum in another order (1e-6 on some CPUs)
        torch.testing.assert_close(head(held.features[:1], held.positions[:1], query),
                                   again(held.features[:1], held.positions[:1], query), rtol=1e-5, atol=1e-5)


def _ct_with_table_and_arms():
    """A 256 x 256 'CT slice': a body ellipse, an arm on each side close to it, a table below."""
    rows, cols = np.ogrid[:256, :256]
    image = np.zeros((256, 256, 3), np.uint8)
    body = ((rows - 120) / 70.0) ** 2 + ((cols - 128) / 90.0) ** 2 <= 1
    arms = ((rows - 110) ** 2 + (cols - 22) ** 2 <= 14**2) | ((rows - 110) ** 2 + (cols - 234) ** 2 <= 14**2)
    image[body | arms] = 160
    image[200:204, 10:246] = 200  # the scanner table, a thin strip under the body
    return image


def test_the_largest_part_box_leaves_out_the_table_and_the_arms():
    from napari_ibis.grounding.head import body_box

    image = _ct_with_table_and_arms()
    assert body_box(image) == (50, 8, 204, 249)  # every bright pixel: arms and table included
    top, left, bottom, right = body_box(image, kind="largest_part")
    assert abs(top - 50) <= 2 and abs(bottom - 191) <= 2 and abs(left - 38) <= 2 and abs(right - 219) <= 2
    with pytest.raises(ValueError, match="largest_part"):
        body_box(image, kind="torso")


def test_a_head_keeps_how_it_finds_the_body(tmp_path):
    from napari_ibis.grounding.encoders import Framing
    from napari_ibis.grounding.head import PointerHead, PointerHeadConfig, position_channels

    PointerHead(PointerHeadConfig(feature_channels=8, grid=8, hidden=16, body_box="largest_part")).save_pretrained(tmp_path / "h")
    assert PointerHead.from_pretrained(tmp_path / "h").config.body_box == "largest_part"
    assert PointerHead(PointerHeadConfig(feature_channels=8, grid=8, hidden=16)).config.body_box == "bright"  # v8's
    framing = Framing(height=256, width=256, size=256, grid=8)
    image = _ct_with_table_and_arms()
    bright, largest = position_channels(framing, image), position_channels(framing, image, "largest_part")
    assert np.array_equal(bright[:2], largest[:2])  # the image coordinates do not change
    # the cell over the right arm lies outside the body in the new box, inside it in the old
    assert largest[3, 3, 7] > 1 > bright[3, 3, 7]


def test_augmented_copies_move_image_and_masks_together_and_never_swap_sides():
    from training.grounding.dataset import Slice, augmented

    rgb = np.zeros((96, 128, 3), np.uint8)
    rgb[20:80, 10:118] = 90  # the body
    left, right, edge = (np.zeros((96, 128), bool) for _ in range(3))
    right[40:60, 20:40] = True  # the patient's right lies on the image's left
    left[40:60, 88:108] = True
    edge[20:80, 118:128] = True  # at the image's border: most of it leaves the image in some copies
    rgb[right] = 200
    rgb[left] = 160
    item = Slice(rgb, {"right kidney": right, "left kidney": left, "edge": edge}, ("spleen",), "CT", "s:z=0", "totalseg")
    copies = augmented([item], 6, seed=3)
    assert len(copies) == 6 and augmented([item], 6, seed=3)[2].rgb.tobytes() == copies[2].rgb.tobytes()
    for copy in copies:
        assert copy.absent == ("spleen",) and copy.kind == "totalseg" and copy.source.startswith("s:z=0:augmented=")
        grey = copy.rgb.mean(axis=2)
        for name in ("right kidney", "left kidney"):
            assert grey[copy.masks[name]].mean() > 120, name  # the mask still lies on its bright square
        assert np.nonzero(copy.masks["right kidney"])[1].mean() < np.nonzero(copy.masks["left kidney"])[1].mean()
    assert any("edge" not in copy.masks for copy in copies)  # a structure pushed out is dropped, not kept as a sliver


def test_recontrasted_copies_show_a_ct_slice_in_other_contrasts_as_mri_with_the_same_masks():
    """Pseudo-MR copies of a CT slice (SynthSeg-style): the tissues' order of brightness changes
    from copy to copy (fat above the organ in some), the air stays dark, the masks and names are
    the CT's, the copies are labelled MRI, and an MR slice is not copied."""
    from training.grounding.dataset import Slice, recontrasted

    rgb = np.zeros((96, 128, 3), np.uint8)  # air
    rgb[16:80, 8:120] = 115  # fat around the body
    organ = np.zeros((96, 128), bool)
    organ[30:66, 30:98] = True
    rgb[organ] = 135  # a soft-tissue organ, a little brighter than fat on CT
    item = Slice(rgb, {"liver": organ}, ("spleen",), "CT", "s:z=0", "totalseg")
    copies = recontrasted([item, Slice(rgb, {"liver": organ}, (), "MRI", "m:z=0", "totalseg")], 12, seed=1)
    assert len(copies) == 12 and recontrasted([item], 12, seed=1)[3].rgb.tobytes() == copies[3].rgb.tobytes()
    fat_brighter = 0
    for copy in copies:
        assert copy.modality == "MRI" and copy.source.startswith("s:z=0:recontrasted=") and copy.absent == ("spleen",)
        assert copy.masks["liver"] is organ
        grey = copy.rgb[..., 0].astype(float)
        assert grey[:8].mean() < 0.2 * grey[16:80, 8:120].mean()  # air stays dark
        fat_brighter += grey[20:26, 10:118].mean() > grey[organ].mean()
    assert 0 < fat_brighter < len(copies)  # the contrast changes from copy to copy, both ways


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "training").glob("*/pointer-*.yaml")), ids=lambda p: p.name)
def test_every_pointer_config_in_the_repository_reads_into_its_settings(path):
    from training.config import read_config
    from training.grounding.train import PointerConfig

    config = PointerConfig(**read_config(path))  # a misspelt key fails here
    assert config.steps > 0 and config.output and config.augment >= 0


def test_a_trained_folder_lists_every_name_it_was_asked_for_and_a_fine_tune_keeps_the_earlier_ones():
    """What the agent holds queries to (napari_ibis.grounding.vocabulary): the names on the
    training slices, present or asked for as absent, plus those of the folder it started from."""
    from training.grounding.dataset import Slice
    from training.grounding.train import taught_structures

    rgb = np.zeros((8, 8, 3), np.uint8)
    slices = [Slice(rgb, {"liver": np.ones((8, 8), bool)}, ("spleen",), "CT", "a", "totalseg"),
              Slice(rgb, {"left kidney": np.ones((8, 8), bool)}, (), "CT", "b", "session")]
    assert taught_structures(slices) == ["left kidney", "liver", "spleen"]
    assert taught_structures(slices[1:], earlier=["liver", "aorta"]) == ["aorta", "left kidney", "liver"]
