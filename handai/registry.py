"""The model registry on disk: `<model_dir>/<model_id>/{model.pt, manifest.json}` and `ACTIVE`.

Nothing enters the registry before it has loaded and run: uploads are checked in a
temporary folder beside the registry and then renamed into place, so an interrupted
or failed install leaves the registry as it was.

`ACTIVE` is the one record of which model is live. Activation writes it, then asks Serve to
reconfigure the Model replicas, which read it; a replica that starts later reads it too.

torch is imported where weights are read or written, not with the module: the Ingress lists,
activates and records models through it, and torch would cost it seconds at every start and
~600 MB it never uses for reads.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handai.errors import HandaiError
from handai.manifest import (
    MODEL_ID_PATTERN,
    RESERVED_IDS,
    Manifest,
    new_manifest,
    parse_manifest,
)
from handai.storage import Place, remove_tree, write_whole

if TYPE_CHECKING:
    from torch import nn

MODEL_FILE = "model.pt"
MANIFEST_FILE = "manifest.json"
ACTIVE_FILE = "ACTIVE"  # the last activated model_id: survives restarts and redeploys
SEED_DIR = Path(__file__).resolve().parents[1] / "seed"
_ID = re.compile(MODEL_ID_PATTERN)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    manifest: Manifest
    module: nn.Module
    sha256: str  # of model.pt: what compiled forms of it are cached under


def check_model_id(model_id: str) -> str:
    if not _ID.fullmatch(model_id) or model_id.lower() in RESERVED_IDS:
        raise HandaiError(
            "invalid_model",
            f"model_id: expected letters, digits, '.', '_' or '-' (1-64, "
            f"starting with a letter or digit), got {model_id!r}",
        )
    return model_id


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_checked(manifest: Manifest, weights: bytes) -> nn.Module:
    """Checksum, safe unpickling, shapes, strict load and a trial forward pass."""
    import torch

    from handai.model import build_model

    if manifest.sha256 is not None and sha256_of(weights) != manifest.sha256:
        raise HandaiError("invalid_model", "model.pt: sha256 does not match the manifest")
    check_archive(weights)
    try:
        state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types on corrupt or unsafe files
        raise HandaiError("invalid_model", f"model.pt: cannot be loaded: {exc}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HandaiError("invalid_model", "model.pt: expected a state_dict of tensors")
    module = build_model(manifest.n_classes)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise HandaiError(
            "invalid_model",
            f"model.pt: keys do not match {manifest.arch}: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}",
        )
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise HandaiError(
                "invalid_model",
                f"model.pt: {key}: expected shape {tuple(tensor.shape)}, "
                f"got {tuple(state[key].shape)}",
            )
    module.load_state_dict(state, strict=True)
    module.eval()
    with torch.inference_mode():
        out = module(torch.zeros(2, 1, 28, 28))
    if out.shape != (2, manifest.n_classes) or not torch.isfinite(out).all():
        raise HandaiError("invalid_model", "model.pt: trial forward pass gave non-finite output")
    return module


def check_archive(weights: bytes) -> None:
    """torch.save writes a zip of stored (uncompressed) entries. Anything else is refused
    before torch.load reads it: a deflated entry can unpack to hundreds of times its size."""
    try:
        with zipfile.ZipFile(io.BytesIO(weights)) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, ValueError):
        raise HandaiError(
            "invalid_model", "model.pt: expected the zip archive torch.save writes"
        ) from None
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED or entry.file_size != entry.compress_size:
            raise HandaiError(
                "invalid_model",
                f"model.pt: entry {entry.filename!r} is compressed; expected stored entries",
            )
    if sum(e.file_size for e in entries) > len(weights):
        raise HandaiError("invalid_model", "model.pt: entries larger than the archive")


def load(model_dir: Place, model_id: str) -> LoadedModel:
    folder = model_dir / check_model_id(model_id)
    try:
        manifest = parse_manifest((folder / MANIFEST_FILE).read_bytes())
        weights = (folder / MODEL_FILE).read_bytes()
    except FileNotFoundError:
        raise HandaiError("model_not_found", f"no model {model_id!r} in the registry") from None
    if manifest.model_id != model_id:
        raise HandaiError(
            "invalid_model",
            f"manifest field model_id: expected {model_id!r}, got {manifest.model_id!r}",
        )
    return LoadedModel(manifest, load_checked(manifest, weights), sha256_of(weights))


def list_manifests(model_dir: Place) -> list[Manifest]:
    """Every model whose manifest validates, newest first. Weights are checked at load."""
    found: list[Manifest] = []
    if not model_dir.is_dir():
        return found
    for name in sorted(entry.name for entry in model_dir.iterdir()):
        manifest = _valid_manifest(model_dir, name)
        if manifest is not None:
            found.append(manifest)
    return sorted(found, key=lambda m: m.created_at, reverse=True)


def _valid_manifest(model_dir: Place, model_id: str) -> Manifest | None:
    """The manifest of a registered model this code can serve, or None."""
    folder = model_dir / model_id
    if not (_ID.fullmatch(model_id) and model_id.lower() not in RESERVED_IDS):
        return None
    if not (folder / MODEL_FILE).is_file():
        return None
    try:
        manifest = parse_manifest((folder / MANIFEST_FILE).read_bytes())
    except (HandaiError, OSError):
        return None
    return manifest if manifest.model_id == model_id else None


def install(model_dir: Place, model_id: str, manifest_raw: bytes, weights: bytes) -> Manifest:
    """Validate everything, then move the model into the registry in one rename."""
    check_model_id(model_id)
    manifest = parse_manifest(manifest_raw)
    if manifest.model_id != model_id:
        raise HandaiError(
            "invalid_model",
            f"manifest field model_id: expected {model_id!r}, got {manifest.model_id!r}",
        )
    load_checked(manifest, weights)
    _commit(model_dir, model_id, {MODEL_FILE: weights, MANIFEST_FILE: manifest_raw})
    return manifest


def _commit(model_dir: Place, model_id: str, files: dict[str, bytes]) -> None:
    """Put a model folder into the registry so that a reader sees all of it or none.

    On a filesystem: written beside the registry's entries, then renamed into place. On an
    object store (no rename): written in place, the manifest last, since an entry without
    its manifest is neither listed nor loaded, and the next install overwrites it.
    """
    target = model_dir / model_id
    if (target / MANIFEST_FILE).exists():
        raise HandaiError("invalid_model", f"model_id {model_id!r} is already registered")
    if not isinstance(model_dir, Path):
        target.mkdir(parents=True, exist_ok=True)
        for name in (MODEL_FILE, MANIFEST_FILE):
            (target / name).write_bytes(files[name])
        return
    target, staging = model_dir / model_id, model_dir / f".{model_id}.{uuid.uuid4().hex}"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        for name in (MODEL_FILE, MANIFEST_FILE):
            (staging / name).write_bytes(files[name])
        staging.rename(target)
    except OSError:
        remove_tree(staging)
        if target.exists():
            raise HandaiError(
                "invalid_model", f"model_id {model_id!r} is already registered"
            ) from None
        raise


def save(
    folder: Place,
    module: nn.Module,
    *,
    model_id: str,
    val_acc: float,
    temperature: float,
    **extra: Any,
) -> Manifest:
    """Write a model folder (training's artifacts) with a manifest that carries its sha256."""
    import torch

    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().clone() for k, v in module.state_dict().items()}, buffer)
    weights = buffer.getvalue()
    manifest = new_manifest(
        model_id, val_acc=val_acc, temperature=temperature, sha256=sha256_of(weights), **extra
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_FILE).write_bytes(weights)
    (folder / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest


def set_active(model_dir: Place, model_id: str) -> None:
    """Record the active model atomically (write a temp file, then rename over)."""
    check_model_id(model_id)
    model_dir.mkdir(parents=True, exist_ok=True)
    write_whole(model_dir / ACTIVE_FILE, (model_id + "\n").encode())


def recorded_active(model_dir: Place) -> str | None:
    """What ACTIVE says, or None when there is no record yet."""
    try:
        return (model_dir / ACTIVE_FILE).read_text().strip() or None
    except OSError:
        return None


def resolve_active(model_dir: Place, initial: str = "", seed_dir: Path = SEED_DIR) -> str:
    """The live model: what ACTIVE records, when that model is registered and servable.

    With no record (a fresh registry), or a record this code can no longer serve (a model
    refused by a new preprocessing SIGNATURE), the initial model from the settings or else
    the newest shipped seed model takes its place, and the record says so. Never "the newest
    upload": an upload goes live only when it is activated.
    """
    recorded = recorded_active(model_dir)
    if recorded is not None and _valid_manifest(model_dir, recorded) is not None:
        return recorded
    candidates = [initial] if initial else []
    candidates += [m.model_id for m in list_manifests(seed_dir)]
    for model_id in candidates:
        if _valid_manifest(model_dir, model_id) is not None:
            if recorded is not None:
                log.warning("ACTIVE named %r, which cannot be served; now %r", recorded, model_id)
            set_active(model_dir, model_id)
            return model_id
    raise HandaiError(
        "service_not_ready",
        f"no servable model recorded in {model_dir / ACTIVE_FILE} and no initial or seed model "
        "in the registry",
    )


def seed_registry(model_dir: Place, seed_dir: Path) -> list[str]:
    """Copy the shipped models the registry lacks; returns the ids copied."""
    copied: list[str] = []
    for manifest in list_manifests(seed_dir):
        if (model_dir / manifest.model_id / MANIFEST_FILE).exists():
            continue
        folder = seed_dir / manifest.model_id
        try:
            files = {name: (folder / name).read_bytes() for name in (MODEL_FILE, MANIFEST_FILE)}
            _commit(model_dir, manifest.model_id, files)
            copied.append(manifest.model_id)
        except HandaiError:  # another replica seeded it first
            continue
    return copied
