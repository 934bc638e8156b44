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

from derm_core.errors import ImageError

MIN_SIDE = 16             # smaller than this cannot show a lesion
MAX_PIXELS = 40_000_000   # about a 50-megapixel phone photo; guards against decompression bombs
MAX_BYTES = 50 * 1024 * 1024
MAX_ASPECT = 10.0         # longer side / shorter side; beyond this it is a strip, not a lesion photo

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def _decodable_formats() -> tuple[str, ...]:
    """The Pillow format ids DermTriage decodes (by content, never by extension). Nothing else
    is reachable: no PostScript/EPS (Ghostscript subprocess, temporary files), PDF, ICO, PSD, ..."""
    names = ["JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"]
    try:
        import pillow_heif  # HEIC/HEIF, as iPhones store photos
        pillow_heif.register_heif_opener()
        names.append("HEIF")
    except Exception:  # noqa: BLE001 - optional: without it HEIC is refused with the reason
        pass
    try:
        from PIL import features
        if features.check("avif"):
            names.append("AVIF")
    except Exception:  # noqa: BLE001 - an older Pillow without AVIF support
        pass
    return tuple(names)


FORMATS = _decodable_formats()
_FORMAT_NAMES = {"WEBP": "WebP", "HEIF": "HEIC/HEIF"}
FORMATS_TEXT = ", ".join(_FORMAT_NAMES.get(f, f) for f in FORMATS)
_EXTENSIONS = {"JPEG": ("jpg", "jpeg"), "PNG": ("png",), "WEBP": ("webp",), "TIFF": ("tif", "tiff"), "BMP": ("bmp",),
               "GIF": ("gif",), "HEIF": ("heic", "heif"), "AVIF": ("avif",)}
UPLOAD_EXTENSIONS = [e for f in FORMATS for e in _EXTENSIONS[f]]   # what an upload widget accepts


_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"))
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")

# Files that are not images DermTriage reads, by their first bytes: named in the refusal, so
# "a PostScript file" is not reported as a damaged JPEG.
_FOREIGN = ((b"%!PS", "a PostScript/EPS file"), (b"\xc5\xd0\xd3\xc6", "an EPS file"), (b"%PDF", "a PDF document"),
            (b"8BPS", "a Photoshop (PSD) file"), (b"\x00\x00\x01\x00", "an icon (ICO) file"),
            (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 file"), (b"\xffO\xffQ", "a JPEG 2000 file"),
            (b"v/1\x01", "an OpenEXR file"), (b"SIMPLE  =", "a FITS file"), (b"PK\x03\x04", "a ZIP archive"),
            (b"<svg", "an SVG drawing"), (b"<?xml", "an XML/SVG file"), (b"qoif", "a QOI image"),
            (b"DDS ", "a DirectDraw texture"), (b"\x0a\x05\x01", "a PCX image"),
            (b"\xff\x0a", "a JPEG XL image"), (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "a JPEG XL image"))
_NETPBM = {b"P1": "PBM", b"P2": "PGM", b"P3": "PPM", b"P4": "PBM", b"P5": "PGM", b"P6": "PPM", b"P7": "PAM"}


def _ftyp_brand(head: bytes) -> bytes | None:
    return head[8:12] if head[4:8] == b"ftyp" else None


def _looks_like(head: bytes) -> str | None:
    """The image format whose signature ``head`` starts with, if any."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    brand = _ftyp_brand(head)
    if brand in _HEIF_BRANDS:
        return "HEIC/HEIF"
    if brand in (b"avif", b"avis"):
        return "AVIF"
    return next((name for sig, name in _SIGNATURES if head.startswith(sig)), None)


def _foreign(head: bytes) -> str | None:
    """What a file DermTriage does not read is, when its first bytes say so."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "a DICOM file (export the image as JPEG, PNG or TIFF)"
    stripped = head.lstrip()
    named = next((name for sig, name in _FOREIGN if head.startswith(sig) or stripped.startswith(sig)), None)
    if named:
        return named
    if head[:2] in _NETPBM and head[2:3].isspace():
        return f"a Netpbm ({_NETPBM[head[:2]]}) image"
    # TGA has no signature: an 18-byte header with a known image type and pixel depth
    if len(head) >= 18 and head[1] in (0, 1) and head[2] in (1, 2, 3, 9, 10, 11) and head[16] in (8, 15, 16, 24, 32):
        return "a TGA (Targa) image"
    return None


def _head(source) -> bytes:
    try:
        if isinstance(source, (str, Path)):
            with open(source, "rb") as f:
                return f.read(132)
        pos = source.tell()
        head = source.read(132)
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
            img = Image.open(source, formats=list(FORMATS))   # chosen by content among these only
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ImageError(f"the image is {w}x{h} pixels; the limit is {MAX_PIXELS / 1e6:.0f} megapixels")
            _check_shape(w, h)     # before decoding: a 2,000,000x20 strip is cheap to refuse, costly to resize
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"the image is too large to open safely: the limit is {MAX_PIXELS / 1e6:.0f} megapixels "
                         f"({e})") from None
    except UnidentifiedImageError:
        kind = _looks_like(head)
        if kind in ("HEIC/HEIF", "AVIF") and kind.split("/")[0] not in FORMATS_TEXT:
            raise ImageError(f"this file is a {kind} photo, which this installation cannot decode "
                             f"(install pillow-heif for HEIC; a newer Pillow for AVIF); it reads {FORMATS_TEXT}") from None
        if kind:  # the right signature, but Pillow could not even read the header: cut short or damaged
            raise ImageError(f"the file starts like a {kind} image but is damaged or truncated") from None
        other = _foreign(head)
        raise ImageError(f"this file is {other + ':' if other else 'not an image, or'} not a format "
                         f"DermTriage reads ({FORMATS_TEXT}); save the photo as JPEG or PNG") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"the image file is damaged or truncated ({e})") from None
    return img


