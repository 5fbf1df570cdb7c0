"""Make every live Model replica re-read the registry's ACTIVE record, without restarts.

The only in-place path in Ray Serve is the declarative one: read the deployed config from
the Serve REST API, change the Model's user_config, PUT the whole config back. Serve then
calls reconfigure() on every running replica (no new replicas, no dropped requests). The
user_config carries only a fresh `rollout` value; the model itself comes from ACTIVE.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import httpx

from handai.errors import HandaiError

APP_NAME = os.environ.get("HANDAI_APP_NAME", "handai")
MODEL_DEPLOYMENT = "Model"
ROLLOUT_TIMEOUT_S = 120.0


def dashboard_url() -> str:
    return os.environ.get("RAY_DASHBOARD_URL", "http://127.0.0.1:8265")


def _with_rollout(details: dict[str, Any], rollout: str) -> dict[str, Any]:
    """The full deploy config as it runs now, with only the Model's rollout value changed."""
    apps = []
    for name, app in details.get("applications", {}).items():
        config = app.get("deployed_app_config")
        if config is None:
            raise HandaiError(
                "service_not_ready",
                f"application {name!r} was not deployed from a config file; "
                "start it with `serve run serve_config.yaml` or `serve deploy`",
            )
        if name == APP_NAME:
            deployments = config.setdefault("deployments", [])
            model = next((d for d in deployments if d.get("name") == MODEL_DEPLOYMENT), None)
            if model is None:
                model = {"name": MODEL_DEPLOYMENT}
                deployments.append(model)
            model["user_config"] = {**(model.get("user_config") or {}), "rollout": rollout}
        apps.append(config)
    if not any(a.get("name") == APP_NAME for a in apps):
        raise HandaiError("service_not_ready", f"no Serve application named {APP_NAME!r}")
    body: dict[str, Any] = {"applications": apps}
    for key in ("proxy_location", "http_options"):
        if details.get(key) is not None:
            body[key] = details[key]
    return body


def _rolled_out(details: dict[str, Any], rollout: str) -> bool:
    app = details.get("applications", {}).get(APP_NAME, {})
    deployment = app.get("deployments", {}).get(MODEL_DEPLOYMENT, {})
    config = deployment.get("deployment_config", {})
    replicas = deployment.get("replicas", [])
    return (
        app.get("status") == "RUNNING"
        and deployment.get("status") == "HEALTHY"
        and (config.get("user_config") or {}).get("rollout") == rollout
        and bool(replicas)
        and all(r.get("state") == "RUNNING" for r in replicas)
    )


async def rollout_model(model_id: str, timeout_s: float = ROLLOUT_TIMEOUT_S) -> None:
    """Reconfigure every Model replica (after ACTIVE names model_id) and wait for all of them."""
    rollout = f"{model_id}@{time.time_ns()}"  # always new, so Serve always reconfigures
    async with httpx.AsyncClient(base_url=dashboard_url(), timeout=30.0) as client:
        try:
            current = await client.get("/api/serve/applications/")
            current.raise_for_status()
            sent = await client.put(
                "/api/serve/applications/", json=_with_rollout(current.json(), rollout)
            )
            sent.raise_for_status()
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                status = await client.get("/api/serve/applications/")
                if status.status_code == 200 and _rolled_out(status.json(), rollout):
                    return
        except httpx.HTTPError as exc:
            raise HandaiError(
                "service_not_ready", f"Serve REST API at {dashboard_url()} failed: {exc}"
            ) from None
    raise HandaiError(
        "timeout",
        f"model {model_id!r} is recorded as active but was not live on every replica within "
        f"{timeout_s:g} s; replicas load it as they restart",
    )
