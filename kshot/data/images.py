"""Decoding image files into the in-memory uint8 form (grayscale, ink bright, area-resampled)."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from kshot.errors import KShotError


def decode_image(
    data: bytes | str | os.PathLike,
    size: int | tuple[int, int] | None,
    invert: bool = False,
    name: str | None = None,
) -> np.ndarray:
    """Decode one image to ``uint8 [H, W]`` grayscale, resized with area (box) resampling.

    ``invert`` turns dark-ink-on-white (Omniglot's PNGs) into bright ink on 0. ``size`` is an int for
    a square image, ``(H, W)``, or ``None`` to keep the file's size. Raises :class:`KShotError`
    naming the file when it does not decode.
    """
    label = name or (str(data) if not isinstance(data, bytes) else "image")
    try:
        source = io.BytesIO(data) if isinstance(data, bytes) else data
        with Image.open(source) as image:
            gray = image.convert("L")
            if size is not None:
                height, width = (size, size) if isinstance(size, int) else size
                if gray.size != (width, height):
                    gray = gray.resize((width, height), Image.Resampling.BOX)
            pixels = np.asarray(gray, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise KShotError(f"{label} does not decode as an image ({exc}); remove or replace it") from None
    return 255 - pixels if invert else pixels.copy()