def _check_shape(w: int, h: int, what: str = "the image") -> None:
    """Refuse what cannot show a lesion before any pixel is decoded or resized."""
    if min(w, h) < MIN_SIDE:
        raise ImageError(f"{what} is only {w}x{h} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed")
    ratio = max(w, h) / min(w, h)
    if ratio > MAX_ASPECT:
        raise ImageError(f"{what} is {w}x{h} pixels, a {ratio:.0f}:1 strip; photos up to {MAX_ASPECT:.0f}:1 are "
                         f"accepted: crop it around the lesion first")


def crop_photo(photo: Image.Image, box) -> Image.Image:
    """The lesion crop ``box`` = (x0, y0, x1, y1) of ``photo`` (its pixels; right and bottom
    exclusive), refused with the reason when it cannot show a lesion (too small, a strip) or
    leaves the photo: the one rule for the triage page's crop box and ``predict --crop``."""
    x0, y0, x1, y1 = (int(v) for v in box)
    w, h = photo.size
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ImageError(f"the crop {x0},{y0},{x1},{y1} is not inside the {w}x{h} photo "
                         f"(0 <= x0 < x1 <= {w}, 0 <= y0 < y1 <= {h})")
    _check_shape(x1 - x0, y1 - y0, "the crop")
    return photo.crop((x0, y0, x1, y1))


def describe_crop(box, size: tuple[int, int]) -> str:
    """A crop box in words for the case report: where it lies in the photo and how large it is."""
    x0, y0, x1, y1 = (int(v) for v in box)
    w, h = size
    if (x0, y0, x1, y1) == (0, 0, w, h):
        return f"the whole {w}x{h} photo"
    return (f"{x1 - x0}x{y1 - y0} px from ({x0}, {y0}) to ({x1}, {y1}) of the {w}x{h} photo "
            f"({(x1 - x0) * (y1 - y0) / (w * h):.0%} of its area)")


