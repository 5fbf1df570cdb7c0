import gzip
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from handai.preprocess import normalize, preprocess
from tests.images import MNIST
from train import evaluate as train_evaluate
from train import numbers as train_numbers
from train import shapes as train_shapes
from train import wild
from train.augment import build_augment
from train.augment_config import AugmentConfig
from train.data import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    RENDER_SEEDS,
    DataError,
    joined,
    load_split,
    load_wild,
    model_input,
    read_idx,
    read_raw,
    train_val,
)


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, n: int, gz: bool) -> None:
    rng = np.random.default_rng(0)
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 6:22, 12:16] = 255  # a bar: something to preprocess
    labels = rng.integers(0, 10, n).astype(np.uint8)
    for stem, arr, magic in (
        ("train-images-idx3-ubyte", images, IMAGES_MAGIC),
        ("train-labels-idx1-ubyte", labels, LABELS_MAGIC),
    ):
        raw = idx_bytes(arr, magic)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)


@pytest.mark.parametrize("gz", [True, False])
def test_reads_gzip_and_raw_idx(tmp_path: Path, gz: bool) -> None:
    write_mnist(tmp_path, 50, gz)
    images, labels = read_raw(tmp_path, "train")
    assert images.shape == (50, 28, 28) and labels.shape == (50,)


def test_wrong_magic_is_named(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((2, 28, 28)), LABELS_MAGIC))
    with pytest.raises(DataError, match="magic"):
        read_idx(path, IMAGES_MAGIC)


def test_truncated_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((2, 28, 28)), IMAGES_MAGIC)[:-5])
    with pytest.raises(DataError, match="data bytes"):
        read_idx(path, IMAGES_MAGIC)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="header"):
        read_idx(path, IMAGES_MAGIC)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        read_raw(tmp_path, "train")


def test_real_mnist_test_labels_start_as_documented() -> None:
    _, labels = read_raw(MNIST, "test")
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert len(labels) == 10000


def test_validation_split_is_seeded_and_disjoint(tmp_path: Path) -> None:
    write_mnist(tmp_path, 500, gz=True)
    full = load_split(tmp_path, "train", tmp_path / "cache")
    a_train, a_val = train_val(full, seed=3)
    _b_train, b_val = train_val(full, seed=3)
    np.testing.assert_array_equal(a_val.labels, b_val.labels)
    assert len(a_train.labels) + len(a_val.labels) == 500
    assert len(a_val.labels) == 100


def test_cache_is_reused(tmp_path: Path) -> None:
    write_mnist(tmp_path, 40, gz=False)
    first = load_split(tmp_path, "train", tmp_path / "cache")
    cached = list((tmp_path / "cache").glob("*.npy"))
    assert len(cached) == 1
    np.testing.assert_array_equal(
        load_split(tmp_path, "train", tmp_path / "cache").images, first.images
    )


def test_training_input_equals_serving_input(tmp_path: Path) -> None:
    """Train/serve parity: a cached MNIST digit is what /v1/read makes of its PNG."""
    images, _ = read_raw(MNIST, "test")
    split = load_split(MNIST, "test", tmp_path, limit=20)
    for raw, prepared in zip(images[:20], split.images, strict=True):
        png = io.BytesIO()
        Image.fromarray(raw).save(png, format="PNG")  # MNIST polarity: light on dark
        served = preprocess(png.getvalue())
        assert served.inverted
        np.testing.assert_allclose(served.preview, prepared, atol=1)


def test_model_input_augments_then_normalizes_like_serving() -> None:
    ink = torch.zeros(4, 1, 28, 28)
    ink[:, 0, 6:22, 12:16] = 1.0
    expected = torch.from_numpy(normalize(ink.numpy()))
    torch.testing.assert_close(model_input(ink), expected)  # what preprocess() hands the model
    torch.manual_seed(0)
    moved = model_input(ink, build_augment(AugmentConfig(aug_translate=0.2)))
    assert moved.shape == ink.shape and not torch.allclose(moved, expected)
    assert torch.isclose(moved.min(), expected.min())  # paper stays the normalized background


def test_wild_renders_are_what_the_read_path_makes_of_them_and_are_cached(
    tmp_path: Path,
) -> None:
    """Rendered uploads of the given digits, read as served, with their digits' labels."""
    source = load_split(MNIST, "test", tmp_path, limit=50)
    rendered = load_wild(source, 3, seed=1, cache_dir=tmp_path)
    assert rendered.images.shape[1:] == (28, 28) and rendered.images.dtype == np.uint8
    assert 8 <= len(rendered.labels) <= 12  # 3 per style; a refused upload is left out
    assert set(rendered.labels.tolist()) <= set(source.labels.tolist())
    first = next(
        wild.render(wild.STYLES[0], source.images, source.labels, 3, RENDER_SEEDS + 10_000)
    )
    np.testing.assert_array_equal(rendered.images[0], preprocess(first.data).preview)
    assert rendered.labels[0] == first.label
    assert len(list(tmp_path.glob("wild-3-*.npz"))) == 1
    again = load_wild(source, 3, seed=1, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.images, rendered.images)
    both = joined(source, rendered)
    assert len(both.labels) == len(source.labels) + len(rendered.labels)


@pytest.mark.parametrize(
    ("tool", "argv"),
    [
        (train_numbers.main, ["--out", "OUT"]),
        (train_shapes.main, ["--out", "OUT"]),
        (train_evaluate.main, ["--model", "seed/r18-wild-v2c"]),
    ],
)
def test_the_offline_tools_name_a_missing_data_file_without_a_traceback(
    tool: Callable[[list[str]], object],
    argv: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A wrong --data is the user's to fix: the usage line and the file missing, exit 2."""
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    with pytest.raises(SystemExit) as stop:
        tool([*argv, "--data", str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "error: missing MNIST file" in err
    assert str(tmp_path / "mnist") in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # stopped before writing anything


def test_evaluate_names_a_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        train_evaluate.main(["--model", str(tmp_path / "nope"), "--data", "../shared/data"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"--model {tmp_path / 'nope'}: no model 'nope' in the registry" in err
