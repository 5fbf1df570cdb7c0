from pathlib import Path

import pytest

from handai.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(__import__("os").environ):
        if key.upper().startswith(
            ("APP__", "DIGITS__", "STORAGE__", "SECURITY__", "HANDAI_CONFIG", "HANDAI_HOME")
        ):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no config/handai.toml here unless a test writes one


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config" / "handai.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_match_the_original_service() -> None:
    s = load_settings()
    assert s.app.port == 8081
    assert s.app.threads == 0
    assert s.digits.tta is False
    assert s.digits.uncertain_threshold == 0.85
    assert s.digits.max_image_mb == 2
    assert s.digits.max_image_side_px == 1024
    assert s.digits.predict_timeout_seconds == 5
    assert s.digits.visualize_max_kb == 16
    assert s.security.api_key_enabled is False
    assert s.security.api_key is None
    assert s.digits.max_image_bytes == 2 * 1024 * 1024


def test_toml_file_is_read_and_env_overrides_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_toml(tmp_path, "[app]\nport = 9000\n[digits]\ntta = true\nuncertain_threshold = 0.5\n")
    assert load_settings().app.port == 9000
    monkeypatch.setenv("APP__PORT", "9100")
    monkeypatch.setenv("DIGITS__UNCERTAIN_THRESHOLD", "0.7")
    s = load_settings()
    assert (s.app.port, s.digits.tta, s.digits.uncertain_threshold) == (9100, True, 0.7)


def test_handai_config_names_another_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other.toml"
    other.write_text("[digits]\nmax_image_side_px = 512\n")
    monkeypatch.setenv("HANDAI_CONFIG", str(other))
    assert load_settings().digits.max_image_side_px == 512


def test_missing_named_config_file_stops_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HANDAI_CONFIG", "/nonexistent/handai.toml")
    with pytest.raises(ConfigError, match="HANDAI_CONFIG"):
        load_settings()


@pytest.mark.parametrize(
    ("env", "value", "key"),
    [
        ("APP__PORT", "eighty", "app.port"),
        ("DIGITS__MAX_IMAGE_MB", "-1", "digits.max_image_mb"),
        ("DIGITS__UNCERTAIN_THRESHOLD", "1.5", "digits.uncertain_threshold"),
        ("DIGITS__PREDICT_TIMEOUT_SECONDS", "0", "digits.predict_timeout_seconds"),
        ("APP__THREADS", "-2", "app.threads"),
    ],
)
def test_bad_values_name_the_key(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, key: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings()


def test_bad_value_in_toml_names_the_key(tmp_path: Path) -> None:
    write_toml(tmp_path, '[digits]\nmax_image_side_px = "big"\n')
    with pytest.raises(ConfigError, match=r"digits\.max_image_side_px"):
        load_settings()


def test_unknown_key_in_a_section_is_rejected(tmp_path: Path) -> None:
    write_toml(tmp_path, "[digits]\nmax_imgae_mb = 3\n")
    with pytest.raises(ConfigError, match="max_imgae_mb"):
        load_settings()


def test_api_key_in_env_enforces_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECURITY__API_KEY", "s3cret")
    s = load_settings()
    assert s.security.api_key_enabled is True
    assert s.security.api_key is not None
    assert s.security.api_key.get_secret_value() == "s3cret"


def test_api_key_in_env_can_be_explicitly_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECURITY__API_KEY", "s3cret")
    monkeypatch.setenv("SECURITY__API_KEY_ENABLED", "false")
    assert load_settings().security.api_key_enabled is False


def test_enabled_without_a_key_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECURITY__API_KEY_ENABLED", "true")
    with pytest.raises(ConfigError, match="api_key"):
        load_settings()


def test_secret_is_not_echoed_in_errors(tmp_path: Path) -> None:
    write_toml(tmp_path, "[security]\napi_key = 12345\n")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "12345" not in str(info.value)


def test_relative_paths_are_the_projects_wherever_the_process_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ray job runs in Ray's copy of the working directory: HANDAI_HOME keeps `../shared`
    and the storage pointing at the project's own folders."""
    project = tmp_path / "project"
    write_toml(project, '[app]\ndata_root = "../shared/data"\n[storage]\nroot = "."\n')
    elsewhere = tmp_path / "ray-copy"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HANDAI_HOME", str(project))
    s = load_settings()
    assert s.app.data_root == (tmp_path / "shared" / "data").resolve()
    assert s.storage.models == project.resolve() / "models"
    assert s.storage.runs == project.resolve() / "artifacts" / "runs"


def test_without_handai_home_paths_are_the_current_directorys(tmp_path: Path) -> None:
    assert load_settings().storage.root == str(tmp_path.resolve())


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[surprise]\nx = 1\n", "surprise"),
        ("[digits]\nmodel_dir = 'models'\n", "model_dir"),
        ("[storage]\nmodels = 'x'\n", "models"),
    ],
    ids=["unknown-section", "retired-key", "unknown-storage-key"],
)
def test_unknown_keys_stop_startup(tmp_path: Path, text: str, key: str) -> None:
    write_toml(tmp_path, text)
    with pytest.raises(ConfigError, match=key):
        load_settings()


def test_a_read_key_written_in_the_toml_is_enforced(tmp_path: Path) -> None:
    write_toml(tmp_path, '[security]\napi_key = "from-the-file-123"\n')
    assert load_settings().security.api_key_enabled is True


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SECURITY__ADMIN_KEY": "short"}, "at least 16"),
        (
            {
                "SECURITY__ADMIN_KEY": "same-key-0123456789",
                "SECURITY__API_KEY": "same-key-0123456789",
            },
            "differ",
        ),
    ],
    ids=["short", "same-as-read-key"],
)
def test_weak_admin_keys_stop_startup(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=message) as err:
        load_settings()
    assert "0123456789" not in str(err.value)  # keys are never echoed


def test_admin_is_off_unless_a_key_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().security.admin_key is None
    monkeypatch.setenv("SECURITY__ADMIN_KEY", "")
    assert load_settings().security.admin_key is None
    monkeypatch.setenv("SECURITY__ADMIN_KEY", "a-long-admin-key-42")
    key = load_settings().security.admin_key
    assert key is not None and key.get_secret_value() == "a-long-admin-key-42"
