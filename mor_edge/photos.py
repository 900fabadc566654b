"""Real photographs available offline (shipped inside scikit-image and scikit-learn, and in
Debian's wallpaper packages once installed), split
into training and held-out evaluation images by a fixed rule."""

from __future__ import annotations

import functools
from pathlib import Path

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


# Photographs in Debian's wallpaper packages (`make photos` installs them), by package. Their
# other files are illustrations or renders and are left out by name: mate-backgrounds'
# abstract/ and desktop/ folders (Elephants is a painting), lomiri-wallpapers-16.04's
# umang, lomiri-wallpapers-20.04's Fossa, Infinite-Sea and Painting-Colors, and all of
# ukui-wallpapers.
DEBIAN_PHOTOS: dict[str, tuple[str, ...]] = {
    "mate-backgrounds": tuple(
        f"mate/nature/{name}.jpg"
        for name in (
            "Aqua",
            "Blinds",
            "Dune",
            "FreshFlower",
            "Garden",
            "GreenMeadow",
            "LadyBird",
            "RainDrops",
            "Storm",
            "TwoWings",
            "Wood",
            "YellowFlower",
        )
    ),
    "lomiri-wallpapers-16.04": (
        "Bridge_by_Sander_Klootwijk.jpg",
        "Dragonfly_by_Bolly.jpg",
        "Picture_0B_by_freespace.jpg",
        "Picture_1A_by_freespace.jpg",
        "Wine_by_Jakkub_Mede.jpg",
        "aitzgorri_by_Aitzol_Berasategi.jpg",
        "analogpattern_by_Peter_Nerlich.jpg",
        "free_by_Peter_Nerlich.jpg",
        "friends_by_Aitzol_Berasategi.jpg",
        "greentock_by_Peter_Nerlich.jpg",
        "life_by_Aitzol_Berasategi.jpg",
        "picosdeeuropa_by_Aitzol_Berasategi.jpg",
        "seeding_by_Clements_Engelhardt.jpg",
        "sunset_by_Aitzol_Berasategi.jpg",
    ),
    "lomiri-wallpapers-20.04": ("Kleiber_by_Lukas_Baubkus.jpg",),
}
BACKGROUNDS = Path("/usr/share/backgrounds")
# Wallpapers are 2-20 MP and soft at the pixel level; reduced to at most this long side they
# are sharp, DIV2K-sized HR images, and decoding them all takes seconds, not a minute.
MAX_SIDE = 2048


def debian_photo_paths(root: Path = BACKGROUNDS) -> dict[str, Path]:
    """name (file stem) -> path of every listed photo that is installed, sorted by name."""
    paths = {Path(f).stem: root / f for files in DEBIAN_PHOTOS.values() for f in files}
    return {name: paths[name] for name in sorted(paths) if paths[name].is_file()}


def debian_split(name: str) -> str:
    """The fixed rule for the Debian photos: every fourth in name order (of the whole list,
    installed or not) is held out for evaluation."""
    names = sorted(Path(f).stem for files in DEBIAN_PHOTOS.values() for f in files)
    return "eval" if names.index(name) % 4 == 3 else "train"


@functools.cache
def _load_reduced(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        image.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG: decode at a reduced scale directly
        rgb = image.convert("RGB")
        rgb.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        return np.ascontiguousarray(np.asarray(rgb))


def debian_photos(subset: str, root: Path = BACKGROUNDS) -> dict[str, np.ndarray]:
    """The installed Debian photos of `subset` (`train` or `eval`), long side <= MAX_SIDE;
    empty when none is installed."""
    if subset not in ("train", "eval"):
        raise ValueError("subset must be 'train' or 'eval'")
    return {n: _load_reduced(p) for n, p in debian_photo_paths(root).items() if debian_split(n) == subset}


def training_photos() -> dict[str, np.ndarray]:
    """Everything the SR stages may learn from: the built-in training photos and extras, and
    the installed Debian training photos."""
    return {**photos("train"), **debian_photos("train")}


def evaluation_photos() -> dict[str, np.ndarray]:
    """The held-out photos: scikit-image's and scikit-learn's, and the installed Debian ones."""
    return {**photos("eval"), **debian_photos("eval")}
