"""Image bytes -> the model's 1x1x28x28 input, the MNIST way, from scans and phone photos alike.

decode -> polarity -> ink strength -> keep the digit's ink -> deskew -> fit 20x20 -> centre of
mass in 28x28 -> normalize. Ink strength has two paths: small images (scans, MNIST itself) use a
global Otsu split of a flat background; larger ones (photos, screenshots) divide out a
background estimate first, so shadows and light falloff are not ink, drop ruled and grid
lines that are fainter than the ink, and set aside pieces with soft outlines (what the
background estimate leaves of a hard shadow's curved edge). Training runs MNIST through the
same `prepare_pixels`, so served and training inputs match; any change to what MNIST goes
through (the scan path) must bump SIGNATURE so old models are refused at load. Polarity and
the photo path are never reached by MNIST's 28x28 images: they may change under the same
SIGNATURE when `train.data.preprocess_mnist` still gives byte-identical training images.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from handai.errors import HandaiError

SIGNATURE = "handai-pre-v2:border|otsu64|close3or8|lines|cc8|deskew10|fit20|com28|norm"
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
BACKGROUND = (0.0 - MNIST_MEAN) / MNIST_STD  # a normalized empty pixel

# MPO is what Pillow calls the JPEGs many phones write (a main image plus a preview).
FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP"})
MIN_SIDE = 8
WORK_SIDE = 256  # sides above this are reduced first: 28x28 output needs no more detail
SCAN_SIDE = 64  # at most this: a scan or an MNIST-style image, with a flat background
MIN_CONTRAST = 32  # grey levels between ink and paper; less is a blank or uniform image
FAINT = 0.05  # photos: ink weaker than 5 % of the digit's own is left out of its box
EVEN_SPREAD = 12  # grey levels the paper may vary by and still be evenly lit
DARK_BULK = 80  # a median level below this: the bulk of the image is dark (a shadowed page
# of pencil sits at 90-110; a dark-mode screen or a board well below)
# A crop filled by its digit: each of its two tones covers at least CROP_TONE of it, they
# span SCAN_RANGE grey levels or more (2nd to 98th percentile), and the dark tone is at most
# TONE_RATIO of the light one (ink on paper; a shadow on paper is lighter than that).
CROP_TONE = 0.2
SCAN_RANGE = 180
TONE_RATIO = 0.3
MIN_STRENGTH = 0.10  # photos: ink darkens the paper by at least 10 %; less is blank
MAX_INK_FRACTION = 0.7  # far more "ink" than paper is not a digit on a background (a tight
# crop of a 1 can be two-thirds ink)
LINE_FAINTNESS = 0.7  # a long straight stroke fainter than this share of the ink is a ruled line
LINE_BAND = 7  # pixels across a ruled line searched for it (it may tilt); the line is thinner
MAX_DESKEW_DEG = 10.0
SOFT_EDGE = 0.12  # outline slope per unit of darkness below which a piece is a shadow's edge
MIN_PIECE = 0.002  # share of the image: smaller ink pieces are specks, too few pixels to judge
MAX_FLOOR = 0.6  # the paper's grain never hides more than this share of the ink's darkness
SAME_PEN = 1.6  # strokes of one digit differ in darkness by less than this factor
MAX_LIKE_PIECES = 8  # more ink pieces as big as half the largest: a pattern, not one digit
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Preprocessed:
    pixels: NDArray[np.float32]  # 1x1x28x28, normalized, light ink on dark
    preview: NDArray[np.uint8]  # 28x28, what the model sees, 0-255
    inverted: bool  # the upload was light ink on dark and was inverted
    deskew_deg: float  # 0.0 when skipped
    # What else says which digit this is (a half of touching digits: the pair's shape,
    # handai.shapes.pairs), multiplied into the model's probabilities; None: nothing else.
    prior: tuple[float, ...] | None = None


# One slot of a batch: the image ready for the model, or why it could not be.
Prepared = Preprocessed | HandaiError


def preprocess(data: bytes, *, max_side: int = 1024, invert: bool | None = None) -> Preprocessed:
    """The whole read path's image step. Raises HandaiError, never anything else."""
    gray = decode(data, max_side=max_side)
    if invert is None:
        invert = dark_background(gray)
    if invert:
        gray = 255 - gray
    ink, deskew_deg = prepare_pixels(gray)
    return Preprocessed(
        pixels=normalize(ink)[None, None],
        preview=np.round(ink * 255.0).astype(np.uint8),
        inverted=invert,
        deskew_deg=deskew_deg,
    )


