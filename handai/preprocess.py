"""Image bytes -> the model's 1x1x28x28 input, the MNIST way.

decode -> auto-invert -> Otsu -> keep the digit's ink -> deskew -> fit 20x20 -> centre of mass
in 28x28 -> normalize. Training runs MNIST through the same `prepare_pixels`, so served and
training inputs match; any change here must bump SIGNATURE so old models are refused at load.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from handai.errors import HandaiError

SIGNATURE = "handai-pre-v1:otsu|cc8|deskew10|fit20|com28|mnist-norm"
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
BACKGROUND = (0.0 - MNIST_MEAN) / MNIST_STD  # a normalized empty pixel

FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP"})
MIN_SIDE = 8
WORK_SIDE = 256  # sides above this are reduced first: 28x28 output needs no more detail
MIN_CONTRAST = 32  # grey levels between ink and paper; less is a blank or uniform image
MAX_INK_FRACTION = 0.6  # more "ink" than paper is not a digit on a background
MAX_DESKEW_DEG = 10.0
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Preprocessed:
    pixels: NDArray[np.float32]  # 1x1x28x28, normalized, light ink on dark
    preview: NDArray[np.uint8]  # 28x28, what the model sees, 0-255
    inverted: bool  # the upload was light ink on dark and was inverted
    deskew_deg: float  # 0.0 when skipped


# One slot of a batch: the image ready for the model, or why it could not be.
Prepared = Preprocessed | HandaiError


def preprocess(data: bytes, *, max_side: int = 1024, invert: bool | None = None) -> Preprocessed:
    """The whole read path's image step. Raises HandaiError, never anything else."""
    gray = decode(data, max_side=max_side)
    if invert is None:
        invert = _dark_background(gray)
    if invert:
        gray = 255 - gray
    ink, deskew_deg = prepare_pixels(gray)
    return Preprocessed(
        pixels=normalize(ink)[None, None],
        preview=np.round(ink * 255.0).astype(np.uint8),
        inverted=invert,
        deskew_deg=deskew_deg,
    )


