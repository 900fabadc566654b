"""Real photographs available offline (shipped inside scikit-image and scikit-learn), split
into training and held-out evaluation images by a fixed rule."""

from __future__ import annotations

import functools

import numpy as np

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
SKLEARN_PHOTOS = ("china", "flower")
# More content for training only (never held out, so the evaluation set stays fixed):
# colour photographs, and greyscale ones repeated to RGB.
SKIMAGE_TRAINING_EXTRAS = ("hubble_deep_field", "immunohistochemistry", "retina")
SKIMAGE_GREY_EXTRAS = ("camera", "moon", "coins", "brick", "grass", "gravel")


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


@functools.cache
def training_extras() -> dict[str, np.ndarray]:
    from skimage import data

    extras = {name: getattr(data, name)()[..., :3] for name in SKIMAGE_TRAINING_EXTRAS}
    for name in SKIMAGE_GREY_EXTRAS:
        extras[name] = np.repeat(getattr(data, name)()[..., None], 3, axis=2)
    return {name: np.ascontiguousarray(extras[name]) for name in sorted(extras)}


def photos(subset: str) -> dict[str, np.ndarray]:
    """`eval`: the held-out photos. `train`: the others plus the training-only extras."""
    if subset not in ("train", "eval"):
        raise ValueError("subset must be 'train' or 'eval'")
    chosen = {n: p for n, p in builtin_photos().items() if split(n) == subset}
    return {**chosen, **training_extras()} if subset == "train" else chosen
