import io
import json
import zipfile
from pathlib import Path

import pytest
import torch

from handai.errors import HandaiError
from handai.manifest import parse_manifest
from handai.model import build_model
from handai.preprocess import SIGNATURE
from handai.registry import (
    ACTIVE_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    check_archive,
    install,
    list_manifests,
    load,
    recorded_active,
    resolve_active,
    save,
    seed_registry,
    set_active,
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
    [("1.1", 10, "sha256"), ("1.1", 0, "sha256"), ("1", 10, "zip archive")],
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
    assert seed_registry(tmp_path / "models", tmp_path / "seed") == []  # already there


def test_naive_created_at_is_taken_as_utc_and_lists(tmp_path: Path, weights: bytes) -> None:
    naive = manifest_for("naive", weights, created_at="2026-11-26T00:00:00")
    install(tmp_path, "naive", json.dumps(naive).encode(), weights)
    install(tmp_path, "aware", json.dumps(manifest_for("aware", weights)).encode(), weights)
    listed = list_manifests(tmp_path)  # sorting mixed naive and aware times raised TypeError
    assert [m.model_id for m in listed] == ["naive", "aware"]
    assert listed[0].created_at.tzinfo is not None


@pytest.mark.parametrize("n_classes", [2, 12, 1000])
def test_only_ten_class_models_are_accepted(weights: bytes, n_classes: int) -> None:
    with pytest.raises(HandaiError, match="n_classes"):
        parse_manifest(json.dumps(manifest_for("m1", weights, n_classes=n_classes)))


@pytest.mark.parametrize("reserved", ["ACTIVE", "active", "Active"])
def test_the_record_name_is_not_a_model_id(tmp_path: Path, weights: bytes, reserved: str) -> None:
    raw = json.dumps(manifest_for(reserved, weights)).encode()
    with pytest.raises(HandaiError, match="model_id"):
        install(tmp_path, reserved, raw, weights)
    with pytest.raises(HandaiError, match="model_id"):
        set_active(tmp_path, reserved)
    assert not (tmp_path / ACTIVE_FILE).exists()


@pytest.fixture
def seeded(tmp_path: Path) -> tuple[Path, Path]:
    """A shipped seed model and a registry seeded from it, with no ACTIVE record yet."""
    seed_dir, models = tmp_path / "seed", tmp_path / "models"
    save(seed_dir / "shipped", build_model(), model_id="shipped", val_acc=0.99, temperature=1.0)
    assert seed_registry(models, seed_dir) == ["shipped"]
    return seed_dir, models


def test_an_upload_never_goes_live_unless_activated(
    seeded: tuple[Path, Path], weights: bytes
) -> None:
    seed_dir, models = seeded
    newer = manifest_for("newer", weights, created_at="2099-01-01T00:00:00Z")
    install(models, "newer", json.dumps(newer).encode(), weights)  # activate=false
    assert resolve_active(models, seed_dir=seed_dir) == "shipped"
    assert recorded_active(models) == "shipped"  # the record now says so, for every replica
    set_active(models, "newer")
    assert resolve_active(models, seed_dir=seed_dir) == "newer"


def test_initial_model_setting_is_used_before_any_activation(
    seeded: tuple[Path, Path], weights: bytes
) -> None:
    seed_dir, models = seeded
    install(models, "chosen", json.dumps(manifest_for("chosen", weights)).encode(), weights)
    assert resolve_active(models, "chosen", seed_dir=seed_dir) == "chosen"


def test_a_record_that_cannot_be_served_falls_back(
    seeded: tuple[Path, Path], weights: bytes
) -> None:
    seed_dir, models = seeded
    install(models, "valid", json.dumps(manifest_for("valid", weights)).encode(), weights)
    # A model made for an older preprocessing SIGNATURE, still recorded as active.
    old = manifest_for("old", weights, preprocess_hash="handai-pre-v1:otsu")
    (models / "old").mkdir()
    (models / "old" / MODEL_FILE).write_bytes(weights)
    (models / "old" / MANIFEST_FILE).write_text(json.dumps(old))
    set_active(models, "old")
    assert resolve_active(models, seed_dir=seed_dir) == "shipped"
    assert recorded_active(models) == "shipped"
    (models / ACTIVE_FILE).write_text("gone\n")  # a record naming a deleted model
    assert resolve_active(models, seed_dir=seed_dir) == "shipped"


def test_nothing_servable_is_not_ready(tmp_path: Path) -> None:
    with pytest.raises(HandaiError) as err:
        resolve_active(tmp_path / "models", seed_dir=tmp_path / "no-seed")
    assert err.value.code == "service_not_ready"


def test_seeding_adds_missing_seed_models_to_a_used_registry(
    tmp_path: Path, weights: bytes
) -> None:
    models = tmp_path / "models"
    install(models, "mine", json.dumps(manifest_for("mine", weights)).encode(), weights)
    save(tmp_path / "seed" / "s2", build_model(), model_id="s2", val_acc=0.9, temperature=1.0)
    assert seed_registry(models, tmp_path / "seed") == ["s2"]
    assert {m.model_id for m in list_manifests(models)} == {"mine", "s2"}


def test_compressed_archives_are_refused_before_unpickling(tmp_path: Path, weights: bytes) -> None:
    """A deflated state dict can unpack to ~800x its size inside the Ingress: refused unread."""
    source = zipfile.ZipFile(io.BytesIO(weights))
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as archive:
        for entry in source.infolist():
            archive.writestr(entry.filename, source.read(entry.filename))
    bomb = packed.getvalue()
    assert len(bomb) < len(weights)
    raw = json.dumps(manifest_for("bomb", bomb)).encode()
    with pytest.raises(HandaiError, match="compressed"):
        install(tmp_path, "bomb", raw, bomb)
    with pytest.raises(HandaiError, match="zip archive"):
        check_archive(b"not a zip at all" * 100)
