"""Shared, real fixtures: one local Ray cluster per session with the Serve graph deployed
by the `serve deploy` CLI from serve_config.yaml, and model files written by the registry."""

from __future__ import annotations

import copy
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml

from handai.model import build_model
from handai.registry import save

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
API_KEY = "test-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_model(model_dir: Path, model_id: str, seed: int, val_acc: float = 0.9) -> None:
    torch.manual_seed(seed)
    save(model_dir / model_id, build_model(), model_id=model_id, val_acc=val_acc, temperature=1.0)


@dataclass
class Service:
    url: str  # the open app (no API key)
    secure_url: str  # the same graph with the API key enforced
    dashboard: str
    model_dir: Path
    secure_model_dir: Path
    env: dict[str, str]

    def client(self, secure: bool = False, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.secure_url if secure else self.url, timeout=60, **kw)

    def serve_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "serve"), *args, "-a", self.dashboard],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


def test_config(model_dir: Path, secure_dir: Path, port: int) -> dict[str, Any]:
    """serve_config.yaml as shipped, with two apps (key off and on) sized for the test box."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"]["port"] = config["http_options"]["port"] and port
    config["http_options"]["host"] = "127.0.0.1"
    base = config["applications"][0]
    apps = []
    for name, prefix, env in (
        ("handai", "/", {"DIGITS__MODEL_DIR": str(model_dir)}),
        (
            "handai-secure",
            "/secure",
            {"DIGITS__MODEL_DIR": str(secure_dir), "SECURITY__API_KEY": API_KEY},
        ),
    ):
        app = copy.deepcopy(base)
        app["name"], app["route_prefix"] = name, prefix
        app["runtime_env"] = {
            "env_vars": {**env, "HANDAI_APP_NAME": name, "DIGITS__PREDICT_TIMEOUT_SECONDS": "20"}
        }
        for deployment in app["deployments"]:
            deployment["ray_actor_options"] = {"num_cpus": 0.1}
        apps.append(app)
    config["applications"] = apps
    return config


def wait_ready(url: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} was not ready within {timeout} s")


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    import ray

    work = tmp_path_factory.mktemp("service")
    model_dir, secure_dir = work / "models", work / "secure-models"
    for folder in (model_dir, secure_dir):
        make_model(folder, "test-a", seed=0, val_acc=0.91)
    make_model(model_dir, "test-b", seed=1, val_acc=0.92)
    port, dash_port = free_port(), free_port()
    dashboard = f"http://127.0.0.1:{dash_port}"
    os.environ.update(
        {
            "RAY_AUTH_MODE": "disabled",
            "RAY_DASHBOARD_URL": dashboard,
            "RAY_USAGE_STATS_ENABLED": "0",
        }
    )
    ray.init(
        num_cpus=2,
        include_dashboard=True,
        dashboard_port=dash_port,
        namespace="handai-tests",
        log_to_driver=False,
    )
    config_path = work / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(test_config(model_dir, secure_dir, port)))
    svc = Service(
        url=f"http://127.0.0.1:{port}",
        secure_url=f"http://127.0.0.1:{port}/secure",
        dashboard=dashboard,
        model_dir=model_dir,
        secure_model_dir=secure_dir,
        env={**os.environ, "RAY_ADDRESS": dashboard},
    )
    try:
        deployed = svc.serve_cli("deploy", str(config_path))
        assert deployed.returncode == 0, deployed.stderr
        wait_ready(svc.url)
        wait_ready(svc.secure_url)
        yield svc
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