def decode(data: bytes, *, max_side: int, work_side: int = WORK_SIDE) -> NDArray[np.uint8]:
    """Bytes -> 2-D grayscale uint8, dark ink on light paper as uploaded (not yet inverted),
    reduced to at most `work_side` pixels a side."""
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
            if fmt in ("JPEG", "MPO"):
                # Let libjpeg decode at 1/2..1/8 scale: most of the 20 ms budget on photos.
                img.draft("L", (work_side, work_side))
            img.load()
            gray = _to_gray(ImageOps.exif_transpose(img))
    except HandaiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise HandaiError("too_large", "image has too many pixels (decompression bomb)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise HandaiError("invalid_image", f"could not decode the image: {exc}") from None
    return _reduce(gray, work_side)


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


def _reduce(gray: NDArray[np.uint8], work_side: int) -> NDArray[np.uint8]:
    side = max(gray.shape)
    if side <= work_side:
        return np.ascontiguousarray(gray)
    factor = math.ceil(side / work_side)
    small = Image.fromarray(gray).reduce(factor)  # box filter: keeps thin strokes as grey
    reduced: NDArray[np.uint8] = np.asarray(small, dtype=np.uint8)
    return reduced


def dark_background(gray: NDArray[np.uint8]) -> bool:
    """Light ink on dark? Evenly lit images (scans, screenshots, MNIST) are judged by their
    border, which is mostly paper even where the digit touches it. A crop its digit fills is
    judged by which tone is in fewer pieces. Photos are judged by their bulk and its far
    tail: light ink on dark needs both a dark bulk (the median) and more deviation above the
    median than below it, so a shadow over half a page does not flip it.
    """
    levels = gray.astype(np.float32)
    if max(gray.shape) <= SCAN_SIDE or _evenly_lit(gray):
        split = otsu(gray)
        border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
        dark_share = float((border <= split).mean())
        if abs(dark_share - 0.5) >= 0.1:
            return dark_share > 0.5
    filled = _filled_crop_polarity(gray)
    if filled is not None:
        return filled
    median = float(np.median(levels))
    darker = float(np.clip(median - levels, 0.0, None).sum())
    lighter = float(np.clip(levels - median, 0.0, None).sum())
    return median < DARK_BULK and lighter > darker


def _filled_crop_polarity(gray: NDArray[np.uint8]) -> bool | None:
    """Light ink? For a tight crop of a scan, where the digit touches every edge so neither the
    border nor the bulk is paper: two tones, ink and paper, each a fifth of the image or more.
    A digit's strokes hang together while the paper around and between them is cut into
    pieces, so the ink is the tone in fewer pieces. None when the image is not such a crop
    (in a photo the big dark tone is a shadow, too light for ink) or the pieces tie."""
    low, high = np.percentile(gray, (2, 98))
    if high - low < SCAN_RANGE:
        return None
    dark = gray <= otsu(gray)
    if min(dark.mean(), 1.0 - dark.mean()) < CROP_TONE:
        return None
    if np.median(gray[dark]) > TONE_RATIO * max(float(np.median(gray[~dark])), 1.0):
        return None
    dark_pieces, light_pieces = _pieces(dark), _pieces(~dark)
    return None if dark_pieces == light_pieces else light_pieces < dark_pieces


def _pieces(mask: NDArray[np.bool_]) -> int:
    """8-connected pieces of at least 0.2 % of the image: specks and JPEG noise don't count."""
    labels, count = ndimage.label(mask, structure=_EIGHT)
    if count == 0:
        return 0
    sizes = np.bincount(labels.ravel())[1:]
    return int((sizes >= MIN_PIECE * mask.size).sum())


def _evenly_lit(gray: NDArray[np.uint8]) -> bool:
    """Either polarity: with the strokes (narrower than a third of the image) taken out, by a
    closing for dark ink or an opening for light ink, is what is left flat?"""
    k = max(gray.shape) // 3
    return _even(_background(gray, k), k) or _even(_background(gray, k, cv2.MORPH_OPEN), k)


def _even(background: NDArray[np.float32], k: int) -> bool:
    """Flat within EVEN_SPREAD grey levels, judged away from the frame's edge, where ink that
    runs along it looks like shade."""
    m = k // 2
    inner = background[m:-m, m:-m] if min(background.shape) > 2 * m + 8 else background
    lo, hi = np.percentile(inner, (2, 98))
    return bool(hi - lo <= EVEN_SPREAD)


def otsu(gray: NDArray[np.uint8]) -> int:
    """Otsu's threshold: the level that maximizes between-class variance."""
    level, _ = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return int(level)


@dataclass(frozen=True)
class Ink:
    """Where the ink is, before any of it is set aside as not the digit's."""

    values: NDArray[np.float32]  # scans: strength in [0, 1]; photos: darkening vs the paper
    mask: NDArray[np.bool_]  # ink pixels, every piece of them
    photo: bool  # values still need scaling to the kept ink's own darkness


def prepare_pixels(gray: NDArray[np.uint8]) -> tuple[NDArray[np.float32], float]:
    """Dark-on-light grayscale -> 28x28 ink intensities in [0, 1] (1 = ink), and the deskew."""
    ink = find_ink(gray)
    # Photos: the pieces' darkness tells a stray mark from a stroke (scans keep MNIST's path).
    keep = keep_digit(ink.mask, ink.values if ink.photo else None)
    return digit_pixels(strength_of(ink, keep))


def find_ink(gray: NDArray[np.uint8], line_reach: tuple[float, float] = (1 / 3, 1 / 3)) -> Ink:
    """Ink against paper, the way the image calls for; raises when there is none.

    `line_reach`: how long a faint straight stroke must be to be a ruled line (see
    remove_lines); a row of digits, where a light 1 is as tall as the image, needs more.
    """
    if int(gray.max()) - int(gray.min()) < MIN_CONTRAST:
        raise HandaiError("preprocessing_failed", "no ink found: the image is blank or uniform")
    return scan_ink(gray) if max(gray.shape) <= SCAN_SIDE else photo_ink(gray, line_reach)


def digit_pixels(strength: NDArray[np.float32]) -> tuple[NDArray[np.float32], float]:
    """One digit's ink strength (anywhere in a larger frame) -> its 28x28 input and deskew."""
    rows, cols = np.nonzero(strength > 0.0)
    if rows.size == 0:
        raise HandaiError("preprocessing_failed", "no ink found: the image is blank or uniform")
    crop = strength[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    crop, angle = deskew(crop)
    return place(fit(crop)), angle


def scan_ink(gray: NDArray[np.uint8]) -> Ink:
    """Small images on a flat background: one Otsu level splits ink from paper."""
    level = otsu(gray)
    mask = gray <= level
    _check_fraction(mask)
    paper = float(np.median(gray[~mask]))
    ink_level = float(np.percentile(gray[mask], 10))
    strength = np.clip((paper - gray.astype(np.float32)) / max(paper - ink_level, 1.0), 0.0, 1.0)
    return Ink(strength.astype(np.float32), mask, photo=False)


def photo_ink(gray: NDArray[np.uint8], line_reach: tuple[float, float] = (1 / 3, 1 / 3)) -> Ink:
    """Photos and screenshots: how much darker each pixel is than the paper around it."""
    darkening = flatten(gray)
    darkening = remove_lines(darkening, line_reach)
    ink_level = float(np.percentile(darkening, 99.9))
    if ink_level < MIN_STRENGTH:
        raise HandaiError(
            "preprocessing_failed",
            f"no ink found: the darkest marks are {ink_level:.0%} darker than the paper",
        )
    mask = _ink_mask(darkening, ink_level)
    soft = _soft_pieces(gray, darkening, mask)
    if soft.any():  # a shadow's edge, often darker than pencil: not ink, nor the ink's level
        darkening = np.where(soft, np.float32(0.0), darkening)
        ink_level = float(np.percentile(darkening, 99.9))
        if ink_level < MIN_STRENGTH:
            raise HandaiError(
                "preprocessing_failed",
                f"no ink found: the darkest marks are {ink_level:.0%} darker than the paper "
                "(shadows aside)",
            )
        mask = _ink_mask(darkening, ink_level)
    _check_fraction(mask)
    return Ink(darkening, mask, photo=True)


def _ink_mask(darkening: NDArray[np.float32], ink_level: float) -> NDArray[np.bool_]:
    """A share of the ink's own darkness: a small pencil digit has too few pixels for Otsu."""
    cut = 0.35 * ink_level
    # Capped: blurred edges, not grain, below the cut (a crop scaled up from a small scan).
    floor = min(_noise_floor(darkening[darkening <= cut]), MAX_FLOOR * ink_level)
    mask: NDArray[np.bool_] = darkening > max(cut, floor)
    return mask


def _soft_pieces(
    gray: NDArray[np.uint8], darkening: NDArray[np.float32], mask: NDArray[np.bool_]
) -> NDArray[np.bool_]:
    """Ink pieces whose outline is soft: what the background estimate left of a shadow.

    A stroke's edge rises to its darkness within a pixel or two; the edge of a shadow is
    blurred over many (and the inner side of what is left of it is no edge at all). Measured
    per piece: the median, along its outline, of the steepest slope within two pixels, per
    unit of its darkness. SOFT_EDGE was chosen on 500 rendered pencil photos: 0.06-0.15 all
    read within a point of each other, and better than none.
    """
    labels, _count = ndimage.label(mask, structure=_EIGHT)
    sizes = np.bincount(labels.ravel())[1:]
    big = np.flatnonzero(sizes >= MIN_PIECE * mask.size)
    soft = np.zeros_like(mask)
    if big.size == 0:
        return soft
    level = cv2.GaussianBlur(gray.astype(np.float32), (0, 0), 1.0)
    gx = cv2.Sobel(level, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(level, cv2.CV_32F, 0, 1, ksize=3)
    paper = np.maximum(gray / np.maximum(1.0 - darkening, 0.05), 1.0)
    slope = np.hypot(gx, gy) / (8.0 * paper)  # Sobel's 3x3 weights sum to 8
    # The steepest slope next to each outline pixel: the cut can fall beside an edge's peak.
    slope = cv2.dilate(slope, np.ones((5, 5), np.uint8))
    boxes = ndimage.find_objects(labels)
    sharp = 0
    for index in big:
        box = boxes[index]
        assert box is not None
        piece = labels[box] == index + 1
        outline = piece & ~ndimage.binary_erosion(piece, structure=_EIGHT)
        edge = float(np.median(slope[box][outline]))
        if edge < SOFT_EDGE * float(np.median(darkening[box][piece])):
            soft[box] |= piece
        else:
            sharp += 1
    if not sharp:  # nothing sharper to tell it from: the whole image is soft (scaled up)
        return np.zeros_like(mask)
    # With its blurred rim, which is below the ink cut but above the paper.
    grown: NDArray[np.bool_] = cv2.dilate(soft.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    return grown


def strength_of(ink: Ink, keep: NDArray[np.bool_]) -> NDArray[np.float32]:
    """The kept pieces' ink strength in [0, 1], zero elsewhere."""
    strength = ink.values
    if ink.photo:
        ink_ref = float(np.percentile(ink.values[keep], 90))
        strength = np.clip(ink.values / max(ink_ref, 1e-3), 0.0, 1.0)
        strength[strength < FAINT] = 0.0  # JPEG ringing beside a stroke: not part of it
    # Anti-aliased edges sit just outside the mask: keep a one-pixel rim around kept ink.
    rim: NDArray[np.float32] = strength * ndimage.binary_dilation(keep, structure=_EIGHT)
    return rim


def flatten(gray: NDArray[np.uint8]) -> NDArray[np.float32]:
    """1 - pixel / paper: 0 on paper, near 1 on black ink, whatever the lighting.

    The paper is a grey closing: it removes dark features narrower than its window and keeps
    what varies slowly (shadows, light falloff), which is then divided out. Evenly lit paper
    (a screenshot, a scan) gets a window of a third of the image, wide enough for a marker
    stroke. Uneven light (a photo) gets an eighth: any wider and the edge of a hard shadow
    passes for ink; a pen stroke in a photo is far thinner than that.
    """
    level = gray.astype(np.float32)
    side = max(gray.shape)
    k = side // 3
    paper = _background(gray, k)
    if _even(paper, k):  # a screenshot or a scan: nothing to tell apart
        return _divide(level, paper)
    return _divide(level, _background(gray, side // 8))


def _background(gray: NDArray[np.uint8], k: int, op: int = cv2.MORPH_CLOSE) -> NDArray[np.float32]:
    """The image without dark (closing) or light (opening) features narrower than k."""
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (k | 1, k | 1))
    found = cv2.morphologyEx(gray, op, kernel, borderType=cv2.BORDER_REPLICATE)
    return np.asarray(found, np.float32)


def _divide(level: NDArray[np.float32], background: NDArray[np.float32]) -> NDArray[np.float32]:
    paper = np.maximum(np.maximum(background, level), 1.0)
    darkening: NDArray[np.float32] = (1.0 - level / paper).astype(np.float32)
    return darkening


def remove_lines(
    darkening: NDArray[np.float32], reach: tuple[float, float] = (1 / 3, 1 / 3)
) -> NDArray[np.float32]:
    """Zero ruled and grid lines: long, nearly straight, thin, and fainter than the ink.

    A slightly tilted line is first thickened across its direction (LINE_BAND pixels), then
    found by an opening with a long bar (`reach`: a share of the width for rules, of the
    height for grid lines). Only the line's own thin ridge goes: a pencil stroke as faint as
    the line, crossing it, is wider across the line than the line is, and stays whole.
    """
    h, w = darkening.shape
    ink_level = float(np.percentile(darkening, 99.9))
    on_line = np.zeros(darkening.shape, dtype=bool)
    along_x, along_y = int(w * reach[0]), int(h * reach[1])
    for length, across, along in (
        (along_x, (1, LINE_BAND), (along_x, 1)),
        (along_y, (LINE_BAND, 1), (1, along_y)),
    ):
        if length < 16:
            continue
        band = cv2.getStructuringElement(cv2.MORPH_RECT, across)
        thick = cv2.dilate(darkening, band)
        lines = cv2.morphologyEx(thick, cv2.MORPH_OPEN, np.ones(along[::-1], np.uint8))
        # Darkness narrower than the band across the line's direction: the line itself.
        ridge = darkening - cv2.morphologyEx(darkening, cv2.MORPH_OPEN, band)
        # A faint line, and a pixel no darker than the line there: a stroke that crosses a
        # line is darker than it, and a digit's own long straight stroke is not faint.
        on_line |= (
            (lines > 0.03)
            & (lines < LINE_FAINTNESS * ink_level)
            & (darkening <= 1.5 * lines)
            & (ridge >= 0.5 * darkening)
        )
    cleaned: NDArray[np.float32] = np.where(on_line, 0.0, darkening).astype(np.float32)
    return cleaned


def _noise_floor(paper: NDArray[np.float32]) -> float:
    """The paper's own grain (JPEG blocks, sensor noise): six robust sigmas above its median.
    Measured on the pixels fainter than any ink: a crop filled by its digit is half ink."""
    if paper.size == 0:
        return 0.02
    median = float(np.median(paper))
    mad = float(np.median(np.abs(paper - median)))
    return median + 6.0 * 1.4826 * mad + 0.02


def _check_fraction(mask: NDArray[np.bool_]) -> None:
    if mask.mean() > MAX_INK_FRACTION:
        raise HandaiError(
            "preprocessing_failed",
            f"expected dark ink on a light background, got {mask.mean():.0%} ink",
        )
    if not mask.any():
        raise HandaiError("preprocessing_failed", "no ink found: the image is blank or uniform")


def keep_digit(
    mask: NDArray[np.bool_], darkness: NDArray[np.float32] | None = None
) -> NDArray[np.bool_]:
    """The largest 8-connected ink component plus the strokes that belong with it.

    A second stroke stays when it is big and close (the two halves of a 4) or near the main
    body and not a speck (the bar of a 5); dots, specks and stray marks far away go. Given the
    ink's `darkness`, a stroke written with another pen (SAME_PEN times darker or fainter than
    the main body: a pen tick beside a pencil digit) goes too.
    """
    labels, _count = ndimage.label(mask, structure=_EIGHT)
    sizes = np.bincount(labels.ravel())[1:]
    main = int(np.argmax(sizes))
    boxes = ndimage.find_objects(labels)
    main_box = boxes[main]
    assert main_box is not None
    extent = max(main_box[0].stop - main_box[0].start, main_box[1].stop - main_box[1].start)
    largest = float(sizes[main])
    if int((sizes >= 0.5 * largest).sum()) > MAX_LIKE_PIECES:
        raise HandaiError(
            "preprocessing_failed",
            "no single digit found: the image holds many marks the size of the largest "
            "(a pattern, keys, or several digits: /v1/read/number reads a number)",
        )
    kept = [main + 1]
    main_dark = None if darkness is None else float(np.median(darkness[labels == main + 1]))
    for index, (size, box) in enumerate(zip(sizes, boxes, strict=True)):
        if index == main or box is None:
            continue
        if darkness is not None and main_dark is not None:
            ratio = float(np.median(darkness[box][labels[box] == index + 1])) / max(main_dark, 1e-3)
            if not 1 / SAME_PEN <= ratio <= SAME_PEN:
                continue
        gap = _gap(main_box, box)
        if (size >= 0.25 * largest and gap <= 0.6 * extent) or (
            size >= 0.04 * largest and gap <= 0.3 * extent
        ):
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
