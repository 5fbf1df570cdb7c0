"""Service settings: `config/handai.toml` (or $HANDAI_CONFIG), overridden by environment variables.

Environment variables nest with `__`: APP__PORT, DIGITS__TTA, STORAGE__ROOT, SECURITY__API_KEY, ...
Relative paths are relative to $HANDAI_HOME when it is set (the cluster that `make serve` starts
sets it to the project's folder, so a Ray job running in its own copy of the code still finds
the data and the registry), else to the current directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

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
MIN_ADMIN_KEY = 16
Backend = Literal["auto", "openvino", "torch"]  # what runs the forward pass (handai.backends)


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the key."""


class AppSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_root: Path = Path("data")
    logs_root: Path = Path("logs")
    threads: Annotated[int, Field(ge=0)] = 0  # torch intra-op threads; 0 = torch's default
    # Runs the forward pass: "auto" times torch and OpenVINO (fp32, bf16) on this machine per
    # batch size and keeps the fastest; "torch" or "openvino" limits the choice to one.
    backend: Backend = "auto"
    port: Annotated[int, Field(ge=1, le=65535)] = 8081


class DigitsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The model served on a registry with no ACTIVE record yet; empty: the shipped seed model.
    initial_model: str = ""
    tta: bool = False
    uncertain_threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.85
    max_image_mb: Annotated[float, Field(gt=0.0, le=64.0)] = 2.0
    max_image_side_px: Annotated[int, Field(ge=28, le=16384)] = 1024
    max_model_mb: Annotated[float, Field(gt=0.0, le=1024.0)] = 64.0  # the shipped one is 45
    predict_timeout_seconds: Annotated[float, Field(gt=0.0, le=600.0)] = 5.0
    visualize_max_kb: Annotated[int, Field(ge=0)] = 16

    @property
    def max_image_bytes(self) -> int:
        return int(self.max_image_mb * 1024 * 1024)

    @property
    def max_model_bytes(self) -> int:
        return int(self.max_model_mb * 1024 * 1024)


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
    """Two keys, both sent as X-Api-Key: the read key (the bot's) guards reads when enforced;
    the admin key alone allows uploads, activations and training jobs, which with no admin
    key are refused (403 admin_disabled). Secure by default: nothing changes the live model
    until an operator sets an admin key."""

    model_config = ConfigDict(extra="forbid")

    api_key_enabled: bool = False  # true whenever api_key is set, unless set false explicitly
    api_key: SecretStr | None = None
    admin_key: SecretStr | None = None

    @model_validator(mode="after")
    def _keys(self) -> SecuritySettings:
        if self.admin_key is not None and not self.admin_key.get_secret_value():
            self.admin_key = None  # an empty SECURITY__ADMIN_KEY unsets it
        read_key = self.api_key.get_secret_value() if self.api_key else ""
        if read_key and "api_key_enabled" not in self.model_fields_set:
            self.api_key_enabled = True  # a key written in the TOML counts like one in the env
        if self.api_key_enabled and not read_key:
            raise ValueError("api_key_enabled is true but security.api_key is empty")
        if self.admin_key is not None:
            admin = self.admin_key.get_secret_value()
            if len(admin) < MIN_ADMIN_KEY:
                raise ValueError(f"admin_key: expected at least {MIN_ADMIN_KEY} characters")
            if admin == read_key:
                raise ValueError("admin_key: must differ from api_key (the bot's read key)")
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


def load_settings() -> Settings:
    """Read and validate all settings, or raise ConfigError naming the first bad key."""
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        got = first.get("input")
        shown = "<secret>" if key.startswith("security") else repr(got)
        raise ConfigError(f"invalid setting {key}: {first['msg']} (got {shown})") from None
    except ValueError as exc:  # a TOML syntax error
        raise ConfigError(f"invalid config file {_config_path()}: {exc}") from None
    return _anchor_paths(settings)
