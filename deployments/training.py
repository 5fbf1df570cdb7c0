"""Training jobs over HTTP: each POST becomes a Ray job running `python -m train.job`.

Ray's JobSubmissionClient makes blocking HTTP calls, its constructor included: every use
runs in a worker thread, never on the ingress's event loop.
"""

import asyncio
import json
import os
import shlex
import sys
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from ray.job_submission import JobStatus, JobSubmissionClient

from deployments.deps import Admin, AppSettings
from deployments.rollout import dashboard_url
from handai.config import Settings
from handai.errors import HandaiError
from handai.storage import Place
from train.events import Events
from train.request import JobRequest

router = APIRouter(prefix="/api/v1/training")
STATES = {
    JobStatus.PENDING: "pending",
    JobStatus.RUNNING: "running",
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "stopped",
}
FINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED)
STOP_WAIT_S = 15.0  # Ray sends SIGTERM, then SIGKILL after a few seconds
# Environment a job inherits from the service, so it trains, promotes and reports alike.
PASSED_ENV = ("REDIS_URL", "HANDAI_CONFIG", "HANDAI_HOME", "RAY_DASHBOARD_URL", "HANDAI_APP_NAME")


def job_dir(settings: Settings, job_id: str) -> Place:
    if not job_id.startswith("train-") or not job_id.replace("-", "").isalnum():
        raise HandaiError("not_found", f"no training job {job_id!r}")
    return settings.storage.artifacts / "jobs" / job_id


def _submit(**kwargs: Any) -> str:
    return str(JobSubmissionClient(dashboard_url()).submit_job(**kwargs))


def _info(job_id: str) -> Any:
    return JobSubmissionClient(dashboard_url()).get_job_info(job_id)


def _stop(job_id: str) -> bool:
    return bool(JobSubmissionClient(dashboard_url()).stop_job(job_id))


def _write_request(folder: Place, job: JobRequest) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "request.json").write_text(job.model_dump_json())


def _say_stopped(job_id: str, folder: Place) -> None:
    """A job stopped before its entrypoint could say so itself (still pending, or importing)
    would leave the bot waiting forever: once it has ended, publish its terminal event (which
    Events leaves unsaid where the job said its own)."""
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline and _info(job_id).status not in FINAL:
        time.sleep(0.5)
    try:
        job = JobRequest.model_validate_json((folder / "request.json").read_text())
    except (OSError, ValidationError):
        return  # not submitted through this API: its own stop handler is all there is
    Events(
        request_id=job.request_id,
        user_id=job.user_id,
        model_id=job.model_id,
        run_id=job_id,
        terminal_file=folder / "terminal.json",
    ).publish("failed", code="stopped", error="the job was stopped before it started training")


def _read_json(path: Place) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found


@router.post("/jobs", status_code=202)
async def submit(request: Request, settings: AppSettings, _: Admin) -> dict[str, Any]:
    try:
        job = JobRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise HandaiError("invalid_request", f"{where}: {err['msg']}") from None
    if (settings.storage.models / job.model_id).exists():
        raise HandaiError(
            "invalid_request",
            f"model_id: {job.model_id!r} is already registered; train under a new model_id",
        )
    job_id = f"train-{job.model_id.replace('.', '-').replace('_', '-')}-{uuid.uuid4().hex[:8]}"
    folder = job_dir(settings, job_id)
    await asyncio.to_thread(_write_request, folder, job)
    args = [
        sys.executable,  # this replica's interpreter: the one Handai is installed in
        "-m",
        "train.job",
        "--job-json",
        job.model_dump_json(),
        "--run-name",
        job_id,
        "--progress-file",
        str(folder / "progress.json"),
        "--result-file",
        str(folder / "result.json"),
        "--terminal-file",
        str(folder / "terminal.json"),
        "--data-root",
        str((settings.app.data_root / "mnist").resolve()),
        "--artifacts",
        str(settings.storage.artifacts),
    ]
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env["STORAGE__ROOT"] = str(settings.storage.root)  # the registry this service serves from
    try:
        await asyncio.to_thread(
            _submit,
            entrypoint=shlex.join(args),
            submission_id=job_id,
            runtime_env={"env_vars": env},
            metadata={"model_id": job.model_id},
        )
    except (RuntimeError, ConnectionError) as exc:
        raise HandaiError("training_unavailable", f"could not submit the job: {exc}") from None
    return {"job_id": job_id, "status": "pending", "model_id": job.model_id}


@router.get("/jobs/{job_id}")
async def status(job_id: str, settings: AppSettings, _: Admin) -> dict[str, Any]:
    folder = job_dir(settings, job_id)
    try:
        info = await asyncio.to_thread(_info, job_id)
    except RuntimeError:
        raise HandaiError("not_found", f"no training job {job_id!r}") from None
    return {
        "job_id": job_id,
        "status": STATES.get(info.status, str(info.status).lower()),
        "model_id": (info.metadata or {}).get("model_id"),
        "message": info.message,
        "progress": _read_json(folder / "progress.json"),
        "result": _read_json(folder / "result.json"),
    }


@router.delete("/jobs/{job_id}")
async def stop(job_id: str, settings: AppSettings, _: Admin) -> dict[str, Any]:
    job_dir(settings, job_id)
    try:
        stopped = await asyncio.to_thread(_stop, job_id)
        if stopped:
            await asyncio.to_thread(_say_stopped, job_id, job_dir(settings, job_id))
    except RuntimeError:
        raise HandaiError("not_found", f"no training job {job_id!r}") from None
    return {"job_id": job_id, "stopping": bool(stopped)}
