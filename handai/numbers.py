"""A whole number in one image -> one model input per digit, in reading order, with its box.

The same cleaning as a single read (decode, polarity, ink against paper: shadows flattened and
ruled lines removed), then: 8-connected pieces of ink; specks dropped; pieces stacked in one
column merged (the bar of a 5, a 4 written in two strokes, a broken stroke); a piece much wider
than the row's typical digit split where its vertical ink profile is thinnest (touching
digits); left to right. Each digit then goes through the single read's deskew, 20x20 fit and
centring, so the model sees what it was trained on.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage

from handai.errors import HandaiError
from handai.preprocess import (
    Preprocessed,
    dark_background,
    decode,
    digit_pixels,
    find_ink,
    normalize,
    strength_of,
)

MAX_DIGITS = 12
WORK_SIDE = 768  # a row of 12 digits keeps ~50 px a digit (a single read needs 256 a side)
LINE_REACH = (1 / 3, 0.9)  # a faint 1 can be as tall as a row: only page-high grid lines go
SPECK = 0.03  # pieces smaller than this share of the largest are dust, not strokes
STACKED = 0.5  # a short piece over or under another by this share of its width joins it
TALL = 0.6  # pieces this share of the row's height or more are digits (or most of one)
SAME_COLUMN = 0.8  # two tall pieces join only when they overlap this much (a two-stroke 4)
NEAR = 0.3  # a broken-off stroke joins a digit at most this share of the row's height away
SHORT_DIGIT = 0.4  # a piece this share of the row's height, alone, is still a digit
DIGIT_ASPECT = 0.7  # a typical digit's width over the row's height
TWO_WAY_CUTS = 3  # places a two-digit piece is offered cut at
TOO_WIDE = 1.15  # a group this many typical digit widths wide may be touching digits
_EIGHT = np.ones((3, 3), dtype=bool)

Box = tuple[int, int, int, int]  # x, y, width, height in the upload's pixels


@dataclass(frozen=True)
class DigitCut:
    image: Preprocessed
    box: Box


@dataclass(frozen=True)
class Slot:
    """One place in the row: read as one digit, or (when it is wide enough to be touching
    digits) as one of the ways it splits into digits; the model's confidence decides."""

    whole: DigitCut
    splits: tuple[tuple[DigitCut, ...], ...] = ()


T = TypeVar("T")


def flatten(slots: Sequence[Slot]) -> list[DigitCut]:
    """Every candidate digit, for one forward pass: each slot's whole, then its splits."""
    return [cut for slot in slots for cut in (slot.whole, *itertools.chain(*slot.splits))]


def choose(
    slots: Sequence[Slot], answers: Sequence[T], confidence: Callable[[T], float]
) -> list[tuple[DigitCut, T]]:
    """Each slot's digits and their answers, from the answers to `flatten(slots)`: the reading
    of the slot (whole, or one of its splits) whose confidences multiply to the most, as the
    number's own confidence does. (On rendered numbers this read 0.3-1.3 points more exactly
    than the splits' geometric mean, and a prior on the slot's width read fewer: single
    digits are as wide as touching pairs too often.)"""
    chosen: list[tuple[DigitCut, T]] = []
    at = 0
    for slot in slots:
        whole = answers[at]
        at += 1
        best, best_score = None, confidence(whole)
        for split in slot.splits:
            parts = list(answers[at : at + len(split)])
            at += len(split)
            score = math.prod(confidence(p) for p in parts)
            if score > best_score:
                best, best_score = list(zip(split, parts, strict=True)), score
        chosen += best if best is not None else [(slot.whole, whole)]
    return chosen


def segment(data: bytes, *, max_side: int = 1024, invert: bool | None = None) -> list[Slot]:
    """Every digit written in a row, left to right. Raises HandaiError, never anything else."""
    gray = decode(data, max_side=max_side, work_side=WORK_SIDE)
    scale = _upload_side(data) / max(gray.shape)
    if invert is None:
        invert = dark_background(gray)
    if invert:
        gray = 255 - gray
    ink = find_ink(gray, line_reach=LINE_REACH)
    groups = digit_masks(ink.mask)
    if not groups:
        raise HandaiError("preprocessing_failed", "no digits found: the image is blank")
    if len(groups) > MAX_DIGITS:
        raise HandaiError(
            "preprocessing_failed",
            f"found {len(groups)} marks; expected 1-{MAX_DIGITS} digits written in a row",
        )

    def cut(mask: NDArray[np.bool_]) -> DigitCut:
        pixels, angle = digit_pixels(strength_of(ink, mask))
        rows, cols = np.nonzero(mask)
        y, x = int(rows.min()), int(cols.min())
        h, w = int(rows.max()) - y + 1, int(cols.max()) - x + 1
        box = (round(x * scale), round(y * scale), round(w * scale), round(h * scale))
        image = Preprocessed(
            pixels=normalize(pixels)[None, None],
            preview=np.round(pixels * 255.0).astype(np.uint8),
            inverted=invert,
            deskew_deg=angle,
        )
        return DigitCut(image, box)

    return [
        Slot(cut(whole), tuple(tuple(cut(p) for p in split) for split in splits))
        for whole, splits in groups
    ]


def _upload_side(data: bytes) -> int:
    """The upload's longer side (the same after an EXIF rotation), for boxes in its pixels."""
    with Image.open(io.BytesIO(data)) as img:
        return max(img.size)