def decode(data: bytes, *, max_side: int) -> NDArray[np.uint8]:
    """Bytes -> 2-D grayscale uint8, dark ink on light paper as uploaded (not yet inverted)."""
    if not data:
        raise HandaiError("invalid_image", "expected image bytes, got an empty upload")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format or "unknown"
            if fmt not in FORMATS:
                raise HandaiError(
                    "unsupported_media_type",
                    f"expected PNG, JPEG, WebP, GIF or BMP, got {fmt}",
                )
            _check_size(img.size, max_side)
            if fmt == "JPEG":
                # Let libjpeg decode at 1/2..1/8 scale: most of the 20 ms budget on photos.
                img.draft("L", (WORK_SIDE, WORK_SIDE))
            img.load()
            gray = _to_gray(ImageOps.exif_transpose(img))
    except HandaiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise HandaiError("too_large", "image has too many pixels (decompression bomb)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise HandaiError("invalid_image", f"could not decode the image: {exc}") from None
    return _reduce(gray)


def _check_size(size: tuple[int, int], max_side: int) -> None:
    w, h = size
    if w * h > max_side * max_side:
        raise HandaiError(
            "too_large", f"expected at most {max_side * max_side} pixels, got {w}x{h}"
        )
    if max(w, h) > max_side or min(w, h) < MIN_SIDE:
        raise HandaiError(
            "bad_dimensions",
            f"expected sides between {MIN_SIDE} and {max_side} px, got {w}x{h}",
        )


def _to_gray(img: Image.Image) -> NDArray[np.uint8]:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        wide = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I") and wide.max() > 255 else 255.0
        scaled: NDArray[np.uint8] = np.clip(wide * (255.0 / top), 0, 255).astype(np.uint8)
        return scaled
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(paper, rgba)
    if img.mode == "CMYK":
        img = img.convert("RGB")
    return np.asarray(img.convert("L"), dtype=np.uint8)


def _reduce(gray: NDArray[np.uint8]) -> NDArray[np.uint8]:
    side = max(gray.shape)
    if side <= WORK_SIDE:
        return gray
    factor = math.ceil(side / WORK_SIDE)
    small = Image.fromarray(gray).reduce(factor)  # box filter: keeps thin strokes as grey
    reduced: NDArray[np.uint8] = np.asarray(small, dtype=np.uint8)
    return reduced


def _dark_background(gray: NDArray[np.uint8]) -> bool:
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return float(np.median(border)) < 128.0


def otsu(gray: NDArray[np.uint8]) -> int:
    """Otsu's threshold: the level that maximizes between-class variance."""
    hist = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    weight = np.cumsum(hist)
    mass = np.cumsum(hist * np.arange(256))
    total_w, total_m = weight[-1], mass[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_lo = mass / weight
        mean_hi = (total_m - mass) / (total_w - weight)
        between = weight * (total_w - weight) * (mean_lo - mean_hi) ** 2
    return int(np.nanargmax(np.where(np.isfinite(between), between, -1.0)))


def prepare_pixels(gray: NDArray[np.uint8]) -> tuple[NDArray[np.float32], float]:
    """Dark-on-light grayscale -> 28x28 ink intensities in [0, 1] (1 = ink), and the deskew."""
    lo, hi = int(gray.min()), int(gray.max())
    if hi - lo < MIN_CONTRAST:
        raise HandaiError("preprocessing_failed", "no ink found: the image is blank or uniform")
    level = otsu(gray)
    mask = gray <= level
    if mask.mean() > MAX_INK_FRACTION:
        raise HandaiError(
            "preprocessing_failed",
            f"expected dark ink on a light background, got {mask.mean():.0%} ink",
        )
    keep = keep_digit(mask)
    paper = float(np.median(gray[~mask]))
    ink_level = float(np.percentile(gray[mask], 10))
    strength = np.clip((paper - gray.astype(np.float32)) / max(paper - ink_level, 1.0), 0.0, 1.0)
    # Anti-aliased edges sit just outside the Otsu mask: keep a one-pixel rim around kept ink.
    strength *= ndimage.binary_dilation(keep, structure=_EIGHT)
    rows, cols = np.nonzero(strength > 0.0)
    crop = strength[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    crop, angle = deskew(crop)
    return place(fit(crop)), angle


def keep_digit(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The largest 8-connected ink component plus the strokes that belong with it.

    A second stroke stays when it is big (the two halves of a 4) or near the main
    body and not a speck (the bar of a 5); dots and specks far away go.
    """
    labels, _count = ndimage.label(mask, structure=_EIGHT)
    sizes = np.bincount(labels.ravel())[1:]
    main = int(np.argmax(sizes))
    boxes = ndimage.find_objects(labels)
    main_box = boxes[main]
    assert main_box is not None
    reach = 0.3 * max(main_box[0].stop - main_box[0].start, main_box[1].stop - main_box[1].start)
    largest = float(sizes[main])
    kept = [main + 1]
    for index, (size, box) in enumerate(zip(sizes, boxes, strict=True)):
        if index == main or box is None:
            continue
        if size >= 0.25 * largest or (size >= 0.04 * largest and _gap(main_box, box) <= reach):
            kept.append(index + 1)
    return np.isin(labels, kept)


def _gap(a: tuple[slice, ...], b: tuple[slice, ...]) -> float:
    dy = max(0, a[0].start - b[0].stop, b[0].start - a[0].stop)
    dx = max(0, a[1].start - b[1].stop, b[1].start - a[1].stop)
    return math.hypot(dy, dx)


def deskew(ink: NDArray[np.float32]) -> tuple[NDArray[np.float32], float]:
    """Undo slant with a horizontal shear from second moments, capped at +-10 degrees."""
    total = float(ink.sum())
    if total <= 0.0 or min(ink.shape) < 2:
        return ink, 0.0
    ys, xs = np.indices(ink.shape, dtype=np.float64)
    cy, cx = float((ys * ink).sum() / total), float((xs * ink).sum() / total)
    mu02 = float(((ys - cy) ** 2 * ink).sum() / total)
    mu20 = float(((xs - cx) ** 2 * ink).sum() / total)
    mu11 = float(((ys - cy) * (xs - cx) * ink).sum() / total)
    # A short or round blob has no meaningful slant: leave it alone.
    if mu02 < 4.0 or mu02 < 1.2 * mu20:
        return ink, 0.0
    angle = math.degrees(math.atan(mu11 / mu02))
    angle = max(-MAX_DESKEW_DEG, min(MAX_DESKEW_DEG, angle))
    if abs(angle) < 0.5:
        return ink, 0.0
    skew = math.tan(math.radians(angle))
    pad = math.ceil(abs(skew) * ink.shape[0] / 2) + 1
    padded = np.pad(ink, ((0, 0), (pad, pad)))
    # output (y, x) samples input (y, x + skew * (y - cy)): rows slide back over the centroid.
    matrix = np.array([[1.0, 0.0], [skew, 1.0]])
    offset = np.array([0.0, -skew * cy])
    sheared = ndimage.affine_transform(padded, matrix, offset=offset, order=1, mode="constant")
    sheared = sheared.astype(np.float32)
    cols = np.nonzero(sheared.max(axis=0) > 0.02)[0]
    if cols.size == 0:
        return ink, 0.0
    return sheared[:, cols.min() : cols.max() + 1], angle


def fit(ink: NDArray[np.float32], box: int = 20) -> NDArray[np.float32]:
    """Scale so the longer side is `box` pixels, keeping the aspect ratio."""
    h, w = ink.shape
    scale = box / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = Image.fromarray(ink.astype(np.float32))
    out = np.asarray(img.resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def place(patch: NDArray[np.float32], side: int = 28) -> NDArray[np.float32]:
    """Put the patch in a side x side canvas with its centre of mass at the centre."""
    h, w = patch.shape
    cy, cx = ndimage.center_of_mass(patch)
    if not (math.isfinite(cy) and math.isfinite(cx)):
        cy, cx = (h - 1) / 2, (w - 1) / 2
    top = min(max(round((side - 1) / 2 - cy), 0), side - h)
    left = min(max(round((side - 1) / 2 - cx), 0), side - w)
    canvas = np.zeros((side, side), dtype=np.float32)
    canvas[top : top + h, left : left + w] = patch
    return canvas


def normalize(ink: NDArray[np.float32]) -> NDArray[np.float32]:
    return ((ink - MNIST_MEAN) / MNIST_STD).astype(np.float32)
