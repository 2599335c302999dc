"""Seeded synthetic images with several named structures and exact masks.

Each phantom is a 2-D grey image in the style of one modality (CT, MRI, X-ray,
ultrasound, fluorescence microscopy) holding several structures with names,
drawn without overlap: organs of varied shape, size and contrast, plus a small
lesion inside the organ it belongs to (a liver tumour in the liver, a nodule in
a lung). Paired structures lie on their anatomical side in the radiological
convention (the patient's left on the image's right; the liver on the patient's
right, the spleen on the left), so that "left kidney" and
"right kidney", alike in size and brightness, can be told apart from the image.
Texture, noise and blur follow the modality. Because one image holds several
named things, the query decides which one is meant.

``phantom(seed)`` is a pure function of its seed, so that splits by seed are
exact: nothing evaluated was trained on. The napari sample and the training data
(``training.data.sources.phantom_samples``) use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

MODALITIES = ("CT", "MRI", "X-ray", "ultrasound", "fluorescence microscopy")

# name, relative size (radius as a fraction of the image), mean intensity (0-1)
ORGANS = {
    "CT": [("liver", 0.22, 0.55), ("spleen", 0.11, 0.5), ("left kidney", 0.09, 0.7), ("right kidney", 0.09, 0.7)],
    "MRI": [("left ventricle", 0.12, 0.8), ("right ventricle", 0.10, 0.65), ("myocardium", 0.15, 0.35)],
    "X-ray": [("left lung", 0.2, 0.25), ("right lung", 0.2, 0.25), ("heart", 0.13, 0.6)],
    "ultrasound": [("gallbladder", 0.12, 0.1), ("cyst", 0.08, 0.05), ("vessel", 0.06, 0.15)],
    "fluorescence microscopy": [("nucleus", 0.07, 0.8), ("cell", 0.12, 0.45)],
}
LESIONS = {"CT": "liver tumour", "MRI": "infarct", "X-ray": "nodule", "ultrasound": "polyp", "fluorescence microscopy": "mitotic figure"}
LESION_HOSTS = {"CT": ("liver",), "MRI": ("myocardium",), "X-ray": ("left lung", "right lung"), "ultrasound": ("gallbladder",),
                "fluorescence microscopy": ("cell",)}


SIDES = {"liver": "right", "spleen": "left"}  # the patient's side of unpaired organs that have one


def _column_range(name: str, radius: float, size: int) -> tuple[float, float]:
    """Where a structure's centre column may lie: its anatomical side, if it has one."""
    low, high = radius + 2, size - radius - 2
    side = SIDES.get(name) or name.split(" ")[0]
    if side == "left":  # the patient's left is on the image's right
        return max(low, size / 2), high
    if side == "right":
        return low, min(high, size / 2)
    return low, high


@dataclass
class Phantom:
    image: np.ndarray  # uint8 (H, W)
    masks: dict[str, np.ndarray]  # name -> bool (H, W)
    modality: str
    seed: int


def _blob(shape, centre, radius, rng, irregularity=0.25) -> np.ndarray:
    """A star-convex blob: an ellipse whose radius wobbles with a few harmonics."""
    rows, cols = np.indices(shape)
    dy, dx = rows - centre[0], cols - centre[1]
    angle = np.arctan2(dy, dx) - rng.uniform(0, np.pi)
    stretch = rng.uniform(0.6, 1.0)
    distance = np.hypot(dx, dy / stretch)
    wobble = 1 + sum(rng.uniform(-irregularity, irregularity) / k * np.cos(k * angle + rng.uniform(0, 6.3)) for k in (2, 3, 5))
    return distance <= radius * wobble


