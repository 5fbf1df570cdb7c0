import io
import json
from pathlib import Path

import pytest
import torch

from handai.errors import HandaiError
from handai.manifest import parse_manifest
from handai.model import build_model
from handai.preprocess import SIGNATURE
from handai.registry import (
    MANIFEST_FILE,
    MODEL_FILE,
    install,
    list_manifests,
    load,
    save,
    seed_registry,
    sha256_of,
)


def weights_of(model: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def manifest_for(mid: str, weights: bytes, **changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "schema_version": "1.1",
        "model_id": mid,
        "arch": "resnet18",
        "n_classes": 10,
        "version": "1",
        "created_at": "2026-11-25T00:00:00Z",
        "preprocess_hash": SIGNATURE,
        "val_acc": 0.99,
        "temperature": 1.2,
        "sha256": sha256_of(weights),
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


@pytest.fixture(scope="module")
def weights() -> bytes:
    torch.manual_seed(0)
    return weights_of(build_model())


def test_model_is_cifar_style_resnet18() -> None:
    model = build_model().eval()
    conv1 = model.conv1
    assert isinstance(conv1, torch.nn.Conv2d)
    assert (conv1.in_channels, conv1.kernel_size, conv1.stride) == (1, (3, 3), (1, 1))
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"schema_version": "2"}, "schema_version"),
        ({"arch": "vgg"}, "arch"),
        ({"n_classes": 1}, "n_classes"),
        ({"temperature": 0}, "temperature"),
        ({"val_acc": 1.5}, "val_acc"),
        ({"preprocess_hash": "old"}, "preprocess_hash"),
        ({"model_id": "../etc"}, "model_id"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"sha256": None}, "sha256"),
    ],
)
def test_invalid_manifest_names_the_field(
    weights: bytes, change: dict[str, object], field: str
) -> None:
    with pytest.raises(HandaiError) as err:
        parse_manifest(json.dumps(manifest_for("m1", weights, **change)))
    assert err.value.code == "invalid_model"
    assert field in err.value.message


def test_schema_v1_without_checksum_is_accepted(weights: bytes) -> None:
    manifest = parse_manifest(
        json.dumps(manifest_for("m1", weights, schema_version="1", sha256=None))
    )
    assert manifest.sha256 is None


def test_install_then_load_round_trips(tmp_path: Path, weights: bytes) -> None:
    raw = json.dumps(manifest_for("m1", weights)).encode()
    install(tmp_path, "m1", raw, weights)
    loaded = load(tmp_path, "m1")
    assert loaded.manifest.model_id == "m1"
    assert [m.model_id for m in list_manifests(tmp_path)] == ["m1"]


@pytest.mark.parametrize(
    ("schema", "cut", "message"),
    [("1.1", 10, "sha256"), ("1.1", 0, "sha256"), ("1", 10, "cannot be loaded")],
    ids=["truncated", "replaced", "truncated-v1-without-checksum"],
)
def test_corrupt_weights_never_enter_the_registry(
    tmp_path: Path, weights: bytes, schema: str, cut: int, message: str
) -> None:
    bad = weights[:-cut] if cut else b"garbage" * 10
    sha = None if schema == "1" else sha256_of(weights)
    raw = json.dumps(manifest_for("m1", weights, schema_version=schema, sha256=sha)).encode()
    with pytest.raises(HandaiError, match=message):
        install(tmp_path, "m1", raw, bad)
    assert list(tmp_path.iterdir()) == []


def test_wrong_shapes_are_refused_with_the_tensor_named(tmp_path: Path) -> None:
    other = weights_of(build_model(n_classes=7))
    raw = json.dumps(manifest_for("m7", other)).encode()  # manifest says 10 classes
    with pytest.raises(HandaiError, match=r"fc\.weight"):
        install(tmp_path, "m7", raw, other)
    assert list(tmp_path.iterdir()) == []


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    buf = io.BytesIO()
    torch.save({"x": Evil()}, buf)
    evil = buf.getvalue()
    with pytest.raises(HandaiError, match="cannot be loaded"):
        install(tmp_path, "evil", json.dumps(manifest_for("evil", evil)).encode(), evil)


def test_model_id_must_match_and_be_safe(tmp_path: Path, weights: bytes) -> None:
    raw = json.dumps(manifest_for("m1", weights)).encode()
    with pytest.raises(HandaiError, match="model_id"):
        install(tmp_path, "m2", raw, weights)
    for bad in ("../m1", "a/b", ".hidden", "", "x" * 65):
        with pytest.raises(HandaiError, match="model_id"):
            install(tmp_path, bad, raw, weights)
        with pytest.raises(HandaiError, match="model_id"):
            load(tmp_path, bad)


def test_existing_model_is_not_overwritten(tmp_path: Path, weights: bytes) -> None:
    raw = json.dumps(manifest_for("m1", weights)).encode()
    install(tmp_path, "m1", raw, weights)
    before = (tmp_path / "m1" / MODEL_FILE).read_bytes()
    with pytest.raises(HandaiError, match="already registered"):
        install(tmp_path, "m1", raw, weights)
    assert (tmp_path / "m1" / MODEL_FILE).read_bytes() == before


def test_list_skips_invalid_folders(tmp_path: Path, weights: bytes) -> None:
    install(tmp_path, "good", json.dumps(manifest_for("good", weights)).encode(), weights)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / MODEL_FILE).write_bytes(b"x")
    (broken / MANIFEST_FILE).write_text("{not json")
    (tmp_path / ".staging.tmp").mkdir()
    assert [m.model_id for m in list_manifests(tmp_path)] == ["good"]


def test_load_of_unknown_model(tmp_path: Path) -> None:
    with pytest.raises(HandaiError) as err:
        load(tmp_path, "nope")
    assert err.value.code == "model_not_found"


def test_save_writes_a_loadable_artifact_and_seed_copies_it(tmp_path: Path) -> None:
    manifest = save(
        tmp_path / "seed" / "s1",
        build_model(),
        model_id="s1",
        val_acc=0.9,
        temperature=1.5,
        test_acc=0.91,
    )
    assert manifest.sha256 == sha256_of((tmp_path / "seed" / "s1" / MODEL_FILE).read_bytes())
    assert seed_registry(tmp_path / "models", tmp_path / "seed") == ["s1"]
    assert load(tmp_path / "models", "s1").manifest.model_dump()["test_acc"] == 0.91
    assert seed_registry(tmp_path / "models", tmp_path / "seed") == []  # not empty any more
