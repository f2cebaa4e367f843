"""The model's input transform: an RGB image becomes a normalised ``3×H×W`` float32 array.

This is the one implementation of the preprocessing contract in ``functions/common/manifest.py``;
serving (the preprocess function) and training (the demo model) both call it, so the network
sees exactly the same pixels in both.

Example::

    spec = InputSpec(height=64, width=64, resize_shorter=64)
    array = to_tensor(Image.open("cat.jpg").convert("RGB"), spec)   # shape (3, 64, 64)
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from functions.common.manifest import InputSpec

_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def fit(image: Image.Image, spec: InputSpec) -> Image.Image:
    """Resize so the shorter side is ``spec.resize_shorter``, then centre-crop ``height × width``."""
    if image.mode != "RGB":
        raise ValueError(f"fit() expects an RGB image, got mode {image.mode}")
    width, height = image.size
    scale = spec.resize_shorter / min(width, height)
    new_size = (max(spec.width, round(width * scale)), max(spec.height, round(height * scale)))
    if new_size != image.size:
        image = image.resize(new_size, _FILTERS[spec.interpolation], reducing_gap=3.0)
    left = (new_size[0] - spec.width) // 2
    top = (new_size[1] - spec.height) // 2
    return image.crop((left, top, left + spec.width, top + spec.height))


def normalise(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """``(pixel / 255 - mean) / std`` per channel, laid out channels-first (3×H×W, float32)."""
    pixels = np.asarray(image, dtype=np.float32)  # H×W×3, one copy
    scale = np.float32(1.0 / 255.0)
    mean = np.asarray(spec.mean, dtype=np.float32) / scale
    inv_std = scale / np.asarray(spec.std, dtype=np.float32)
    pixels -= mean
    pixels *= inv_std
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def to_tensor(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """``fit`` then ``normalise``: the network input for one RGB image, shape (3, H, W)."""
    return normalise(fit(image, spec), spec)