def phantom(seed: int, size: int = 128, modality: str | None = None, lesion_probability: float = 0.6) -> Phantom:
    """A phantom of ``size`` pixels; ``modality`` None picks one from the seed."""
    rng = np.random.default_rng(seed)
    modality = modality or MODALITIES[seed % len(MODALITIES)]
    shape = (size, size)
    background = {"CT": 0.3, "MRI": 0.15, "X-ray": 0.7, "ultrasound": 0.35, "fluorescence microscopy": 0.05}[modality]
    image = np.full(shape, background, dtype=np.float64)
    occupied = np.zeros(shape, dtype=bool)
    masks: dict[str, np.ndarray] = {}
    for name, relative, intensity in ORGANS[modality]:
        radius = relative * size * rng.uniform(0.7, 1.2)
        for _ in range(50):
            centre = np.array([rng.uniform(radius + 2, size - radius - 2), rng.uniform(*_column_range(name, radius, size))])
            blob = _blob(shape, centre, radius, rng)
            if not (blob & ndi.binary_dilation(occupied, iterations=2)).any():
                break
        else:
            continue  # no room left for this structure
        occupied |= blob
        masks[name] = blob
        image[blob] = intensity + rng.uniform(-0.08, 0.08)
    hosts = [name for name in LESION_HOSTS[modality] if name in masks]
    if hosts and rng.random() < lesion_probability:
        host = hosts[rng.integers(len(hosts))]
        inside = ndi.distance_transform_edt(masks[host])
        radius = max(2.0, min(inside.max() * 0.5, size * rng.uniform(0.02, 0.06)))
        candidates = np.argwhere(inside > radius + 1)
        if len(candidates):
            centre = candidates[rng.integers(len(candidates))]
            lesion = _blob(shape, centre, radius, rng, 0.35) & masks[host]
            masks[LESIONS[modality]] = lesion
            contrast = rng.choice([-1, 1]) * rng.uniform(0.15, 0.35)
            image[lesion] = np.clip(image[lesion] + contrast, 0, 1)
    image = _texture(image, modality, rng)
    return Phantom(np.clip(image * 255, 0, 255).astype(np.uint8), masks, modality, seed)


def _texture(image: np.ndarray, modality: str, rng: np.random.Generator) -> np.ndarray:
    if modality == "ultrasound":
        speckle = rng.rayleigh(0.5, image.shape)
        return ndi.gaussian_filter(image * speckle * 1.2, 0.8)
    if modality == "X-ray":
        return ndi.gaussian_filter(image, 2.0) + rng.normal(0, 0.03, image.shape)
    if modality == "fluorescence microscopy":
        return ndi.gaussian_filter(image, 1.2) + rng.poisson(3, image.shape) / 60
    blur = 1.0 if modality == "CT" else 0.7
    return ndi.gaussian_filter(image, blur) + rng.normal(0, 0.04 if modality == "CT" else 0.06, image.shape)


@dataclass
class PhantomVolume:
    image: np.ndarray  # uint8 (Z, H, W)
    masks: dict[str, np.ndarray]  # name -> bool (Z, H, W)
    modality: str
    seed: int


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    z, y, x = np.indices(shape, dtype=np.float32)
    return ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((x - centre[2]) / radii[2]) ** 2 <= 1


def phantom_volume(seed: int, depth: int = 32, size: int = 96) -> PhantomVolume:
    """A CT-like volume with exact masks: a liver that grows and shrinks through the slices,
    two kidneys (the patient's left on the image's right), a spleen of two lobes that join
    in the middle slices and part towards its ends, and a liver tumour that starts and ends
    within a few slices."""
    rng = np.random.default_rng(seed)
    shape = (depth, size, size)
    jitter = lambda spread: rng.uniform(-spread, spread)  # noqa: E731
    body = _ellipsoid(shape, (depth / 2, size / 2, size / 2), (depth * 4, size * 0.45, size * 0.47))
    liver = _ellipsoid(shape, (depth * (0.45 + jitter(0.05)), size * 0.42, size * (0.3 + jitter(0.03))),
                       (depth * 0.4, size * 0.2, size * 0.17)) & body
    kidneys = {
        "right kidney": _ellipsoid(shape, (depth * 0.6, size * 0.62, size * 0.3), (depth * 0.22, size * 0.09, size * 0.07)),
        "left kidney": _ellipsoid(shape, (depth * 0.6, size * 0.62, size * 0.7), (depth * 0.22, size * 0.09, size * 0.07)),
    }
    lobes = [_ellipsoid(shape, (depth * (0.45 + offset), size * 0.35, size * (0.72 + offset / 2)),
                        (depth * 0.22, size * 0.08, size * 0.07)) for offset in (-0.12, 0.12)]
    spleen = (lobes[0] | lobes[1]) & ~liver
    tumour = _ellipsoid(shape, (depth * 0.45, size * 0.42, size * 0.3), (max(2.5, depth * 0.08), size * 0.05, size * 0.05)) & liver
    masks = {"liver": liver & ~tumour, "liver tumour": tumour, "spleen": spleen, **kidneys}
    intensity = {"liver": 0.55, "liver tumour": 0.8, "spleen": 0.45, "right kidney": 0.7, "left kidney": 0.7}
    volume = np.where(body, 0.3, 0.02).astype(np.float32)
    for name, mask in masks.items():
        volume[mask] = intensity[name] + jitter(0.04)
    image = np.stack([_texture(plane, "CT", rng) for plane in volume])
    return PhantomVolume(np.clip(image * 255, 0, 255).astype(np.uint8), masks, "CT", seed)
