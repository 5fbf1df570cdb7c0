"""The registry on an S3-compatible object store (a real moto server on loopback), as a
cluster shares it: every process sees what another wrote, with nothing cached."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from handai import registry
from handai.config import load_settings
from handai.errors import HandaiError
from handai.model import build_model
from handai.storage import location, write_whole
from tests.conftest import BIN, free_port

BUCKET = "handai-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An S3 endpoint (moto's server, from the dev dependencies) with one bucket."""
    server = shutil.which("moto_server", path=str(BIN))
    assert server, "moto_server is missing: `make test` installs the dev dependencies"
    port = free_port()
    proc = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.put(f"{endpoint}/{BUCKET}", timeout=5).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield f"s3://{BUCKET}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_settings_keep_a_uri_as_it_is(s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE__ROOT", f"{s3}/cluster")
    storage = load_settings().storage
    assert str(storage.models) == f"{s3}/cluster/models"
    assert str(storage.runs) == f"{s3}/cluster/artifacts/runs"


def test_the_registry_works_the_same_on_an_object_store(s3: str) -> None:
    models = location(f"{s3}/registry") / "models"
    assert registry.seed_registry(models, registry.SEED_DIR) == [
        m.model_id for m in registry.list_manifests(registry.SEED_DIR)
    ]
    shipped = registry.resolve_active(models)  # no record yet: the seed, now recorded
    assert registry.recorded_active(models) == shipped
    artifact = location(f"{s3}/registry") / "artifacts" / "up-1"
    registry.save(artifact, build_model(), model_id="up-1", val_acc=0.5, temperature=1.0)
    raw = (artifact / registry.MANIFEST_FILE).read_bytes()
    weights = (artifact / registry.MODEL_FILE).read_bytes()
    registry.install(models, "up-1", raw, weights)
    # A second "process": a fresh location sees the upload at once (no cached listing).
    again = location(f"{s3}/registry") / "models"
    assert {m.model_id for m in registry.list_manifests(again)} == {shipped, "up-1"}
    assert registry.resolve_active(again) == shipped  # uploaded, not activated
    with pytest.raises(HandaiError, match="already registered"):
        registry.install(again, "up-1", raw, weights)
    registry.set_active(models, "up-1")
    assert registry.resolve_active(again) == "up-1"
    assert registry.load(again, "up-1").manifest.model_id == "up-1"


def test_a_half_written_entry_is_not_a_model(s3: str) -> None:
    models = location(f"{s3}/partial") / "models"
    (models / "half").mkdir(parents=True, exist_ok=True)
    (models / "half" / registry.MODEL_FILE).write_bytes(b"weights, but no manifest yet")
    assert registry.list_manifests(models) == []
    progress = location(f"{s3}/partial") / "artifacts" / "jobs" / "j" / "progress.json"
    write_whole(progress, json.dumps({"epoch": 1}).encode())
    assert json.loads(progress.read_text()) == {"epoch": 1}
