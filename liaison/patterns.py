"""Generated pattern images for tests and the demo: synthetic, deterministic, text-free.

``pattern(seed)`` draws layered gradients, stripes and shapes chosen by the
seed, so different seeds give unrelated pictures (PDQ distance ~128) and the
same seed gives the same pixels on every run with the same Pillow.
``variant(image, kind)`` makes the near-duplicates PDQ is built to catch.

Which variants PDQ matches (distance ≤ 31):

* ``resize`` (to 60%), ``jpeg`` (re-encoded at quality 70), ``crop`` (a 1%
  border off each side), ``brightness`` (+20%), ``grayscale``: yes.
* ``flip`` (left-right mirror): no. PDQ is not flip- or rotation-invariant;
  matching mirrored copies needs the dihedral hashes, which Liaison does not
  compute.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

KINDS = ("resize", "jpeg", "crop", "brightness", "grayscale", "flip")
MATCHING_KINDS = ("resize", "jpeg", "crop", "brightness", "grayscale")
"""The variants whose PDQ hash stays within the match distance of the original."""

JPEG_QUALITY = 70
RESIZE_FACTOR = 0.6
CROP_FRACTION = 0.01
BRIGHTNESS_FACTOR = 1.2
MIN_GRADIENT_LUMA = 96

RGB = tuple[int, int, int]


def _colour(rng: random.Random) -> RGB:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def _luma(c: RGB) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _gradient(rng: random.Random, width: int, height: int) -> Image.Image:
    """A linear gradient between two colours, at an angle chosen by ``rng``."""
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    t = xs / max(width - 1, 1) * math.cos(angle) + ys / max(height - 1, 1) * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    # Two colours far apart in brightness: PDQ's quality score counts gradients.
    start, end = _colour(rng), _colour(rng)
    while abs(_luma(start) - _luma(end)) < MIN_GRADIENT_LUMA:
        start, end = _colour(rng), _colour(rng)
    a = np.array(start, dtype=np.float32)
    b = np.array(end, dtype=np.float32)
    pixels = a + (b - a) * t[..., None]
    return Image.fromarray(pixels.round().astype(np.uint8), "RGB")


def _stripes(rng: random.Random, draw: ImageDraw.ImageDraw, width: int, height: int) -> None:
    period = rng.randrange(max(width // 12, 8), max(width // 4, 16))
    thickness = max(2, period // rng.randrange(2, 5))
    colour = _colour(rng)
    if rng.random() < 0.5:
        for x in range(rng.randrange(period), width, period):
            draw.rectangle([x, 0, x + thickness, height], fill=colour)
    else:
        for y in range(rng.randrange(period), height, period):
            draw.rectangle([0, y, width, y + thickness], fill=colour)


def _shape(rng: random.Random, draw: ImageDraw.ImageDraw, width: int, height: int) -> None:
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    r = rng.uniform(0.06, 0.3) * min(width, height)
    colour = _colour(rng)
    kind = rng.randrange(3)
    if kind == 0:
        draw.ellipse([cx - r, cy - r * rng.uniform(0.5, 1.5), cx + r, cy + r], fill=colour)
    elif kind == 1:
        draw.rectangle([cx - r, cy - r * rng.uniform(0.3, 1.0), cx + r, cy + r], fill=colour)
    else:
        sides = rng.randrange(3, 8)
        turn = rng.uniform(0, 2 * math.pi)
        points = [
            (cx + r * math.cos(turn + 2 * math.pi * k / sides),
             cy + r * math.sin(turn + 2 * math.pi * k / sides))
            for k in range(sides)
        ]  # fmt: skip
        draw.polygon(points, fill=colour)


def pattern(seed: int, size: tuple[int, int] = (512, 512)) -> Image.Image:
    """A deterministic RGB picture of gradients, stripes and shapes, distinct per seed."""
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive, got {size}")
    rng = random.Random(seed)
    image = _gradient(rng, width, height)
    draw = ImageDraw.Draw(image)
    _stripes(rng, draw, width, height)
    for _ in range(rng.randrange(6, 12)):
        _shape(rng, draw, width, height)
    return image


def _jpeg_bytes(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


def variant(image: Image.Image, kind: str) -> Image.Image:
    """A near-duplicate of ``image``; see the module docstring for which ones PDQ matches."""
    width, height = image.size
    if kind == "resize":
        new_size = (max(1, round(width * RESIZE_FACTOR)), max(1, round(height * RESIZE_FACTOR)))
        return image.resize(new_size, Image.Resampling.LANCZOS)
    if kind == "jpeg":
        with Image.open(io.BytesIO(_jpeg_bytes(image))) as decoded:
            return decoded.convert("RGB")
    if kind == "crop":
        dx, dy = round(width * CROP_FRACTION), round(height * CROP_FRACTION)
        return image.crop((dx, dy, width - dx, height - dy))
    if kind == "brightness":
        return ImageEnhance.Brightness(image).enhance(BRIGHTNESS_FACTOR)
    if kind == "grayscale":
        return ImageOps.grayscale(image).convert("RGB")
    if kind == "flip":
        return ImageOps.mirror(image)
    raise ValueError(f"unknown variant {kind!r}; expected one of {', '.join(KINDS)}")


def write_series(folder: Path, seed: int, kinds: Sequence[str] = MATCHING_KINDS) -> list[Path]:
    """Write ``pattern(seed)`` and its variants into ``folder``; the original comes first.

    Files are ``pattern-SEED-original.png`` and ``pattern-SEED-KIND.png``,
    except the ``jpeg`` variant, which is the re-encoded JPEG file itself.
    """
    folder.mkdir(parents=True, exist_ok=True)
    original = pattern(seed)
    stem = f"pattern-{seed:04d}"
    path = folder / f"{stem}-original.png"
    original.save(path, format="PNG")
    written = [path]
    for kind in kinds:
        if kind == "jpeg":
            path = folder / f"{stem}-jpeg.jpg"
            path.write_bytes(_jpeg_bytes(original))
        else:
            path = folder / f"{stem}-{kind}.png"
            variant(original, kind).save(path, format="PNG")
        written.append(path)
    return written
