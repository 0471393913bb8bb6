"""Decode, colour-convert, centre-crop and resize one source image for a data set, reporting problems."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

# PIL's own threshold (~89 Mpx): far above any photo; guards against decompression bombs.
DEFAULT_MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)
Colour = Tuple[int, int, int]


@dataclass
class ProcessOptions:
    """How source images become square RGB data-set images."""

    resolution: int
    upscale: bool = True            # images smaller than `resolution`: upscale (True) or skip (False)
    background: Colour = (255, 255, 255)  # what transparent pixels are composited onto
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass
class ProcessResult:
    """Outcome for one file: the image (None when skipped) and the problems met."""

    image: Optional[np.ndarray]          # [R, R, 3] uint8, or None when skipped
    issues: List[Tuple[str, str]] = field(default_factory=list)  # (reason, action) pairs

    @property
    def skipped(self) -> bool:
        return self.image is None


class SkipImage(Exception):
    """Raised inside processing when a file cannot become a data-set image."""


def parse_colour(text: str) -> Colour:
    """'white', 'black', 'gray', '#rrggbb' or 'r,g,b' -> (r, g, b)."""
    named = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128), "grey": (128, 128, 128)}
    t = text.strip().lower()
    if t in named:
        return named[t]
    try:
        if t.startswith("#") and len(t) == 7:
            return tuple(int(t[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        parts = [int(p) for p in t.split(",")]
        if len(parts) == 3 and all(0 <= p <= 255 for p in parts):
            return tuple(parts)  # type: ignore[return-value]
    except ValueError:
        pass
    raise ValueError(f"background colour '{text}': use a name (white, black, gray), #rrggbb or r,g,b")


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open and fully decode, refusing bombs from the header alone (before decoding pixels)."""
    if not data:
        raise SkipImage("empty file")
    with warnings.catch_warnings():
        # Our header check below is the guard that counts (limit = max_pixels); PIL's warning would
        # only duplicate it, and PIL's hard error (2x its limit) is still caught.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise SkipImage(f"too many pixels ({w}x{h} > {max_pixels}; decompression-bomb guard)")
            img.load()
        except Image.DecompressionBombError as e:
            raise SkipImage(f"decompression-bomb guard: {e}") from None
        except UnidentifiedImageError:
            raise SkipImage("not an image (unrecognised format)") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise SkipImage(f"unreadable or truncated image: {e}") from None
    return img


def _apply_exif_orientation(img: Image.Image, issues: List[Tuple[str, str]]) -> Image.Image:
    """Camera photos store their rotation in EXIF; apply it (a broken EXIF block is only noted)."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as e:  # malformed EXIF is common and harmless for the pixels
        issues.append((f"malformed EXIF ({type(e).__name__})", "orientation ignored"))
        return img


def _to_srgb(img: Image.Image, issues: List[Tuple[str, str]]) -> Image.Image:
    """Convert pixels with an embedded non-sRGB ICC profile to sRGB (photos from cameras/Adobe RGB)."""
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in ("RGB", "RGBA", "CMYK"):
        return img
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        desc = (ImageCms.getProfileDescription(src) or "").lower()
        if "srgb" in desc:
            return img
        out_mode = "RGBA" if img.mode == "RGBA" else "RGB"
        img = ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode=out_mode)
        issues.append((f"ICC profile '{desc.strip()}'", "converted to sRGB"))
    except (ImageCms.PyCMSError, OSError, ValueError):
        issues.append(("unreadable ICC profile", "ignored (pixels used as sRGB)"))
    return img


def _high_bit_to_8(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale -> 8-bit L by scaling (PIL's convert would clip)."""
    arr = np.asarray(img)
    if img.mode == "F":
        arr8 = np.clip(arr * 255.0, 0, 255)
    else:
        # I;16 and 16-bit PNGs opened as 'I' hold 0..65535.
        arr8 = np.clip(arr.astype(np.float64) / 257.0, 0, 255)
    return Image.fromarray(np.round(arr8).astype(np.uint8))


def to_rgb(img: Image.Image, background: Colour, issues: List[Tuple[str, str]]) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited onto `background`. Notes each conversion."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        issues.append((f"{mode} high-bit-depth image", "scaled to 8-bit grayscale, then RGB"))
        return _high_bit_to_8(img).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info) \
        or (mode in ("L", "RGB") and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        issues.append((f"{mode} image with transparency", f"composited on background {tuple(background)}"))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if mode == "CMYK":
        issues.append(("CMYK image", "converted to RGB"))
    elif mode in ("L", "1", "P"):
        issues.append((f"{'grayscale' if mode != 'P' else 'palette'} image ({mode})", "converted to RGB"))
    else:
        issues.append((f"{mode} image", "converted to RGB"))
    return img.convert("RGB")


def centre_crop_resize(img: Image.Image, opts: ProcessOptions, issues: List[Tuple[str, str]]) -> Image.Image:
    """Largest centred square, then resize to the target with an antialiasing filter."""
    w, h = img.size
    s = min(w, h)
    if s < opts.resolution:
        if not opts.upscale:
            raise SkipImage(f"smaller than the target ({w}x{h} < {opts.resolution})")
        issues.append((f"smaller than the target ({w}x{h} < {opts.resolution})", "upscaled"))
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s))
    if s != opts.resolution:
        # LANCZOS in PIL scales its support with the reduction factor, so it antialiases when shrinking;
        # reducing_gap first box-reduces huge images by an integer factor (fast, and still exact enough).
        img = img.resize((opts.resolution, opts.resolution), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return img


def process_image(data: bytes, opts: ProcessOptions) -> ProcessResult:
    """Bytes of a source file -> square RGB uint8 array at opts.resolution, or a skip with its reason."""
    issues: List[Tuple[str, str]] = []
    try:
        img = _open_checked(data, opts.max_pixels)
        img = _apply_exif_orientation(img, issues)
        img = _to_srgb(img, issues)
        img = to_rgb(img, opts.background, issues)
        img = centre_crop_resize(img, opts, issues)
        arr = np.asarray(img, dtype=np.uint8)
    except SkipImage as e:
        issues.append((str(e), "skipped"))
        return ProcessResult(None, issues)
    except Exception as e:  # a decoder bug on one odd file must not end a long run
        issues.append((f"failed to process: {type(e).__name__}: {e}", "skipped"))
        return ProcessResult(None, issues)
    return ProcessResult(arr, issues)


def encode_png(image: np.ndarray, compress_level: int = 6) -> bytes:
    """[H, W, 3] uint8 -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def load_and_encode(path_or_bytes: Union[str, bytes], opts: ProcessOptions) -> Tuple[Optional[bytes], List[Tuple[str, str]]]:
    """Read a file (or take bytes), process it and return (PNG bytes or None, issues). Worker entry point."""
    if isinstance(path_or_bytes, bytes):
        data = path_or_bytes
    else:
        try:
            with open(path_or_bytes, "rb") as f:
                data = f.read()
        except OSError as e:
            return None, [(f"cannot read file: {e}", "skipped")]
    res = process_image(data, opts)
    return (None if res.image is None else encode_png(res.image)), res.issues
