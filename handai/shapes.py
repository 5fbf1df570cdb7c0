"""What a piece of ink's shape says in a row of digits: how many digits it holds (1, 2, or 3
or more), whether a cut through it falls between two of them, and, were it two digits, which.

Touching digits are one piece of ink, and the digit model reads a squeezed pair as one digit
with full confidence ("60" as a 0), so its confidence cannot tell a pair from a wide digit, nor
a cut between two digits from a cut that slices a sliver off one (read as a confident 1).
Their shapes at the row's scale can: two small CNNs (train.shapes) see the piece's mask with
the row's digit height at ROW pixels, aspect kept; the cut net sees the cut as a second
channel. A third reads the piece as a pair of digits, left and right, as a whole: where two
digits overlap, a straight cut leaves each half maimed, but the pair's shape is still legible.
They run through OpenCV's DNN module from ONNX files, so no torch is needed here.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

COUNT_MODEL = Path(__file__).with_name("count.onnx")
CUT_MODEL = Path(__file__).with_name("cut.onnx")
PAIR_MODEL = Path(__file__).with_name("pair.onnx")
HEIGHT, WIDTH = 40, 96  # the input canvas: about five digits of a row side by side
ROW = 24  # a row's typical digit height on the canvas
CLASSES = 3  # 1 digit, 2 digits, 3 or more
PAIR_WIDTH = 64  # the pair net sees the middle of a one-channel shape: two digits fit
PAIR_COLUMNS = slice((WIDTH - PAIR_WIDTH) // 2, (WIDTH + PAIR_WIDTH) // 2)
# How much the pair net's reading counts beside the digit model's (an exponent on its
# probabilities): tuned on the seed-11 clean renders, checked on seed 0 (docs/model-card.md).
PAIR_WEIGHT = 0.5

Canvas = NDArray[np.float32]
_lock = threading.Lock()  # one cv2.dnn.Net each serves the Preprocess deployment's threads


def shape(piece: NDArray[np.bool_], row: float, cut: int | None = None) -> Canvas:
    """(channels, HEIGHT, WIDTH): a piece's mask, scaled so the row's digit height is ROW
    pixels (smaller if it would not fit), centred; with a cut, a second channel marks that
    column of the piece."""
    h, w = piece.shape
    scale = min(ROW / max(row, 1.0), (HEIGHT - 2) / h, (WIDTH - 2) / w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(piece.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    canvas = np.zeros((1 if cut is None else 2, HEIGHT, WIDTH), np.float32)
    top, left = (HEIGHT - size[1]) // 2, (WIDTH - size[0]) // 2
    canvas[0, top : top + size[1], left : left + size[0]] = small
    if cut is not None:
        at = min(left + size[0] - 1, left + round(cut * scale))
        canvas[1, top : top + size[1], at] = 1.0
    return canvas


@functools.cache
def _net(path: Path) -> cv2.dnn.Net:
    return cv2.dnn.readNetFromONNX(str(path))


def _logits(path: Path, canvases: Sequence[Canvas]) -> NDArray[np.float32]:
    with _lock:
        net = _net(path)
        net.setInput(np.stack(canvases))
        return np.asarray(net.forward(), np.float32)


def counts(canvases: Sequence[Canvas]) -> NDArray[np.float32]:
    """(n, CLASSES): for each one-channel shape, how likely it is 1, 2, or 3 or more digits."""
    if not canvases:
        return np.zeros((0, CLASSES), np.float32)
    logits = _logits(COUNT_MODEL, canvases)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    out: NDArray[np.float32] = exp / exp.sum(axis=1, keepdims=True)
    return out


def between(canvases: Sequence[Canvas]) -> NDArray[np.float32]:
    """(n,): for each two-channel shape, how likely its cut falls between two digits."""
    if not canvases:
        return np.zeros(0, np.float32)
    logits = _logits(CUT_MODEL, canvases)[:, 0]
    out: NDArray[np.float32] = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    return out


def pairs(canvases: Sequence[Canvas]) -> NDArray[np.float32]:
    """(n, 2, 10): for each one-channel shape read as two digits, the left and the right
    digit's probabilities, tempered by PAIR_WEIGHT (each row sums to 1)."""
    if not canvases:
        return np.zeros((0, 2, 10), np.float32)
    logits = _logits(PAIR_MODEL, [c[:, :, PAIR_COLUMNS] for c in canvases]).reshape(-1, 2, 10)
    tempered = np.exp(PAIR_WEIGHT * (logits - logits.max(axis=2, keepdims=True)))
    out: NDArray[np.float32] = tempered / tempered.sum(axis=2, keepdims=True)
    return out
