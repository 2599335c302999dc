import numpy as np

from napari_ibis._sample_data import brain, nuclei, phantom, retina
from napari_ibis._writer import write_labels


def test_sample_data_loads_offline_with_ground_truth():
    (image, image_meta, image_kind), (labels, _, labels_kind) = nuclei()
    assert image.shape == (512, 512) and image_kind == "image"
    assert labels_kind == "labels" and labels.max() > 100
    ((fundus, meta, kind),) = retina()
    assert fundus.ndim == 3 and meta["rgb"] and kind == "image"
    (volume, _, _), (atlas, _, _) = brain()
    assert volume.shape == atlas.shape == (181, 217, 181) and atlas.max() == 116
    (ct, _, _), (structures, meta, _) = phantom()
    assert ct.shape == structures.shape and structures.max() >= 3 and "liver" in meta["name"]


def test_the_writer_keeps_every_label_value(tmp_path):
    import tifffile

    labels = np.zeros((4, 16, 16), np.uint16)
    labels[1, 2:5, 2:5] = 3
    labels[2, 8:9, 8:12] = 9
    (written,) = write_labels(str(tmp_path / "labels.tif"), labels, {})
    assert np.array_equal(tifffile.imread(written), labels)
