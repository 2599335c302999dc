"""Sample images that load offline from packages already installed."""

from __future__ import annotations


def nuclei():
    """stardist's fluorescence nuclei (512x512) with its 125 hand-drawn instance labels."""
    from stardist.data import test_image_nuclei_2d

    image, labels = test_image_nuclei_2d(return_mask=True)
    return [
        (image, {"name": "nuclei"}, "image"),
        (labels, {"name": "nuclei labels (ground truth)", "opacity": 0.4}, "labels"),
    ]


def retina():
    """scikit-image's retina fundus photograph (RGB, 1411x1411)."""
    from skimage import data

    return [(data.retina(), {"name": "retina", "rgb": True}, "image")]
