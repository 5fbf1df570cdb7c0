"""Service settings: `config/handai.toml` (or $HANDAI_CONFIG), overridden by environment variables.

Environment variables nest with `__`: APP__PORT, DIGITS__TTA, STORAGE__ROOT, SECURITY__API_KEY, ...
Relative paths are relative to $HANDAI_HOME when it is set (the cluster that `make serve` starts
sets it to the project's folder, so a Ray job running in its own copy of the code still finds
the data and the registry), else to the current directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from upath import UPath

from handai.storage import location

DEFAULT_CONFIG = Path("config/handai.toml")
CONFIG_ENV = "HANDAI_CONFIG"
HOME_ENV = "HANDAI_HOME"


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the key."""


class AppSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_root: Path = Path("data")
    logs_root: Path = Path("logs")
    threads: Annotated[int, Field(ge=0)] = 0  # torch intra-op threads; 0 = torch's default
    port: Annotated[int, Field(ge=1, le=65535)] = 8081


class DigitsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The model served on a registry with no ACTIVE record yet; empty: the shipped seed model.
    initial_model: str = ""
    tta: bool = False
    uncertain_threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.85
    max_image_mb: Annotated[float, Field(gt=0.0, le=64.0)] = 2.0
    max_image_side_px: Annotated[int, Field(ge=28, le=16384)] = 1024
    predict_timeout_seconds: Annotated[float, Field(gt=0.0, le=600.0)] = 5.0
    visualize_max_kb: Annotated[int, Field(ge=0)] = 16

    @property
    def max_image_bytes(self) -> int:
        return int(self.max_image_mb * 1024 * 1024)


class StorageSettings(BaseModel):
    """One location for everything a cluster must share: every node reads the same registry."""

    model_config = ConfigDict(extra="forbid")

    # A local folder, one mounted on every node, or an object store URI (s3://bucket/prefix).
    root: str = "."

    @property
    def models(self) -> UPath:
        """The registry: `<model_id>/{model.pt, manifest.json}` and the ACTIVE record."""
        return location(self.root) / "models"

    @property
    def artifacts(self) -> UPath:
        """Training output: `<model_id>/` and `jobs/<job_id>/`."""
        return location(self.root) / "artifacts"

    @property
    def runs(self) -> UPath:
        """Ray Train's storage_path: checkpoints, so a restarted run resumes."""
        return self.artifacts / "runs"


class SecuritySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key_enabled: bool = False
    api_key: SecretStr | None = None

    @model_validator(mode="after")
    def _key_when_enabled(self) -> SecuritySettings:
        if self.api_key_enabled and not (self.api_key and self.api_key.get_secret_value()):
            raise ValueError("api_key_enabled is true but security.api_key is empty")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="forbid")

    app: AppSettings = AppSettings()
    digits: DigitsSettings = DigitsSettings()
    storage: StorageSettings = StorageSettings()
    security: SecuritySettings = SecuritySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win: explicit arguments, then the environment, then the TOML file.
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_config_path())
        return (init_settings, env_settings, toml)


def _config_path() -> Path:
    named = os.environ.get(CONFIG_ENV)
    if named:
        path = anchored(Path(named))
        if not path.is_file():
            raise ConfigError(f"{CONFIG_ENV}: expected an existing TOML file, got {named!r}")
        return path
    return anchored(DEFAULT_CONFIG)


def anchored(path: Path) -> Path:
    """A relative path as seen from $HANDAI_HOME (when set), made absolute."""
    home = os.environ.get(HOME_ENV)
    if home and not path.is_absolute():
        path = Path(home) / path
    return path.resolve()


def _anchor_paths(settings: Settings) -> Settings:
    app = settings.app.model_copy(
        update={
            "data_root": anchored(settings.app.data_root),
            "logs_root": anchored(settings.app.logs_root),
        }
    )
    root = settings.storage.root
    if "://" not in root:  # a URI names its own place
        root = str(anchored(Path(root)))
    storage = settings.storage.model_copy(update={"root": root})
    return settings.model_copy(update={"app": app, "storage": storage})


def _env_enables_key() -> bool:
    """SECURITY__API_KEY set means enforced, unless SECURITY__API_KEY_ENABLED says otherwise."""
    env = {k.upper(): v for k, v in os.environ.items()}
    return bool(env.get("SECURITY__API_KEY")) and "SECURITY__API_KEY_ENABLED" not in env


def load_settings() -> Settings:
    """Read and validate all settings, or raise ConfigError naming the first bad key."""
    try:
        settings = Settings()
        if _env_enables_key() and not settings.security.api_key_enabled:
            security = settings.security.model_copy(update={"api_key_enabled": True})
            settings = settings.model_copy(update={"security": security})
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        got = first.get("input")
        shown = "<secret>" if "api_key" in key else repr(got)
        raise ConfigError(f"invalid setting {key}: {first['msg']} (got {shown})") from None
    except ValueError as exc:  # a TOML syntax error
        raise ConfigError(f"invalid config file {_config_path()}: {exc}") from None
    return _anchor_paths(settings)
