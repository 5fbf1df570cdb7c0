"""End to end on a slice of MNIST: Ray jobs (CLI and HTTP), Redis events, artifact, promotion."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from handai.manifest import parse_manifest
from handai.registry import MANIFEST_FILE
from tests.conftest import BIN, Service
from tests.images import HWD, MNIST
from train.events import CHANNEL

SEVEN = (HWD / "7-001.png").read_bytes()


class Listener:
    """Collects every event published on the bot's channel."""

    def __init__(self, url: str) -> None:
        self.pubsub = redis.Redis.from_url(url).pubsub()
        self.pubsub.subscribe(CHANNEL)
        self.events: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            message = self.pubsub.get_message(timeout=0.5)
            if message and message["type"] == "message":
                self.events.append(json.loads(message["data"]))

    def of(self, model_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["model_id"] == model_id]


@pytest.fixture(scope="module")
def listener(service: Service) -> Iterator[Listener]:
    found = Listener(service.redis_url)
    yield found
    found.stop.set()


def test_cli_job_trains_publishes_and_promotes(service: Service, listener: Listener) -> None:
    job = subprocess.run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            service.dashboard,
            "--",
            sys.executable,
            "-m",
            "train.job",
            "--model-id",
            "e2e-cli",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--lr",
            "0.05",
            "--seed",
            "0",
            "--augment",
            "default",
            "--num-workers",
            "2",
            "--train-limit",
            "3000",
            "--data-root",
            str(MNIST),
            "--artifacts",
            str(service.artifacts),
            "--promote",
        ],
        env=service.env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    manifest = parse_manifest((service.artifacts / "e2e-cli" / MANIFEST_FILE).read_bytes())
    extra = manifest.model_dump()
    for key in (
        "test_acc",
        "ece",
        "epochs",
        "batch_size",
        "lr",
        "seed",
        "augment",
        "notes",
        "num_workers",
        "samples_per_sec",
        "duration_s",
        "loader",
    ):
        assert key in extra, key
    assert extra["num_workers"] == 2 and manifest.val_acc > 0.5
    time.sleep(1)
    kinds = [e["type"] for e in listener.of("e2e-cli")]
    for kind in ("started", "batch", "epoch", "best", "artifact", "completed"):
        assert f"digits.train.{kind}.v1" in kinds, kinds
    for event in listener.of("e2e-cli"):
        assert {"type", "request_id", "user_id", "model_id", "run_id", "ts"} <= set(event)
    with service.client() as c:
        assert c.get("/v1/models/active").json()["model_id"] == "e2e-cli"
        answer = c.post("/v1/read", files={"file": ("d.png", SEVEN, "image/png")}).json()
        assert answer["model_id"] == "e2e-cli"