def _value_range(arr: np.ndarray, is_float: bool) -> tuple[float, float]:
    """The range that maps onto 0..255: the nominal range the values fit (0..1 and 0..255 for float
    photos, 0..255 and 0..65535 for integer ones), else the real minimum and maximum."""
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0:
        for top in ((1.0, 255.0, 65535.0) if is_float else (255.0, 65535.0)):
            if hi <= top:
                return 0.0, top
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def to_8bit(arr: np.ndarray, is_float: bool | None = None) -> np.ndarray:
    """A single-channel 16-bit, 32-bit or float array as 8 bits, scaled by its value range.

    Raises:
        ImageError: NaN or infinite pixel values.
    """
    is_float = arr.dtype.kind == "f" if is_float is None else is_float
    arr = np.asarray(arr, dtype=np.float64)
    if is_float:
        bad = ~np.isfinite(arr)
        if bad.any():
            raise ImageError(f"the image holds {int(bad.sum())} pixel value(s) that are not numbers (NaN or "
                             f"infinity): it is damaged or not a photo; export it again as 8- or 16-bit")
    if arr.size == 0:
        return arr.astype(np.uint8)
    lo, hi = _value_range(arr, is_float)
    return np.clip((arr - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)  # animated GIF/WebP: use the first frame
    icc = img.info.get("icc_profile")
    if img.mode.startswith("I") or img.mode.startswith("F"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            arr = np.asarray(img)
        is_float = img.mode.startswith("F") or arr.dtype.kind == "f"
        if img.mode.startswith("I;16") and not is_float:   # 16-bit: always on the full 16-bit scale
            arr = np.clip(arr.astype(np.float64) / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
            img = Image.fromarray(arr, "L")
        else:
            img = Image.fromarray(to_8bit(arr, is_float), "L")
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


def load_mask(path: str | Path, size: tuple[int, int]) -> tuple[np.ndarray | None, str]:
    """A dataset's lesion mask for a photo of ``size`` (W, H), through the same safe decoder.

    Returns ``(mask, "")`` with a bool (H, W) array, or ``(None, reason)`` when the mask is
    missing, unreadable, truncated, of another size or empty, so the caller falls back to
    the automatic outline and says why. Never raises for a bad mask file.
    """
    name = Path(path).name
    fallback = "the automatic lesion outline is used instead"
    try:
        img = _open(path)
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        if img.mode.startswith("I") or img.mode.startswith("F"):
            grey = to_8bit(np.asarray(img))
        else:
            grey = np.asarray(img.convert("L"))
    except ImageError as e:
        return None, f"the dataset's lesion mask {name} cannot be read ({e}); {fallback}"
    if (grey.shape[1], grey.shape[0]) != tuple(size):
        return None, (f"the dataset's lesion mask {name} is {grey.shape[1]}x{grey.shape[0]} pixels but the photo is "
                      f"{size[0]}x{size[1]}; {fallback}")
    mask = grey > 127
    if not mask.any():
        return None, f"the dataset's lesion mask {name} is empty; {fallback}"
    return mask, ""


def is_flat(img: Image.Image, spread: float = 2.0) -> bool:
    """True for an (almost) one-colour photo: every channel's standard deviation under ``spread``
    grey levels. Such a photo shows no lesion and carries nothing to explain."""
    small = img.convert("RGB")
    if max(small.size) > 256:   # a cheap look: a 12 MP photo need not be copied as floats
        f = 256 / max(small.size)
        small = small.resize((max(1, round(small.width * f)), max(1, round(small.height * f))), Image.NEAREST)
    arr = np.asarray(small, dtype=np.float32)
    return bool(arr.reshape(-1, 3).std(0).max() < spread)


def strip_metadata(img: Image.Image) -> Image.Image:
    """A copy with pixels only: no EXIF, GPS or other metadata travels with it."""
    clean = Image.new(img.mode, img.size)
    clean.putdata(list(img.getdata())) if img.mode == "P" else clean.paste(img)
    return clean


def data_uri(img: Image.Image, max_width: int | None = None, fmt: str = "PNG") -> str:
    """The image as a ``data:`` URI, pixels only (no EXIF or GPS), at most ``max_width`` px wide.

    The case report embeds its images so; the pages pass it to ``st.image``, which then sends
    the picture with the page instead of through Streamlit's media server, whose files a rerun
    interrupted early deletes while the browser may still fetch them (an "Image source error")."""
    import base64

    img = img.convert("RGB")
    if max_width and img.width > max_width:
        img = img.resize((max_width, max(1, round(img.height * max_width / img.width))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    strip_metadata(img).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"
