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


def brain():
    """The Colin27 T1 MRI volume with its 116 AAL regions (Debian package mricron-data),
    read with their geometry (axial, anterior up, the patient's left on the right)."""
    from pathlib import Path

    from .formats import read_nifti

    root = Path("/usr/share/mricron/templates")
    if not (root / "aal.nii.gz").is_file():
        from napari.utils.notifications import show_warning

        show_warning("the Colin27 brain needs the Debian package mricron-data (apt-get install mricron-data)")
        return []
    volume, _, volume_meta = read_nifti(root / "ch2.nii.gz")
    atlas, _, atlas_meta = read_nifti(root / "aal.nii.gz")
    return [
        (volume, {"name": "Colin27 T1", **volume_meta["geometry"].layer_kwargs()}, "image"),
        (atlas.astype("uint8"), {"name": "AAL regions", "opacity": 0.3, "visible": False,
                                 **atlas_meta["geometry"].layer_kwargs()}, "labels"),
    ]


def phantom():
    """A synthetic CT-like phantom with named organs and a lesion (exact masks as labels)."""
    import numpy as np

    from .phantoms import phantom as make_phantom

    ph = make_phantom(0, size=256, modality="CT")
    labels = np.zeros(ph.image.shape, np.uint8)
    for value, (name, mask) in enumerate(ph.masks.items(), start=1):
        labels[mask] = value
    names = ", ".join(f"{v}={n}" for v, n in enumerate(ph.masks, start=1))
    return [
        (ph.image, {"name": "phantom (CT-like)"}, "image"),
        (labels, {"name": f"phantom structures ({names})", "opacity": 0.3, "visible": False}, "labels"),
    ]
