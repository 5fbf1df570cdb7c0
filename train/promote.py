"""Promotion: gate a trained artifact against the live model, register it, switch to it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from handai import registry
from handai.config import Settings
from handai.errors import HandaiError
from handai.manifest import Manifest, parse_manifest
from handai.storage import Place

log = logging.getLogger(__name__)
VAL_ACC_MARGIN = 0.002  # a candidate may trail the live model's val_acc by at most this


def gate(
    candidate: Manifest, active: Manifest | None, margin: float = VAL_ACC_MARGIN
) -> str | None:
    """Why the candidate must not go live, or None when it may."""
    if active is None:
        return None
    if candidate.val_acc < active.val_acc - margin:
        return (
            f"val_acc {candidate.val_acc:.4f} is more than {margin:.4f} below the active "
            f"model {active.model_id}'s {active.val_acc:.4f}"
        )
    return None


def active_manifest(model_dir: Place, initial: str) -> Manifest | None:
    try:
        model_id = registry.resolve_active(model_dir, initial)
        return parse_manifest((model_dir / model_id / registry.MANIFEST_FILE).read_bytes())
    except (HandaiError, OSError):
        return None


def _already_registered(model_dir: Place, candidate: Manifest) -> str | None:
    """Why a registered model of the same id blocks this one (other weights), or None."""
    folder = model_dir / candidate.model_id
    if not folder.exists():
        return None
    try:
        existing = parse_manifest((folder / registry.MANIFEST_FILE).read_bytes())
    except (HandaiError, OSError):
        return (
            f"model_id {candidate.model_id!r} is taken in the registry by a model that cannot "
            "be read; train under a new model_id"
        )
    if existing.sha256 != candidate.sha256:
        return (
            f"model_id {candidate.model_id!r} is already registered with other weights; "
            "train under a new model_id"
        )
    return None


def promote(artifact: Place, settings: Settings) -> dict[str, Any]:
    """Check the artifact loads and passes the gate, then activate it on every replica."""
    from deployments.rollout import rollout_model  # the serving side, only when promoting

    raw = (artifact / registry.MANIFEST_FILE).read_bytes()
    weights = (artifact / registry.MODEL_FILE).read_bytes()
    try:
        candidate = parse_manifest(raw)
        registry.load_checked(candidate, weights)
    except HandaiError as exc:
        return {"promoted": False, "reason": exc.message}
    model_dir = settings.storage.models
    reason = gate(candidate, active_manifest(model_dir, settings.digits.initial_model))
    if reason is None:
        reason = _already_registered(model_dir, candidate)
    if reason is not None:
        log.warning("not promoting %s: %s", candidate.model_id, reason)
        return {"promoted": False, "reason": reason}
    if not (model_dir / candidate.model_id).exists():
        registry.install(model_dir, candidate.model_id, raw, weights)
    registry.set_active(model_dir, candidate.model_id)  # the record first: see registry
    asyncio.run(rollout_model(candidate.model_id))
    log.info("promoted %s", candidate.model_id)
    return {"promoted": True, "model_id": candidate.model_id}
