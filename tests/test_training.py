"""End to end on a slice of MNIST: Ray jobs (HTTP, and the CLI as the README and an operator
resuming a run use it), Redis events, artifact, promotion."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from handai.config import load_settings
from handai.manifest import parse_manifest
from handai.model import build_model
from handai.registry import MANIFEST_FILE, MODEL_FILE, recorded_active, save, set_active
from tests.conftest import BIN, ROOT, Listener, Service
from tests.images import HWD, MNIST
from train.promote import promote

SEVEN = (HWD / "7-001.png").read_bytes()


@pytest.fixture(scope="module")
def listener(service: Service) -> Iterator[Listener]:
    found = Listener(service.redis_url)
    yield found
    found.stop.set()


def wait_for(c: httpx.Client, job_id: str, states: set[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = c.get(f"/api/v1/training/jobs/{job_id}").json()
        if body["status"] in states:
            return body
        time.sleep(2)
    raise AssertionError(f"{job_id} stayed {body.get('status')}: {body}")


BOT_USER = 2**64 - 1  # chat user ids are 64-bit integers


class Reader:
    """Reads the same digit over and over in the background, recording every status."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.statuses: list[int] = []
        self.models: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with self.service.client() as c:
            while not self.stop.is_set():
                r = c.post("/v1/read", files={"file": ("d.png", SEVEN, "image/png")})
                self.statuses.append(r.status_code)
                if r.status_code == 200:
                    self.models.add(r.json()["model_id"])
                time.sleep(0.2)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def test_http_job_trains_beside_serving_and_promotes(service: Service, listener: Listener) -> None:
    """The whole path on the resources `make serve` gives: reads keep answering while two
    workers share the CPU Serve leaves free, and the new model goes live."""
    request = {
        "type": "digits.train.v1",
        "request_id": "req-1",
        "user_id": BOT_USER,
        "model_id": "e2e-http",
        "epochs": 1,
        "batch_size": 64,
        "lr": 0.05,
        "seed": 1,
        "augment": True,
        "notes": "from the test",
        "train_limit": 3000,
        "num_workers": 2,
        "promote": True,
    }
    with service.client() as c:
        # The gate compares with the live model: start from a random-weight one.
        activated = c.post("/v1/admin/models/activate", json={"model_id": "test-a"}, timeout=180)
        assert activated.status_code == 200, activated.text
        reader = Reader(service)
        try:
            submitted = c.post("/api/v1/training/jobs", json=request)
            assert submitted.status_code == 202, submitted.text
            job_id = submitted.json()["job_id"]
            done = wait_for(c, job_id, {"succeeded", "failed", "stopped"}, timeout=900)
        finally:
            reader.finish()
        assert done["status"] == "succeeded", done
        assert done["progress"]["epoch"] == 1
        assert done["result"]["model_id"] == "e2e-http" and "test_acc" in done["result"]
        assert done["result"]["promotion"]["promoted"] is True, done["result"]
        assert reader.statuses and set(reader.statuses) == {200}, reader.statuses
        assert "e2e-http" in reader.models  # reads moved to the new model as it went live
        assert c.get("/v1/models/active").json()["model_id"] == "e2e-http"
        answer = c.post("/v1/read", files={"file": ("d.png", SEVEN, "image/png")}).json()
        assert answer["model_id"] == "e2e-http"
    time.sleep(1)
    events = listener.of("e2e-http")
    kinds = [e["type"] for e in events]
    for kind in ("started", "batch", "epoch", "best", "artifact", "completed"):
        assert f"digits.train.{kind}.v1" in kinds, kinds
    for event in events:
        assert {"type", "request_id", "user_id", "model_id", "run_id", "ts"} <= set(event)
    # Echoed unchanged: an integer stays an integer, all 64 bits of it.
    assert all(e["request_id"] == "req-1" and e["user_id"] == BOT_USER for e in events)
    manifest = parse_manifest((service.artifacts / "e2e-http" / MANIFEST_FILE).read_bytes())
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
    # 18 steps per worker on 2,400 images: learned (chance is 0.1), though seeds range 0.3-0.6.
    assert extra["num_workers"] == 2 and manifest.val_acc > 0.25


def test_a_registered_model_id_is_refused_before_training(service: Service) -> None:
    with service.client() as c:
        resp = c.post("/api/v1/training/jobs", json={"model_id": "test-a", "train_limit": 500})
    assert resp.status_code == 400 and resp.json()["code"] == "invalid_request", resp.text
    assert "already registered" in resp.json()["message"]


def test_http_job_can_be_stopped(service: Service, listener: Listener) -> None:
    request = {"model_id": "e2e-stop", "user_id": 42, "epochs": 5, "train_limit": 2000}
    with service.client() as c:
        job_id = c.post("/api/v1/training/jobs", json=request).json()["job_id"]
        stopped = c.delete(f"/api/v1/training/jobs/{job_id}")
        assert stopped.status_code == 200, stopped.text
        assert wait_for(c, job_id, {"stopped", "failed"}, timeout=120)["status"] == "stopped"
    # The bot hears how every job ends, a stopped one included: exactly once.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not listener.of("e2e-stop"):
        time.sleep(0.5)
    final = [e for e in listener.of("e2e-stop") if e["type"] == "digits.train.failed.v1"]
    assert len(final) == 1 and final[0]["code"] == "stopped", listener.of("e2e-stop")
    assert final[0]["user_id"] == 42


