"""Make every live Model replica re-read the registry's ACTIVE record, without restarts.

The only in-place path in Ray Serve is the declarative one: read the deployed config from
the Serve REST API, change the Model's user_config, PUT the whole config back. Serve then
calls reconfigure() on every running replica (no new replicas, no dropped requests), which
starts loading ACTIVE's model beside the one it serves; the rollout ends when every replica
serves it. The user_config carries only a fresh `rollout` value.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import httpx
from ray import serve

from handai.errors import HandaiError

APP_NAME = os.environ.get("HANDAI_APP_NAME", "handai")
MODEL_DEPLOYMENT = "Model"
ROLLOUT_TIMEOUT_S = 100.0  # answered before Serve's request_timeout_s (120) cuts the request


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


def _model_deployment(details: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """This application's entry in the Serve REST API's details, and its Model's."""
    app: dict[str, Any] = details.get("applications", {}).get(APP_NAME, {})
    return app, app.get("deployments", {}).get(MODEL_DEPLOYMENT, {})


def _rolled_out(details: dict[str, Any], rollout: str) -> bool:
    app, deployment = _model_deployment(details)
    config = deployment.get("deployment_config", {})
    replicas = deployment.get("replicas", [])
    return (
        app.get("status") == "RUNNING"
        and deployment.get("status") == "HEALTHY"
        and (config.get("user_config") or {}).get("rollout") == rollout
        and bool(replicas)
        and all(r.get("state") == "RUNNING" for r in replicas)
    )


def _model_replicas(details: dict[str, Any]) -> set[str]:
    replicas = _model_deployment(details)[1].get("replicas", [])
    return {r["replica_id"] for r in replicas if r.get("state") == "RUNNING"}


async def _serving_everywhere(client: httpx.AsyncClient, model_id: str, deadline: float) -> bool:
    """Ask the replicas what they serve until every running one serves model_id: each loads a
    new model in the background (deployments/model.py), so reconfigure() returning says only
    that it has begun. A call goes to whichever replica Serve picks: twice as many calls as
    replicas per round reach them all, and rounds repeat until they have."""
    handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=APP_NAME)
    confirmed: set[str] = set()
    while time.monotonic() < deadline:
        status = await client.get("/api/serve/applications/")
        running = _model_replicas(status.json()) if status.status_code == 200 else set()
        if running and running <= confirmed:
            return True
        calls = [handle.serving.remote() for _ in range(2 * max(len(running), 1))]
        try:  # bounded: with no live replica a call would wait for one
            answers = await asyncio.wait_for(
                asyncio.gather(*calls, return_exceptions=True),
                timeout=max(0.1, min(10.0, deadline - time.monotonic())),
            )
        except TimeoutError:
            continue
        for answer in answers:
            if not isinstance(answer, dict):
                continue  # a replica stopping: the next round asks its successor
            if answer["model_id"] == model_id:
                confirmed.add(answer["replica"])
            elif answer["failed"] == model_id:
                raise HandaiError(
                    "service_not_ready",
                    f"a Model replica could not load {model_id!r} ({answer['error']}) and "
                    f"serves {answer['model_id']!r}; activate another model or retry",
                )
        await asyncio.sleep(0.25)
    return False


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
                    if await _serving_everywhere(client, model_id, deadline):
                        return
                    break
        except httpx.HTTPError as exc:
            raise HandaiError(
                "service_not_ready", f"Serve REST API at {dashboard_url()} failed: {exc}"
            ) from None
    raise HandaiError(
        "timeout",
        f"model {model_id!r} is recorded as active but was not live on every replica within "
        f"{timeout_s:g} s; replicas load it as they restart",
    )
