"""Real photographs available offline (shipped inside scikit-image and scikit-learn), split
into training and held-out evaluation images by a fixed rule."""

from __future__ import annotations

import functools

import numpy as np

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
SKLEARN_PHOTOS = ("china", "flower")


@functools.cache
def builtin_photos() -> dict[str, np.ndarray]:
    """name -> (H, W, 3) uint8 RGB, sorted by name."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = {name: getattr(data, name)() for name in SKIMAGE_PHOTOS}
    photos["motorcycle"] = data.stereo_motorcycle()[0]
    sample = load_sample_images()
    for fname, image in zip(sample.filenames, sample.images, strict=True):
        photos[fname.rsplit("/", 1)[-1].split(".")[0]] = image
    return {name: np.ascontiguousarray(photos[name][..., :3]) for name in sorted(photos)}


def split(name: str) -> str:
    """The fixed rule: every third photo in name order is held out for evaluation."""
    names = list(builtin_photos())
    return "eval" if names.index(name) % 3 == 2 else "train"


def photos(subset: str) -> dict[str, np.ndarray]:
    if subset not in ("train", "eval"):
        raise ValueError("subset must be 'train' or 'eval'")
    return {n: p for n, p in builtin_photos().items() if split(n) == subset}
