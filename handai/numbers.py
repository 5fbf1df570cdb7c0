"""A whole number in one image -> one model input per digit, in reading order, with its box.

The same cleaning as a single read (decode, polarity, ink against paper: shadows flattened and
ruled lines removed), then: 8-connected pieces of ink; specks dropped; pieces stacked in one
column merged (the bar of a 5, a 4 written in two strokes, a broken stroke); left to right. A
piece that may be touching digits (its shape says so, handai.shapes, or it is much wider than
the row's typical digit) is also offered split where its vertical ink profile is thinnest, and
the reading of it (whole or split) is chosen from its shapes and the digit model's confidences.
The halves of a split in two carry what the piece reads as whole, as a pair (handai.shapes),
for the model's answer to be weighed by: where touching digits overlap, a straight cut maims
both halves.
Each digit then goes through the single read's deskew, 20x20 fit and centring, so the model
sees what it was trained on.
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

from handai import shapes
from handai.errors import HandaiError
from handai.preprocess import (
    Ink,
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
TWO_WAY_CUTS = 5  # places a two-digit piece is offered cut at
TOO_WIDE = 1.15  # a group this many typical digit widths wide may be touching digits
REMNANT = 0.2  # a piece of a cut part this share of its largest, or less, is the neighbour's
ONE_ONLY = 0.9  # a narrower group is offered split too when its shape says 1 digit less surely
# Candidate digits one upload sends the Model at most (rendered numbers: ~19 on average, 55 at
# most): twelve wide scribbles made 216, so one upload cost the graph ~200 single reads.
MAX_CANDIDATES = 64
_EIGHT = np.ones((3, 3), dtype=bool)

Box = tuple[int, int, int, int]  # x, y, width, height in the upload's pixels
Ways = list[list[tuple[list[int], list[NDArray[np.bool_]]]]]  # per group: (bounds, parts)


@dataclass(frozen=True)
class DigitCut:
    image: Preprocessed
    box: Box


@dataclass(frozen=True)
class Slot:
    """One piece of ink in the row: read as one digit, or (when it may be touching digits) as
    one of the ways it splits into digits; `choose` decides."""

    whole: DigitCut
    splits: tuple[tuple[DigitCut, ...], ...] = ()
    # How likely the piece is to hold 1, 2, or 3 or more digits (handai.shapes); even: no idea.
    counts: tuple[float, ...] = (1.0, 1.0, 1.0)
    # Per split, how likely all its cuts fall between digits (handai.shapes); 1: no idea.
    between: tuple[float, ...] = ()


T = TypeVar("T")


def _odds(counts: Sequence[float], digits: int) -> float:
    """How likely a piece holds `digits` digits, from its counts (1, 2, 3 or more)."""
    return float(counts[min(digits, len(counts)) - 1])


def flatten(slots: Sequence[Slot]) -> list[DigitCut]:
    """Every candidate digit, for one forward pass: each slot's whole, then its splits."""
    return [cut for slot in slots for cut in (slot.whole, *itertools.chain(*slot.splits))]


def choose(
    slots: Sequence[Slot], answers: Sequence[T], confidence: Callable[[T], float]
) -> list[tuple[DigitCut, T]]:
    """Each slot's digits and their answers, from the answers to `flatten(slots)`: the reading
    of the slot (whole, or one of its splits) most likely to hold that many digits, to be cut
    between them (the piece's shapes, handai.shapes) and to be read right (the confidences
    multiplied, as the number's own confidence is); more than MAX_DIGITS digits in all is
    preprocessing_failed. On rendered numbers the shapes took the clean ones read exactly from
    91.0 to 95.7 %: the digit model reads a squeezed pair as one digit as confidently as a
    digit, and a sliver cut off a digit as a confident 1."""
    chosen: list[tuple[DigitCut, T]] = []
    at = 0
    for slot in slots:
        whole = answers[at]
        at += 1
        best, best_score = None, _odds(slot.counts, 1) * confidence(whole)
        cut_odds = slot.between or (1.0,) * len(slot.splits)
        for split, between in zip(slot.splits, cut_odds, strict=True):
            parts = list(answers[at : at + len(split)])
            at += len(split)
            score = _odds(slot.counts, len(split)) * between * math.prod(map(confidence, parts))
            if score > best_score:
                best, best_score = list(zip(split, parts, strict=True)), score
        chosen += best if best is not None else [(slot.whole, whole)]
    if len(chosen) > MAX_DIGITS:  # 12 marks at most, but each may read as several digits
        raise HandaiError(
            "preprocessing_failed",
            f"read {len(chosen)} digits; expected 1-{MAX_DIGITS} digits written in a row",
        )
    return chosen


