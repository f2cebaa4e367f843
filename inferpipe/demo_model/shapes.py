"""Synthetic RGB images of eight visually distinct classes, for a demo model that trains offline.

Every image has a random background and foreground colour (with enough contrast between them),
random size, position, rotation and pixel noise. Objects stay inside the image's central square,
so the serving transform's centre crop never cuts them off.

Example::

    import numpy as np
    image = render("triangle", np.random.default_rng(7), size=(320, 240))   # PIL RGB image
    paths = sample_images(Path("samples"), n_per_class=2, seed=0)           # samples/circle-01.jpg, ...
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

#: The classes, in label-index order (line i of the demo model's labels.txt is CLASSES[i]).
CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "horizontal_stripes",
    "vertical_stripes",
    "checkerboard",
)

_MIN_CONTRAST = 90.0  # minimum luma difference (0..255) between foreground and background
_Colour = tuple[int, int, int]


def _luma(colour: _Colour) -> float:
    r, g, b = colour
    return 0.299 * r + 0.587 * g + 0.114 * b


def _colours(rng: np.random.Generator) -> tuple[_Colour, _Colour]:
    """A random (background, foreground) pair whose brightness differs by at least _MIN_CONTRAST."""
    while True:
        background = tuple(int(v) for v in rng.integers(0, 256, size=3))
        foreground = tuple(int(v) for v in rng.integers(0, 256, size=3))
        if abs(_luma(background) - _luma(foreground)) >= _MIN_CONTRAST:  # type: ignore[arg-type]
            return background, foreground  # type: ignore[return-value]


def _rotated(points: np.ndarray, angle: float, centre: tuple[float, float]) -> list[tuple[float, float]]:
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    moved = points @ rotation.T + np.asarray(centre)
    return [(float(x), float(y)) for x, y in moved]


class _Canvas:
    """Where and how big the object is: a random centre and radius inside the central square."""

    def __init__(self, rng: np.random.Generator, size: tuple[int, int]) -> None:
        width, height = size
        side = min(width, height)
        self.radius = max(1.0, side * float(rng.uniform(0.18, 0.36)))
        slack = max(0.0, side / 2 - self.radius - 1)
        self.centre = (
            width / 2 + float(rng.uniform(-slack, slack)) * 0.8,
            height / 2 + float(rng.uniform(-slack, slack)) * 0.8,
        )
        self.angle = float(rng.uniform(0, 2 * math.pi))


def _draw_circle(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: tuple[int, int], fg: _Colour) -> None:
    c = _Canvas(rng, size)
    (x, y), r = c.centre, c.radius
    draw.ellipse((x - r, y - r, x + r, y + r), fill=fg)


def _draw_ring(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: tuple[int, int], fg: _Colour) -> None:
    c = _Canvas(rng, size)
    (x, y), r = c.centre, c.radius
    width = max(1, round(r * float(rng.uniform(0.2, 0.35))))
    draw.ellipse((x - r, y - r, x + r, y + r), outline=fg, width=width)


def _draw_square(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: tuple[int, int], fg: _Colour) -> None:
    c = _Canvas(rng, size)
    half = c.radius / math.sqrt(2) * 1.1
    corners = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
    draw.polygon(_rotated(corners, c.angle, c.centre), fill=fg)


def _draw_triangle(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: tuple[int, int], fg: _Colour) -> None:
    c = _Canvas(rng, size)
    corners = np.array(
        [[c.radius * math.cos(a), c.radius * math.sin(a)] for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    )
    draw.polygon(_rotated(corners, c.angle, c.centre), fill=fg)


def _draw_cross(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: tuple[int, int], fg: _Colour) -> None:
    c = _Canvas(rng, size)
    arm, half_width = c.radius, c.radius * float(rng.uniform(0.22, 0.34))
    for bar in (
        np.array([[-arm, -half_width], [arm, -half_width], [arm, half_width], [-arm, half_width]]),
        np.array([[-half_width, -arm], [half_width, -arm], [half_width, arm], [-half_width, arm]]),
    ):
        draw.polygon(_rotated(bar, c.angle, c.centre), fill=fg)


def _pattern(rng: np.random.Generator, size: tuple[int, int], kind: str) -> np.ndarray:
    """A boolean H×W mask of stripes or checks covering the whole image, slightly rotated."""
    width, height = size
    period = max(2.0, min(width, height) * float(rng.uniform(0.12, 0.3)))
    angle = float(rng.uniform(-0.25, 0.25))  # ±14°: horizontal stays horizontal
    phase_x, phase_y = (float(v) for v in rng.uniform(0, period, size=2))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    cos, sin = math.cos(angle), math.sin(angle)
    u = xs * cos + ys * sin + phase_x  # along the rotated x axis
    v = -xs * sin + ys * cos + phase_y  # along the rotated y axis
    rows = np.floor(v / period).astype(np.int64) % 2 == 0
    cols = np.floor(u / period).astype(np.int64) % 2 == 0
    if kind == "horizontal_stripes":
        return rows
    if kind == "vertical_stripes":
        return cols
    return rows ^ cols


_SHAPES: dict[str, Callable[[ImageDraw.ImageDraw, np.random.Generator, tuple[int, int], _Colour], None]] = {
    "circle": _draw_circle,
    "square": _draw_square,
    "triangle": _draw_triangle,
    "cross": _draw_cross,
    "ring": _draw_ring,
}


def render(label: str, rng: np.random.Generator, size: tuple[int, int] = (128, 128)) -> Image.Image:
    """One random RGB image of class ``label``, ``size=(width, height)`` pixels.

    Example::

        render("checkerboard", np.random.default_rng(0), size=(64, 48)).size   # (64, 48)
    """
    if label not in CLASSES:
        raise ValueError(f"unknown demo class {label!r}; classes are {list(CLASSES)}")
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"image size must be at least 1x1, got {width}x{height}")
    background, foreground = _colours(rng)
    if label in _SHAPES:
        image = Image.new("RGB", (width, height), background)
        _SHAPES[label](ImageDraw.Draw(image), rng, (width, height), foreground)
        pixels = np.asarray(image, dtype=np.float32)
    else:
        mask = _pattern(rng, (width, height), label)
        pixels = np.where(
            mask[..., None], np.asarray(foreground, np.float32), np.asarray(background, np.float32)
        ).astype(np.float32)
    noise = float(rng.uniform(0.0, 12.0))
    if noise > 0:
        pixels = pixels + rng.normal(0.0, noise, size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def sample_images(out_dir: Path, n_per_class: int = 2, seed: int = 0, size: tuple[int, int] = (320, 240)) -> list[Path]:
    """Write ``n_per_class`` JPEGs per class named ``circle-01.jpg`` …; returns their paths.

    Example::

        sample_images(Path("build/samples"), n_per_class=1, seed=3)
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be at least 1, got {n_per_class}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for label in CLASSES:
        for i in range(1, n_per_class + 1):
            path = out_dir / f"{label}-{i:02d}.jpg"
            render(label, rng, size=size).save(path, format="JPEG", quality=90)
            paths.append(path)
    return paths
