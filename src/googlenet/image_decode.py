"""The one way an image file becomes pixels: header first, a pixel limit, and only decoders that fail safely.

Every path that decodes an image (predict, eval, features, training workers, device decoding, prepare) calls
:func:`decode_rgb_bytes` or :func:`check_header`, so one malformed or hostile file costs one warning, never
the process:

- The header is read first (Pillow reads only the header on ``open``) and an image with more pixels than the
  limit is refused by name before any pixel memory is allocated: a 633-byte JPEG can declare 30000 x 30000
  pixels (2.7 GB decoded). The limit defaults to Pillow's own, 89.5 megapixels, and ``GOOGLENET_MAX_PIXELS``
  changes it (loader workers inherit the environment).
- JPEG goes to torchvision's libjpeg-turbo decoder (about 2x Pillow per core; it reports corrupt data as an
  error). Every other format goes to Pillow: torchvision's PNG decoder takes the whole process down with a
  segmentation fault on a PNG whose image data is shorter than its header declares, where Pillow decodes
  what is there.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as TF

# Pillow's Image.MAX_IMAGE_PIXELS: 1024 * 1024 * 1024 // 4 // 3.
DEFAULT_MAX_PIXELS = 89_478_485
MAX_PIXELS_ENV = "GOOGLENET_MAX_PIXELS"


class ImageRefused(ValueError):
    """An image file that is not decoded: unreadable, not an image, or over the pixel limit. Names the file."""


def max_pixels() -> int:
    """The pixel limit: ``GOOGLENET_MAX_PIXELS`` where set to a positive whole number, else Pillow's default."""
    raw = os.environ.get(MAX_PIXELS_ENV, "")
    if not raw:
        return DEFAULT_MAX_PIXELS
    if not raw.isdigit() or int(raw) < 1:
        raise ImageRefused(f"{MAX_PIXELS_ENV}={raw!r} is not a positive whole number of pixels")
    return int(raw)


def check_header(data: bytes, name: str) -> str:
    """The image's format (Pillow's name, e.g. ``JPEG``) after checking its declared size against the limit.

    Raises:
        ImageRefused: empty, not an image Pillow knows, or more pixels than :func:`max_pixels`.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageRefused(f"{name}: empty file")
    limit = max_pixels()
    try:
        with _our_limit_not_pillows(), Image.open(io.BytesIO(data)) as im:
            fmt, (width, height) = im.format or "", im.size
    except UnidentifiedImageError:  # Pillow's message names only its in-memory buffer
        raise ImageRefused(f"{name}: not a decodable image (no image format recognised)") from None
    except Exception as e:
        raise ImageRefused(f"{name}: not a decodable image ({type(e).__name__}: {e})") from None
    if width * height > limit:
        raise ImageRefused(
            f"{name}: declares {width} x {height} = {width * height:,} pixels, over the limit of {limit:,} "
            f"(set {MAX_PIXELS_ENV} to allow more)"
        )
    return fmt


@contextlib.contextmanager
def _our_limit_not_pillows() -> Iterator[None]:
    """Pillow's own bomb check (a warning over its limit, an error over twice that) off for a block: the
    check above is the one that counts, with its own message and setting."""
    from PIL import Image

    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def decode_rgb(path: str | Path) -> Tensor:
    """Decode an image file to uint8 RGB [3, H, W], whatever its extension says.

    Raises:
        ImageRefused: the file cannot be read or holds no image within the limits (the message names it).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ImageRefused(f"{path}: unreadable ({e.strerror or e})") from None
    return decode_rgb_bytes(data, str(path))


def decode_rgb_bytes(data: bytes, name: str) -> Tensor:
    """:func:`decode_rgb` for the file's bytes; ``name`` is used in the error message."""
    fmt = check_header(data, name)
    if fmt == "JPEG":
        try:
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except (RuntimeError, ValueError):
            pass  # CMYK and some progressive or truncated files: Pillow recovers them below
    try:
        return _decode_with_pil(data)
    except Exception as e:
        raise ImageRefused(f"{name}: not a decodable image ({type(e).__name__}: {e})") from None


def _decode_with_pil(data: bytes) -> Tensor:
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = True  # decode what is there of a truncated file
    with _our_limit_not_pillows(), warnings.catch_warnings(), Image.open(io.BytesIO(data)) as im:
        warnings.simplefilter("ignore")
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            return _sixteen_bit_grey_to_rgb(im)
        rgb = im.convert("RGB")
    return TF.pil_to_tensor(rgb)


def _sixteen_bit_grey_to_rgb(im) -> Tensor:
    """16-bit grey (PNG, TIFF) scaled to 8 bits; Pillow's convert("RGB") would clip everything above 255."""
    import numpy as np

    grey = np.asarray(im, dtype=np.int64)
    top = 65535 if im.mode.startswith("I;16") or grey.max(initial=0) > 255 else 255
    scaled = torch.from_numpy(np.clip(grey * 255 // top, 0, 255).astype(np.uint8))
    return scaled.unsqueeze(0).expand(3, -1, -1).contiguous()