@pytest.mark.parametrize(
    "body",
    [
        {"model_id": "x", "epochs": 0},
        {"model_id": "x", "batch_size": 100000},
        {"model_id": "../x"},
        {"type": "digits.other.v1", "model_id": "x"},
        {"model_id": "x", "surprise": 1},
        {"model_id": "ACTIVE"},
        {"model_id": "x", "user_id": 2**64},
        {"model_id": "x", "user_id": 1.5},
    ],
    ids=[
        "epochs",
        "batch-size",
        "model-id",
        "type",
        "unknown-field",
        "record-name",
        "user-id-over-64-bits",
        "user-id-float",
    ],
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


def submit_cli(
    service: Service,
    job_id: str,
    *args: str,
    model_id: str = "e2e-resume",
    run_name: str = "resume-run",
) -> subprocess.Popen[str]:
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
        model_id,
        "--epochs",
        "2",
        "--run-name",
        run_name,
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


def train_worker_pids(service: Service) -> list[int]:
    from ray.util.state import list_actors

    actors = list_actors(
        address=service.dashboard,
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
        raise_on_missing_output=False,
    )
    return [int(a.pid) for a in actors if a.pid]


def test_a_stopped_run_and_a_killed_worker_both_resume_from_the_last_checkpoint(
    service: Service, listener: Listener
) -> None:
    """Two interruptions of one run, each costing at most the epoch under way (one run for
    both: a training job is minutes on a 2-core machine). The operator stops the job after
    its first checkpoint and submits it again under the same run name; then, mid-epoch in
    that resumed job, a worker process is killed (OOM killer, a lost node): Ray Train
    restarts the group (FailureConfig), which resumes from the checkpoint again."""
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
    time.sleep(1)  # the stopped job's last events delivered
    seen = len(listener.of("e2e-resume"))
    second = submit_cli(service, "resume-2")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # the resumed job is training epoch 2
        assert second.poll() is None, second.communicate()[0][-3000:]
        if any(e["type"].endswith(".batch.v1") for e in listener.of("e2e-resume")[seen:]):
            break
        time.sleep(0.5)
    pids = train_worker_pids(service)
    assert pids, "no training worker found"
    os.kill(pids[0], signal.SIGKILL)
    output = second.communicate(timeout=900)[0]
    assert second.returncode == 0, output[-3000:]
    events = listener.of("e2e-resume")
    # Epoch 1 ran once (first job) and epoch 2 was completed once (by the restarted group).
    epochs = [e["epoch"] for e in events if e["type"].endswith(".epoch.v1")]
    assert epochs == [1, 2], epochs
    resumed = [e for e in events[seen:] if e["type"].endswith(".batch.v1")]
    assert resumed and all(e["epoch"] == 2 for e in resumed), resumed
    types = [e["type"] for e in events]
    assert types.count("digits.train.started.v1") == 1 and types[-1].endswith("completed.v1")
    manifest = parse_manifest((service.artifacts / "e2e-resume" / MANIFEST_FILE).read_bytes())
    assert manifest.model_dump()["epochs"] == 2
    assert "resuming at epoch 2" in output  # the restarted group's log, in the job's


def readme_block(marker: str) -> str:
    """The fenced shell block that follows `<!-- marker -->` in README.md."""
    text = (ROOT / "README.md").read_text()
    after = text[text.index(f"<!-- {marker} -->") :]
    fenced = after.split("```", 2)[1]
    return fenced.split("\n", 1)[1]  # without the language tag


def test_readme_job_submit_runs_as_written(service: Service) -> None:
    """The README's commands, copied into a shell at the project's root: relative paths
    are the project's, not those of Ray's copy of the working directory."""
    script = readme_block("job-submit")
    assert "ray job submit" in script and "--working-dir ." in script
    done = subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=ROOT,
        env=service.env,  # RAY_ADDRESS: this cluster's dashboard, as 127.0.0.1:8265 for a user
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    model_id = script.split("--model-id", 1)[1].split()[0]
    manifest = parse_manifest((service.artifacts / model_id / MANIFEST_FILE).read_bytes())
    assert manifest.model_dump()["train_images"] > 0


def test_promoting_a_taken_model_id_with_other_weights_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It once rolled out the registered model of that id and said `promoted: true`."""
    monkeypatch.setenv("STORAGE__ROOT", str(tmp_path))
    settings = load_settings()
    models = settings.storage.models
    torch.manual_seed(1)
    save(models / "dup", build_model(), model_id="dup", val_acc=0.5, temperature=1.0)
    set_active(models, "dup")
    torch.manual_seed(2)
    artifact = settings.storage.artifacts / "dup"
    save(artifact, build_model(), model_id="dup", val_acc=0.9, temperature=1.0)
    before = (models / "dup" / MODEL_FILE).read_bytes()
    outcome = promote(artifact, settings)
    assert outcome["promoted"] is False and "other weights" in outcome["reason"], outcome
    assert (models / "dup" / MODEL_FILE).read_bytes() == before
    assert recorded_active(models) == "dup"
