"""Switch the live Model deployment to another model without restarts.

The only in-place path in Ray Serve is the declarative one: read the deployed config from
the Serve REST API, change the Model's user_config, PUT the whole config back. Serve then
calls reconfigure() on every running replica (no new replicas, no dropped requests).
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


def _with_model_id(details: dict[str, Any], model_id: str) -> dict[str, Any]:
    """The full deploy config as it runs now, with only the Model's model_id changed."""
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
            model["user_config"] = {**(model.get("user_config") or {}), "model_id": model_id}
        apps.append(config)
    if not any(a.get("name") == APP_NAME for a in apps):
        raise HandaiError("service_not_ready", f"no Serve application named {APP_NAME!r}")
    body: dict[str, Any] = {"applications": apps}
    for key in ("proxy_location", "http_options"):
        if details.get(key) is not None:
            body[key] = details[key]
    return body


def _rolled_out(details: dict[str, Any], model_id: str) -> bool:
    app = details.get("applications", {}).get(APP_NAME, {})
    deployment = app.get("deployments", {}).get(MODEL_DEPLOYMENT, {})
    config = deployment.get("deployment_config", {})
    replicas = deployment.get("replicas", [])
    return (
        app.get("status") == "RUNNING"
        and deployment.get("status") == "HEALTHY"
        and (config.get("user_config") or {}).get("model_id") == model_id
        and bool(replicas)
        and all(r.get("state") == "RUNNING" for r in replicas)
    )


async def rollout_model(model_id: str, timeout_s: float = ROLLOUT_TIMEOUT_S) -> None:
    """Set the Model's user_config.model_id and wait until every replica has switched."""
    async with httpx.AsyncClient(base_url=dashboard_url(), timeout=30.0) as client:
        try:
            current = await client.get("/api/serve/applications/")
            current.raise_for_status()
            sent = await client.put(
                "/api/serve/applications/", json=_with_model_id(current.json(), model_id)
            )
            sent.raise_for_status()
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                status = await client.get("/api/serve/applications/")
                if status.status_code == 200 and _rolled_out(status.json(), model_id):
                    return
        except httpx.HTTPError as exc:
            raise HandaiError(
                "service_not_ready", f"Serve REST API at {dashboard_url()} failed: {exc}"
            ) from None
    raise HandaiError("timeout", f"model {model_id!r} was not live on every replica in time")