@dataclass
class _Group:
    labels: list[int]
    x0: int
    x1: int  # exclusive
    y0: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def overlap(self, other: _Group) -> int:
        return max(0, min(self.x1, other.x1) - max(self.x0, other.x0))

    def absorb(self, other: _Group) -> None:
        self.labels += other.labels
        self.x0, self.x1 = min(self.x0, other.x0), max(self.x1, other.x1)
        self.y0, self.y1 = min(self.y0, other.y0), max(self.y1, other.y1)


def digit_masks(
    mask: NDArray[np.bool_],
) -> list[tuple[NDArray[np.bool_], list[list[NDArray[np.bool_]]]]]:
    """The ink mask -> per digit, left to right: its mask, and the ways it would split into
    touching digits (none when it is not wide enough to be more than one)."""
    labels, count = ndimage.label(mask, structure=_EIGHT)
    if count == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:]
    boxes = ndimage.find_objects(labels)
    largest = float(sizes.max())
    groups = [
        _Group([i + 1], box[1].start, box[1].stop, box[0].start, box[0].stop)
        for i, box in enumerate(boxes)
        if box is not None and sizes[i] >= SPECK * largest
    ]
    row = float(np.median([g.height for g in groups if sizes[g.labels[0] - 1] >= 0.25 * largest]))
    groups = _merge_columns(sorted(groups, key=lambda g: g.x0), row)
    widths = [g.width for g in groups if g.width >= 0.4 * g.height]  # not 1s
    # Merged pairs inflate the median width; a digit is rarely wider than 0.7 of the row.
    typical = min(float(np.median(widths)), DIGIT_ASPECT * row) if widths else DIGIT_ASPECT * row
    out = []
    for group in groups:
        piece = np.isin(labels[group.y0 : group.y1, group.x0 : group.x1], group.labels)
        splits = []
        for bounds in _splits(piece, typical):
            parts = [_placed(mask, group, piece, a, b) for a, b in itertools.pairwise(bounds)]
            if all(p.any() for p in parts):
                splits.append(parts)
        out.append((_placed(mask, group, piece, 0, piece.shape[1]), splits))
    return out


def _placed(
    like: NDArray[np.bool_], group: _Group, piece: NDArray[np.bool_], left: int, right: int
) -> NDArray[np.bool_]:
    """Columns left:right of a group's piece, back in the full frame. (Cutting touching digits
    along the least-ink path between them instead of a column read no more numbers exactly.)"""
    full = np.zeros_like(like)
    full[group.y0 : group.y1, group.x0 + left : group.x0 + right] = piece[:, left:right]
    return full


def _merge_columns(groups: list[_Group], row: float) -> list[_Group]:
    """Join pieces that stand in one column (strokes of one digit, not neighbours), then give
    each piece still too short to be a digit (a broken stroke) to its nearest neighbour."""
    merged: list[_Group] = []
    for group in groups:
        for into in reversed(merged[-2:]):  # only the last two can reach a piece sorted by x
            narrow = min(group.width, into.width)
            both_tall = min(group.height, into.height) >= TALL * row
            need = SAME_COLUMN if both_tall else STACKED
            if group.overlap(into) >= need * narrow:
                into.absorb(group)
                break
        else:
            merged.append(group)
    digits = [g for g in merged if g.height >= TALL * row]
    for short in (g for g in merged if g.height < TALL * row):
        gaps = [max(d.x0 - short.x1, short.x0 - d.x1) for d in digits]
        if gaps and min(gaps) <= NEAR * row:
            digits[int(np.argmin(gaps))].absorb(short)
        elif short.height >= SHORT_DIGIT * row:  # a small digit of its own, written lower
            digits.append(short)
    return sorted(digits, key=lambda g: g.x0)


def _splits(piece: NDArray[np.bool_], typical: float) -> list[list[int]]:
    """Column boundaries of the ways a group may be touching digits: none when it is about one
    digit wide. In two: at each of the deepest valleys of the vertical ink profile (a 1 beside
    a 2 meets it far from the middle). In three or more (as many as its width allows, and one
    more, since narrow 1s hide in a row): at the thinnest column near each division."""
    width = piece.shape[1]
    if typical <= 0 or width <= TOO_WIDE * typical:
        return []
    profile = ndimage.uniform_filter1d(piece.sum(axis=0).astype(np.float32), 3)
    lo, hi = int(0.15 * width), int(0.85 * width)
    inner = profile[lo:hi]
    valleys = [
        lo + i
        for i in range(1, len(inner) - 1)
        if inner[i] <= inner[i - 1] and inner[i] <= inner[i + 1]
    ]
    valleys.sort(key=lambda x: profile[x])
    picked: list[int] = []
    for x in valleys:
        if all(abs(x - p) > 0.1 * width for p in picked):
            picked.append(x)
        if len(picked) == TWO_WAY_CUTS:
            break
    out = [[0, x, width] for x in sorted(picked)]
    most = min(MAX_DIGITS, math.ceil(width / typical) + 1)
    for n in range(3, most + 1):
        step = width / n
        bounds = [0]
        for k in range(1, n):
            left = max(bounds[-1] + 1, int(k * step - 0.3 * step))
            right = min(width - 1, int(k * step + 0.3 * step))
            if right > left:
                bounds.append(left + int(np.argmin(profile[left:right])))
        bounds.append(width)
        if len(bounds) == n + 1:
            out.append(bounds)
    return out