def segment(data: bytes, *, max_side: int = 1024, invert: bool | None = None) -> list[Slot]:
    """Every digit written in a row, left to right. Raises HandaiError, never anything else."""
    row = find_row(data, max_side=max_side, invert=invert)
    pieces = [row.piece(g) for g in row.groups]
    outlines = [shapes.shape(p, row.height) for p in pieces]
    counts = shapes.counts(outlines)
    ways: Ways = []
    for group, piece, odds in zip(row.groups, pieces, counts, strict=True):
        ways.append([])
        if odds[0] < ONE_ONLY or group.width > TOO_WIDE * row.typical:
            for bounds in candidate_splits(piece, row.typical):
                parts = [_trimmed(_placed(piece, a, b)) for a, b in itertools.pairwise(bounds)]
                if all(p.any() for p in parts):
                    ways[-1].append((bounds, parts))
    ways = _within_budget(ways, counts)
    inner = [
        shapes.shape(piece, row.height, cut=x)
        for piece, splits in zip(pieces, ways, strict=True)
        for bounds, _ in splits
        for x in bounds[1:-1]
    ]
    between = iter(shapes.between(inner))
    # A piece offered as two digits is also read as a pair whole; its halves take that along.
    paired = [any(len(parts) == 2 for _, parts in splits) for splits in ways]
    pairs = iter(shapes.pairs([o for o, p in zip(outlines, paired, strict=True) if p]))

    def cut(
        part: NDArray[np.bool_], offset: tuple[int, int], prior: NDArray[np.float32] | None = None
    ) -> DigitCut:
        mask = np.zeros_like(row.ink.mask)
        mask[offset[0] : offset[0] + part.shape[0], offset[1] : offset[1] + part.shape[1]] = part
        pixels, angle = digit_pixels(strength_of(row.ink, mask))
        rows, cols = np.nonzero(mask)
        y, x = int(rows.min()), int(cols.min())
        h, w = int(rows.max()) - y + 1, int(cols.max()) - x + 1
        box = (
            round(x * row.scale),
            round(y * row.scale),
            round(w * row.scale),
            round(h * row.scale),
        )
        image = Preprocessed(
            pixels=normalize(pixels)[None, None],
            preview=np.round(pixels * 255.0).astype(np.uint8),
            inverted=row.invert,
            deskew_deg=angle,
            prior=None if prior is None else tuple(float(p) for p in prior),
        )
        return DigitCut(image, box)

    slots = []
    for group, piece, odds, splits, two in zip(
        row.groups, pieces, counts, ways, paired, strict=True
    ):
        at = (group.y0, group.x0)
        pair = next(pairs) if two else None
        slots.append(
            Slot(
                cut(piece, at),
                tuple(
                    tuple(
                        cut(p, at, None if pair is None or len(parts) != 2 else pair[k])
                        for k, p in enumerate(parts)
                    )
                    for _, parts in splits
                ),
                tuple(float(p) for p in odds),
                tuple(
                    math.prod(float(next(between)) for _ in bounds[1:-1]) for bounds, _ in splits
                ),
            )
        )
    return slots


def _within_budget(ways: Ways, counts: NDArray[np.float32]) -> Ways:
    """The splits, fewest dropped, so that the wholes and the splits' parts are at most
    MAX_CANDIDATES digits: the splits into as many digits as their piece's shape says most
    likely are kept first (order kept among equals)."""
    room = MAX_CANDIDATES - len(ways)
    if sum(len(parts) for splits in ways for _, parts in splits) <= room:
        return ways
    # Ties go in the order the splits were offered (their indices sort them).
    ranked = sorted(
        (-_odds(odds, len(parts)), i, j)
        for i, (splits, odds) in enumerate(zip(ways, counts, strict=True))
        for j, (_, parts) in enumerate(splits)
    )
    kept: set[tuple[int, int]] = set()
    for _, i, j in ranked:
        size = len(ways[i][j][1])
        if size <= room:
            kept.add((i, j))
            room -= size
    return [[w for j, w in enumerate(splits) if (i, j) in kept] for i, splits in enumerate(ways)]


