"""The manifest that travels with every model file, and its validation."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from handai.errors import HandaiError
from handai.preprocess import SIGNATURE

SCHEMA_VERSION = "1.1"
MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# Names the registry keeps for itself (compared without case: some filesystems ignore it).
RESERVED_IDS = frozenset({"active"})


def not_reserved(model_id: str) -> str:
    if model_id.lower() in RESERVED_IDS:
        raise ValueError(f"{model_id!r} is a name the registry keeps for itself")
    return model_id


ModelId = Annotated[str, Field(pattern=MODEL_ID_PATTERN), AfterValidator(not_reserved)]


class Manifest(BaseModel):
    # Training adds its own fields (test_acc, ece, lr, ...): keep them, validate the core.
    model_config = ConfigDict(extra="allow", frozen=True)

    schema_version: Literal["1", "1.0", "1.1"]
    model_id: ModelId
    arch: Literal["resnet18"]
    n_classes: Literal[10]  # a digit model: the API answers ten probabilities
    version: Annotated[str, Field(min_length=1)]
    created_at: datetime
    preprocess_hash: str
    val_acc: Annotated[float, Field(ge=0.0, le=1.0)]
    temperature: Annotated[float, Field(gt=0.0, le=100.0)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None

    @field_validator("created_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        # Models are ordered by it: a naive time is taken as UTC rather than compared with
        # aware ones (a TypeError that once crashed listing and seeding).
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

    @model_validator(mode="after")
    def _check(self) -> Manifest:
        if self.preprocess_hash != SIGNATURE:
            raise ValueError(
                f"preprocess_hash: expected {SIGNATURE!r}, got {self.preprocess_hash!r}"
            )
        if self.schema_version == "1.1" and self.sha256 is None:
            raise ValueError("sha256: required by schema 1.1")
        return self

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def parse_manifest(raw: bytes | str) -> Manifest:
    """Parse and validate, or raise invalid_model naming the offending field."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HandaiError("invalid_model", f"manifest is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HandaiError("invalid_model", "manifest: expected a JSON object")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "manifest"
        raise HandaiError("invalid_model", f"manifest field {field}: {err['msg']}") from None


def new_manifest(
    model_id: str, *, val_acc: float, temperature: float, sha256: str, **extra: Any
) -> Manifest:
    return Manifest(
        schema_version=SCHEMA_VERSION,
        model_id=model_id,
        arch="resnet18",
        n_classes=10,
        version="1",
        created_at=datetime.now(UTC),
        preprocess_hash=SIGNATURE,
        val_acc=val_acc,
        temperature=temperature,
        sha256=sha256,
        **extra,
    )