def wait_for(c: httpx.Client, job_id: str, states: set[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = c.get(f"/api/v1/training/jobs/{job_id}").json()
        if body["status"] in states:
            return body
        time.sleep(2)
    raise AssertionError(f"{job_id} stayed {body.get('status')}: {body}")


def test_http_job_reports_progress_and_result(service: Service, listener: Listener) -> None:
    request = {
        "type": "digits.train.v1",
        "request_id": "req-1",
        "user_id": "user-1",
        "model_id": "e2e-http",
        "epochs": 1,
        "batch_size": 64,
        "lr": 0.05,
        "seed": 1,
        "augment": True,
        "notes": "from the test",
        "train_limit": 2000,
        "num_workers": 2,
    }
    with service.client() as c:
        submitted = c.post("/api/v1/training/jobs", json=request)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["job_id"]
        done = wait_for(c, job_id, {"succeeded", "failed", "stopped"}, timeout=900)
    assert done["status"] == "succeeded", done
    assert done["progress"]["epoch"] == 1
    assert done["result"]["model_id"] == "e2e-http" and "test_acc" in done["result"]
    events = listener.of("e2e-http")
    assert events and all(e["request_id"] == "req-1" and e["user_id"] == "user-1" for e in events)
    assert (service.artifacts / "e2e-http" / MANIFEST_FILE).is_file()


def test_http_job_can_be_stopped(service: Service) -> None:
    request = {"model_id": "e2e-stop", "epochs": 5, "train_limit": 2000}
    with service.client() as c:
        job_id = c.post("/api/v1/training/jobs", json=request).json()["job_id"]
        stopped = c.delete(f"/api/v1/training/jobs/{job_id}")
        assert stopped.status_code == 200, stopped.text
        assert wait_for(c, job_id, {"stopped", "failed"}, timeout=120)["status"] == "stopped"


@pytest.mark.parametrize(
    "body",
    [
        {"model_id": "x", "epochs": 0},
        {"model_id": "x", "batch_size": 100000},
        {"model_id": "../x"},
        {"type": "digits.other.v1", "model_id": "x"},
        {"model_id": "x", "surprise": 1},
    ],
    ids=["epochs", "batch-size", "model-id", "type", "unknown-field"],
)
def test_bad_jobs_are_refused(service: Service, body: dict[str, object]) -> None:
    with service.client() as c:
        resp = c.post("/api/v1/training/jobs", json=body)
    assert resp.status_code == 400 and resp.json()["code"] == "invalid_request", resp.text


def test_unknown_job_is_404(service: Service) -> None:
    with service.client() as c:
        resp = c.get("/api/v1/training/jobs/train-nope-00000000")
    assert resp.status_code == 404 and resp.json()["code"] == "not_found"


def test_training_endpoints_need_the_key(service: Service) -> None:
    with service.client(secure=True) as c:
        resp = c.post("/api/v1/training/jobs", json={"model_id": "x"})
    assert resp.status_code == 401 and resp.json()["code"] == "unauthorized"


def submit_cli(service: Service, job_id: str, *args: str) -> subprocess.Popen[str]:
    command = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        service.dashboard,
        "--submission-id",
        job_id,
        "--",
        sys.executable,
        "-m",
        "train.job",
        "--model-id",
        "e2e-resume",
        "--epochs",
        "2",
        "--run-name",
        "resume-run",
        "--batch-size",
        "64",
        "--lr",
        "0.05",
        "--train-limit",
        "2000",
        "--data-root",
        str(MNIST),
        "--artifacts",
        str(service.artifacts),
        *args,
    ]
    return subprocess.Popen(
        command, env=service.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_restarted_run_resumes_from_its_checkpoint(service: Service, listener: Listener) -> None:
    run = service.artifacts / "runs" / "resume-run"
    first = submit_cli(service, "resume-1")
    deadline = time.monotonic() + 600
    while not list(run.glob("checkpoint_*")) and time.monotonic() < deadline:
        assert first.poll() is None, first.communicate()[0][-3000:]
        time.sleep(1)
    assert list(run.glob("checkpoint_*")), "no checkpoint after the first epoch"
    # An interrupted run: the operator stops the job after its first checkpoint.
    stop = subprocess.run(
        [str(BIN / "ray"), "job", "stop", "--address", service.dashboard, "resume-1"],
        env=service.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert stop.returncode == 0, stop.stderr
    first.wait(timeout=120)
    second = submit_cli(service, "resume-2")
    output = second.communicate(timeout=900)[0]
    assert second.returncode == 0, output[-3000:]
    # Resumed, not restarted: epoch 1 ran once (first job), epoch 2 once (second job).
    events = listener.of("e2e-resume")
    epochs = [e["epoch"] for e in events if e["type"].endswith(".epoch.v1")]
    assert epochs == [1, 2], epochs
    assert [e["type"] for e in events].count("digits.train.started.v1") == 1
    manifest = parse_manifest((service.artifacts / "e2e-resume" / MANIFEST_FILE).read_bytes())
    assert manifest.model_dump()["epochs"] == 2
