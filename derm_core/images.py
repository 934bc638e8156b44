"""Safe image decoding for user photos and dataset files.

Every photo goes through :func:`load_image`, which turns whatever a phone, scanner or
screenshot produced into an upright 8-bit RGB image or raises :class:`ImageError` with a
message a clinician can act on. It never writes anything to disk.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

MIN_SIDE = 16             # smaller than this cannot show a lesion
MAX_PIXELS = 40_000_000   # about a 50-megapixel phone photo; guards against decompression bombs
MAX_BYTES = 50 * 1024 * 1024

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageError(ValueError):
    """A photo that cannot be used, with a human-readable reason."""


_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"))


def _looks_like(head: bytes) -> str | None:
    """The image format whose signature ``head`` starts with, if any."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for sig, name in _SIGNATURES if head.startswith(sig)), None)


def _head(source) -> bytes:
    try:
        if isinstance(source, (str, Path)):
            with open(source, "rb") as f:
                return f.read(16)
        pos = source.tell()
        head = source.read(16)
        source.seek(pos)
        return head if isinstance(head, bytes) else b""
    except (OSError, AttributeError, ValueError):
        return b""


def _open(source) -> Image.Image:
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise ImageError("the file is empty (0 bytes)")
        if len(source) > MAX_BYTES:
            raise ImageError(f"the file is {len(source) / 2**20:.0f} MB; the limit is {MAX_BYTES // 2**20} MB")
        source = io.BytesIO(source)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"image file not found: {path}")
        if path.stat().st_size == 0:
            raise ImageError(f"the file is empty (0 bytes): {path}")
    head = _head(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(source)
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ImageError(f"the image is {w}x{h} pixels; the limit is {MAX_PIXELS / 1e6:.0f} megapixels")
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"the image is too large to open safely: the limit is {MAX_PIXELS / 1e6:.0f} megapixels "
                         f"({e})") from None
    except UnidentifiedImageError:
        kind = _looks_like(head)
        if kind:  # the right signature, but Pillow could not even read the header: cut short or damaged
            raise ImageError(f"the file starts like a {kind} image but is damaged or truncated") from None
        raise ImageError("this file is not an image format DermTriage can read (JPEG, PNG, WebP, TIFF, BMP, GIF)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"the image file is damaged or truncated ({e})") from None
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)  # animated GIF/WebP: use the first frame
    icc = img.info.get("icc_profile")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        img = background
    if icc and img.mode in ("RGB", "CMYK"):
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            img = ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):
            pass  # a broken profile should not make the photo unusable
    return img.convert("RGB")


def load_image(source: str | Path | bytes | BinaryIO) -> Image.Image:
    """Decode ``source`` into an upright 8-bit RGB PIL image.

    Applies EXIF orientation, converts colour profiles to sRGB, flattens alpha onto white,
    takes the first frame of animations and scales 16-bit images to 8 bits.

    Raises:
        ImageError: empty, non-image, truncated, too small or too large input.
    """
    img = _open(source)
    try:
        img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError):
        pass  # unreadable EXIF: keep the pixels as stored
    img = _to_rgb(img)
    w, h = img.size
    if min(w, h) < MIN_SIDE:
        raise ImageError(f"the image is only {w}x{h} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed")
    return img


def strip_metadata(img: Image.Image) -> Image.Image:
    """A copy with pixels only: no EXIF, GPS or other metadata travels with it."""
    clean = Image.new(img.mode, img.size)
    clean.putdata(list(img.getdata())) if img.mode == "P" else clean.paste(img)
    return clean