@dataclass(frozen=True)
class Row:
    """The pieces of ink a number is written in, before any is read."""

    ink: Ink
    invert: bool
    scale: float  # upload pixels per working pixel
    labels: NDArray[np.int32]  # 8-connected pieces of ink.mask
    groups: list[_Group]  # the digits (or touching digits), left to right
    height: float  # a digit's typical height in the row
    typical: float  # a digit's typical width in the row

    def piece(self, group: _Group) -> NDArray[np.bool_]:
        """A group's ink in its box."""
        box = self.labels[group.y0 : group.y1, group.x0 : group.x1]
        inside: NDArray[np.bool_] = np.isin(box, group.labels)
        return inside


def find_row(data: bytes, *, max_side: int = 1024, invert: bool | None = None) -> Row:
    """Clean the image as a single read does and group its ink into digits."""
    gray = decode(data, max_side=max_side, work_side=WORK_SIDE)
    scale = _upload_side(data) / max(gray.shape)
    if invert is None:
        invert = dark_background(gray)
    if invert:
        gray = 255 - gray
    ink = find_ink(gray, line_reach=LINE_REACH)
    labels, count_ = ndimage.label(ink.mask, structure=_EIGHT)
    groups, height = _digit_groups(labels, count_)
    if not groups:
        raise HandaiError("preprocessing_failed", "no digits found: the image is blank")
    if len(groups) > MAX_DIGITS:
        raise HandaiError(
            "preprocessing_failed",
            f"found {len(groups)} marks; expected 1-{MAX_DIGITS} digits written in a row",
        )
    widths = [g.width for g in groups if g.width >= 0.4 * g.height]  # not 1s
    # Merged pairs inflate the median width; a digit is rarely wider than 0.7 of the row.
    aspect = DIGIT_ASPECT * height
    typical = min(float(np.median(widths)), aspect) if widths else aspect
    return Row(ink, invert, scale, labels, groups, height, typical)


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


def _digit_groups(labels: NDArray[np.int32], count: int) -> tuple[list[_Group], float]:
    """Pieces of ink -> digits (or touching digits) left to right, and the row's digit height."""
    if count == 0:
        return [], 0.0
    sizes = np.bincount(labels.ravel())[1:]
    boxes = ndimage.find_objects(labels)
    largest = float(sizes.max())
    groups = [
        _Group([i + 1], box[1].start, box[1].stop, box[0].start, box[0].stop)
        for i, box in enumerate(boxes)
        if box is not None and sizes[i] >= SPECK * largest
    ]
    row = float(np.median([g.height for g in groups if sizes[g.labels[0] - 1] >= 0.25 * largest]))
    return _merge_columns(sorted(groups, key=lambda g: g.x0), row), row


def _placed(piece: NDArray[np.bool_], left: int, right: int) -> NDArray[np.bool_]:
    """Columns left:right of a group's piece, in its box. (Cutting overlapping digits along the
    least-ink path between them instead of a column read no more numbers exactly.)"""
    part = np.zeros_like(piece)
    part[:, left:right] = piece[:, left:right]
    return part


def _trimmed(part: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """A cut part without the bits of its neighbour the cut left in it (pieces much smaller
    than its largest): where digits overlap, a straight cut takes a stroke end of the other."""
    labels, count_ = ndimage.label(part, structure=_EIGHT)
    if count_ <= 1:
        return part
    sizes = np.bincount(labels.ravel())[1:]
    keep: NDArray[np.bool_] = np.isin(labels, 1 + np.nonzero(sizes >= REMNANT * sizes.max())[0])
    return keep


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


def candidate_splits(piece: NDArray[np.bool_], typical: float) -> list[list[int]]:
    """Column boundaries of the ways a group may be touching digits. In two: at each of the
    deepest valleys of the vertical ink profile (a 1 beside a 2 meets it far from the middle).
    In three or more (as many as its width allows, and one more, since narrow 1s hide in a
    row): at the thinnest column near each division."""
    width = piece.shape[1]
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
