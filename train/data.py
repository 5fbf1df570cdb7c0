"""MNIST from its IDX files, put through the serving preprocessing once and cached."""

from __future__ import annotations

import gzip
import hashlib
import inspect
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import Dataset

import handai.preprocess
from handai.errors import HandaiError
from handai.preprocess import MNIST_MEAN, MNIST_STD, SIGNATURE, prepare_pixels, preprocess
from train import wild
from train.augment import BatchAugment

log = logging.getLogger(__name__)

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
VAL_SIZE = 5000
TEST_SIZE = 10_000  # MNIST's test split
RENDER_CHUNK = 500  # rendered uploads per task
# Render seeds far from those train.evaluate renders its sets with (0, 1, ...): training never
# sees the evaluation's papers, shadows and lines, only its own.
RENDER_SEEDS = 1_000_000


class DataError(Exception):
    """The data root is missing a file or holds a malformed one."""


@dataclass(frozen=True)
class Split:
    images: NDArray[np.uint8]  # N x 28 x 28, preprocessed ink (0-255, light on dark)
    labels: NDArray[np.int64]


def read_idx(path: Path, magic: int) -> NDArray[np.uint8]:
    """One IDX file, gzip-compressed or raw, checked against its header."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 8:
        raise DataError(f"{path}: expected an IDX header, got {len(raw)} bytes")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{path}: expected IDX magic {magic}, got {found}")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise DataError(
            f"{path}: expected {expected} data bytes for {dims}, got {len(raw) - offset}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"missing MNIST file {stem}(.gz) in {root}")


def read_raw(root: Path, split: str) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    images_stem, labels_stem = FILES[split]
    images = read_idx(_find(root, images_stem), IMAGES_MAGIC)
    labels = read_idx(_find(root, labels_stem), LABELS_MAGIC).astype(np.int64)
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise DataError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


def preprocess_mnist(images: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Serve-time preprocessing on each MNIST digit (stored light on dark, so invert first)."""
    out = np.empty_like(images)
    for i, image in enumerate(images):
        try:
            ink, _ = prepare_pixels(255 - image)
        except HandaiError:  # a handful of MNIST digits are nearly empty: keep them as they are
            ink = image.astype(np.float32) / 255.0
        out[i] = np.round(ink * 255.0).astype(np.uint8)
    return out


def load_split(root: Path, split: str, cache_dir: Path, limit: int | None = None) -> Split:
    """Preprocessed images and labels, cached per preprocessing signature."""
    images, labels = read_raw(root, split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    key = hashlib.sha256(SIGNATURE.encode() + images.tobytes()).hexdigest()[:16]
    cache = cache_dir / f"mnist-{split}-{len(images)}-{key}.npy"
    if cache.is_file():
        return Split(np.load(cache), labels)
    log.info("preprocessing %d %s images (cached at %s)", len(images), split, cache)
    prepared = preprocess_mnist(images)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{np.random.randint(1 << 30)}.tmp.npy")
    np.save(tmp, prepared)
    tmp.rename(cache)
    return Split(prepared, labels)


def train_val(full: Split, seed: int, val_size: int = VAL_SIZE) -> tuple[Split, Split]:
    """A seeded validation split carved out of the training images (never the test set)."""
    val_size = min(val_size, len(full.labels) // 5)
    order = np.random.default_rng(seed).permutation(len(full.labels))
    val, train = order[:val_size], order[val_size:]
    return Split(full.images[train], full.labels[train]), Split(full.images[val], full.labels[val])


def load_wild(source: Split, per_style: int, seed: int, cache_dir: Path) -> Split:
    """Uploads train.wild renders from `source`'s digits (a job's training digits to train on,
    its validation digits to fit the temperature on; never test digits), `per_style` of each
    style, put through the whole read path as served: what the model sees of phone photos,
    pencil, screenshots and tight crops, shadow remnants and stray marks included. Uploads
    the read path refuses are left out. Cached per version of the renderer and the
    preprocessing."""
    key = hashlib.sha256(
        inspect.getsource(handai.preprocess).encode()
        + inspect.getsource(wild).encode()
        + source.images.tobytes()
        + f"{per_style}/{seed}".encode()
    ).hexdigest()[:16]
    cache = cache_dir / f"wild-{per_style}-{key}.npz"
    if cache.is_file():
        with np.load(cache) as stored:
            return Split(stored["images"], stored["labels"])
    log.info("rendering and preprocessing %d uploads per style (cached at %s)", per_style, cache)
    chunks = [
        (style, source, min(RENDER_CHUNK, per_style - start), RENDER_SEEDS + seed * 10_000 + start)
        for style in wild.STYLES
        for start in range(0, per_style, RENDER_CHUNK)
    ]
    # Rendering a photo costs ~25 ms: every core takes a share (spawned: torch is loaded), at
    # the lowest OS priority, as training's workers run, so a serving cluster keeps answering.
    spawn = get_context("spawn")
    with ProcessPoolExecutor(os.cpu_count(), mp_context=spawn, initializer=_lowest) as pool:
        parts = list(pool.map(_render, *zip(*chunks, strict=True)))
    rendered = Split(
        np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts])
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{np.random.randint(1 << 30)}.tmp.npz")
    np.savez(tmp, images=rendered.images, labels=rendered.labels)
    tmp.rename(cache)
    return rendered


def _lowest() -> None:
    os.nice(19)


def _render(style: wild.Style, source: Split, n: int, seed: int) -> Split:
    images, labels = [], []
    for upload in wild.render(style, source.images, source.labels, n, seed):
        try:
            images.append(preprocess(upload.data).preview)
        except HandaiError:
            continue
        labels.append(upload.label)
    return Split(
        np.stack(images) if images else np.zeros((0, 28, 28), np.uint8),
        np.array(labels, dtype=np.int64),
    )


def joined(a: Split, b: Split) -> Split:
    return Split(np.concatenate([a.images, b.images]), np.concatenate([a.labels, b.labels]))


class DigitDataset(Dataset[tuple[torch.Tensor, int]]):
    """Preprocessed digits as 1x28x28 ink in [0, 1]; `model_input` augments and normalizes
    whole batches on the training device."""

    def __init__(self, split: Split) -> None:
        self.images = split.images
        self.labels = split.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.images[index]).float().div_(255.0).unsqueeze(0)
        return x, int(self.labels[index])


def model_input(ink: torch.Tensor, augment: BatchAugment | None = None) -> torch.Tensor:
    """A loaded batch of ink -> what the network takes: augmented (training), normalized."""
    if augment is not None:
        ink = augment(ink)
    return (ink - MNIST_MEAN) / MNIST_STD
