"""Real photographs for calibrating, checking and demonstrating an ImageNet model offline.

scikit-image's wheel ships a handful of real photos (tooling only: never in the Lambda image).
They are split once, here, into two disjoint sets:

- ``DEMO_PHOTOS``: photos of ImageNet classes, each with the labels a correct answer may have.
  They are the held-out set (never used for calibration), the demo's samples and the tests'.
- ``CALIBRATION_PHOTOS``: everything else (a portrait, space, microscopy, textures, a
  motorcycle, greyscale scenes): int8 calibration only.

``augment`` derives more views of a photo (random crops, flips, brightness and contrast), so a
few photos give a calibration set and a held-out set of realistic size.

Example::

    photos = demo_photos()                       # {"chelsea": Photo(image=<PIL RGB>, expected=(...)), ...}
    views = augment(photos["coffee"].image, 8, seed=0)   # 8 PIL images
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from functions.common.errors import InvalidRequestError


@dataclass(frozen=True)
class Photo:
    """A real photo and the ImageNet labels a correct top-1 may be (empty: no ImageNet class)."""

    name: str
    image: Image.Image
    expected: tuple[str, ...]


#: name -> labels a correct top-1 may have (ImageNet has several near-synonymous classes).
DEMO_PHOTOS: dict[str, tuple[str, ...]] = {
    "chelsea": ("tiger cat", "tabby", "Egyptian cat"),  # Stéfan van der Walt's cat
    "coffee": ("espresso", "cup", "coffee mug"),  # a cup of coffee, from above
    "rocket": ("missile", "projectile", "space shuttle"),  # a launch
    "camera": ("tripod", "reflex camera", "Polaroid camera"),  # the cameraman, greyscale
}
CALIBRATION_PHOTOS = (
    "astronaut",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
    "grass",
    "gravel",
    "brick",
    "coins",
    "moon",
    "clock",
    "colorwheel",
    "cell",
    "motorcycle",
)


def _skimage_data() -> object:
    try:
        from skimage import data
    except ImportError:
        raise InvalidRequestError(
            "the sample photos come from scikit-image, which is not installed: pip install scikit-image "
            "(inferpipe's 'models' extra has it)"
        ) from None
    return data


def _load(name: str) -> Image.Image:
    data = _skimage_data()
    loader: Callable[[], np.ndarray] = getattr(data, "stereo_motorcycle" if name == "motorcycle" else name)
    array = loader()
    if name == "motorcycle":
        array = array[0]  # the left view of the stereo pair
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return Image.fromarray(np.asarray(array)).convert("RGB")


def demo_photos() -> dict[str, Photo]:
    """The held-out / demo photos, RGB, with their accepted labels."""
    return {name: Photo(name, _load(name), expected) for name, expected in DEMO_PHOTOS.items()}


def calibration_photos() -> dict[str, Photo]:
    """The calibration-only photos, RGB."""
    return {name: Photo(name, _load(name), ()) for name in CALIBRATION_PHOTOS}


def augment(image: Image.Image, count: int, seed: int) -> list[Image.Image]:
    """``count`` random views of ``image``: a crop of 35-100 % of its area (aspect 3:4 to 4:3),
    a horizontal flip half the time, brightness and contrast each scaled by 0.75-1.25."""
    rng = np.random.default_rng(seed)
    width, height = image.size
    views = []
    for _ in range(count):
        area = rng.uniform(0.35, 1.0) * width * height
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        w = int(min(width, round(np.sqrt(area * aspect))))
        h = int(min(height, round(np.sqrt(area / aspect))))
        left = int(rng.integers(0, width - w + 1))
        top = int(rng.integers(0, height - h + 1))
        view = image.crop((left, top, left + w, top + h))
        if rng.random() < 0.5:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        view = ImageEnhance.Brightness(view).enhance(float(rng.uniform(0.75, 1.25)))
        view = ImageEnhance.Contrast(view).enhance(float(rng.uniform(0.75, 1.25)))
        views.append(view)
    return views


def augmented(photos: dict[str, Photo], per_photo: int, seed: int) -> Iterator[tuple[str, Image.Image]]:
    """Each photo itself, then ``per_photo`` augmented views of it: ``(photo name, image)``."""
    for index, (name, photo) in enumerate(sorted(photos.items())):
        yield name, photo.image
        for view in augment(photo.image, per_photo, seed + index):
            yield name, view


def write_jpegs(photos: dict[str, Photo], folder: Path, quality: int = 92) -> list[Path]:
    """Save each photo as ``<name>.jpg`` in ``folder`` (what a user would upload); returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, photo in sorted(photos.items()):
        buffer = io.BytesIO()
        photo.image.save(buffer, format="JPEG", quality=quality)
        path = folder / f"{name}.jpg"
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


__all__ = [
    "CALIBRATION_PHOTOS",
    "DEMO_PHOTOS",
    "Photo",
    "augment",
    "augmented",
    "calibration_photos",
    "demo_photos",
    "write_jpegs",
]
