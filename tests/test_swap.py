"""Model uploads and swaps on the live graph: in place, on every replica, nothing dropped."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from handai.model import build_model
from handai.registry import ACTIVE_FILE, MANIFEST_FILE, MODEL_FILE, save
from tests.conftest import API_KEY, Service
from tests.images import HWD

SEVEN = (HWD / "7-001.png").read_bytes()


def active_ids(c: httpx.Client, n: int = 12) -> set[str]:
    """model_id as answered by reads: spread over every Model replica."""
    return {
        c.post("/v1/read", files={"file": ("d.png", SEVEN, "image/png")}).json()["model_id"]
        for _ in range(n)
    }


def activate(c: httpx.Client, model_id: str) -> httpx.Response:
    return c.post("/v1/admin/models/activate", json={"model_id": model_id}, timeout=180)


def replica_pids(service: Service, app: str = "handai") -> set[int]:
    details = httpx.get(f"{service.dashboard}/api/serve/applications/", timeout=30).json()
    model = details["applications"][app]["deployments"]["Model"]
    return {r["pid"] for r in model["replicas"] if r["state"] == "RUNNING"}


def test_swap_under_load_drops_nothing(service: Service) -> None:
    with service.client() as c:
        before = c.get("/v1/models/active").json()["model_id"]
        target = "test-a" if before != "test-a" else "test-b"
        pids = replica_pids(service)
        results: Counter[str] = Counter()
        failures: list[str] = []
        stop = threading.Event()

        def hammer() -> None:
            with service.client() as mine:
                while not stop.is_set():
                    r = mine.post("/v1/read", files={"file": ("d.png", SEVEN, "image/png")})
                    if r.status_code == 200:
                        results[r.json()["model_id"]] += 1
                    else:
                        failures.append(f"{r.status_code} {r.text[:200]}")

        readiness: list[int] = []

        def poll_ready() -> None:  # as a load balancer would, every 0.2 s
            with service.client() as mine:
                while not stop.is_set():
                    readiness.append(mine.get("/readyz").status_code)
                    time.sleep(0.2)

        workers = [threading.Thread(target=hammer) for _ in range(4)]
        workers.append(threading.Thread(target=poll_ready))
        for w in workers:
            w.start()
        time.sleep(2)
        swap = activate(c, target)
        time.sleep(2)
        stop.set()
        for w in workers:
            w.join(timeout=60)
        assert swap.status_code == 200, swap.text
        assert failures == []
        assert readiness and set(readiness) == {200}, readiness  # never out of rotation
        assert results[before] > 0 and results[target] > 0
        assert active_ids(c) == {target}
        assert c.get("/v1/models/active").json()["model_id"] == target
        assert replica_pids(service) == pids  # reconfigured in place: no replica restarted
        # Rollback is the same call.
        assert activate(c, before).status_code == 200
        assert active_ids(c) == {before}


def test_upload_validates_then_activates(service: Service, tmp_path: Path) -> None:
    torch.manual_seed(7)
    manifest = save(
        tmp_path / "up-1", build_model(), model_id="up-1", val_acc=0.93, temperature=1.1
    )
    raw = (tmp_path / "up-1" / MANIFEST_FILE).read_bytes()
    weights = (tmp_path / "up-1" / MODEL_FILE).read_bytes()
    with service.client() as c:
        bad = c.post(
            "/v1/admin/models/upload",
            files={
                "manifest": ("m.json", raw, "application/json"),
                "model": ("model.pt", weights[:-100], "application/octet-stream"),
            },
            data={"model_id": "up-1", "activate": "true"},
        )
        assert bad.status_code == 400 and bad.json()["code"] == "invalid_model", bad.text
        assert not (service.model_dir / "up-1").exists()
        wrong_hash = json.loads(raw)
        wrong_hash["preprocess_hash"] = "handai-pre-v0"
        stale = c.post(
            "/v1/admin/models/upload",
            files={
                "manifest": ("m.json", json.dumps(wrong_hash).encode(), "a/json"),
                "model": ("model.pt", weights, "application/octet-stream"),
            },
            data={"model_id": "up-1"},
        )
        assert stale.json()["code"] == "invalid_model" and "preprocess_hash" in stale.text
        ok = c.post(
            "/v1/admin/models/upload",
            files={
                "manifest": ("m.json", raw, "application/json"),
                "model": ("model.pt", weights, "application/octet-stream"),
            },
            data={"model_id": "up-1", "activate": "true"},
            timeout=180,
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["manifest"]["sha256"] == manifest.sha256
        assert active_ids(c) == {"up-1"}
        listing = c.get("/v1/models").json()
        assert listing["active_model_id"] == "up-1"
        again = c.post(
            "/v1/admin/models/upload",
            files={
                "manifest": ("m.json", raw, "application/json"),
                "model": ("model.pt", weights, "application/octet-stream"),
            },
            data={"model_id": "up-1"},
        )
        assert again.status_code == 400 and "already registered" in again.text
        assert activate(c, "test-a").status_code == 200


@pytest.mark.parametrize("missing", ["manifest", "model"])
def test_upload_needs_both_parts(service: Service, missing: str) -> None:
    parts = {
        "manifest": ("m.json", b"{}", "application/json"),
        "model": ("model.pt", io.BytesIO(b"x").read(), "application/octet-stream"),
    }
    parts.pop(missing)
    with service.client() as c:
        resp = c.post("/v1/admin/models/upload", files=parts, data={"model_id": "x"})
    assert resp.status_code == 400 and resp.json()["code"] == "malformed_multipart"


def upload(
    c: httpx.Client,
    folder: Path,
    as_id: str,
    activate: bool = False,
    timeout: float = 180,
    **manifest: Any,
) -> httpx.Response:
    """Upload a saved model folder, its manifest changed by `manifest` first."""
    raw = json.loads((folder / MANIFEST_FILE).read_bytes())
    raw.update(manifest)
    return c.post(
        "/v1/admin/models/upload",
        files={
            "manifest": ("m.json", json.dumps(raw).encode(), "application/json"),
            "model": ("model.pt", (folder / MODEL_FILE).read_bytes(), "application/octet-stream"),
        },
        data={"model_id": as_id, "activate": str(activate).lower()},
        timeout=timeout,
    )


def saved(tmp_path: Path, model_id: str, seed: int) -> Path:
    torch.manual_seed(seed)
    save(tmp_path / model_id, build_model(), model_id=model_id, val_acc=0.5, temperature=1.0)
    return tmp_path / model_id


def test_naive_timestamp_upload_lists_and_survives_a_restart(
    service: Service, tmp_path: Path
) -> None:
    folder = saved(tmp_path, "naive-1", seed=11)
    with service.client() as c:
        resp = upload(c, folder, "naive-1", created_at="2099-01-01T00:00:00")
        assert resp.status_code == 200, resp.text
        listing = c.get("/v1/models")
        assert listing.status_code == 200, listing.text
        assert "naive-1" in [m["model_id"] for m in listing.json()["models"]]
        live = c.get("/v1/models/active").json()["model_id"]
        assert live != "naive-1"  # uploaded with activate=false: not live, not even newest-first
        # A Model replica that dies and comes back reads the ACTIVE record: the same model.
        for pid in replica_pids(service):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready = c.get("/readyz")
            if ready.status_code == 200 and ready.json()["model_id"]:
                break
            time.sleep(1)
        assert c.get("/v1/models/active").json()["model_id"] == live
        assert active_ids(c) == {live}


@pytest.mark.parametrize(
    ("model_id", "change", "field"),
    [("bad-classes", {"n_classes": 12}, "n_classes"), ("ACTIVE", {}, "model_id")],
    ids=["twelve-classes", "record-name"],
)
def test_uploads_that_would_break_the_registry_are_refused(
    service: Service, tmp_path: Path, model_id: str, change: dict[str, Any], field: str
) -> None:
    folder = saved(tmp_path, "m", seed=12)
    with service.client() as c:
        resp = upload(c, folder, model_id, model_id=model_id, **change)
        assert resp.status_code == 400 and resp.json()["code"] == "invalid_model", resp.text
        assert field in resp.json()["message"]
        activated = activate(c, model_id)
        assert activated.status_code in (400, 404), activated.text
    assert not (service.model_dir / model_id / MODEL_FILE).exists()
    recorded = (service.model_dir / ACTIVE_FILE).read_text().strip()
    assert (service.model_dir / recorded / MODEL_FILE).is_file()  # still names a real model


def settled_on(service: Service, c: httpx.Client, target: str) -> None:
    """Reads, the ACTIVE record and the listing all name target within 120 s."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and active_ids(c, 3) != {target}:
        time.sleep(1)
    # The record and the replicas agree: both moved, nothing was left half done.
    assert active_ids(c) == {target}
    assert (service.model_dir / ACTIVE_FILE).read_text().strip() == target
    assert c.get("/v1/models").json()["active_model_id"] == target


@pytest.mark.parametrize("after_s", [0.02, 0.3], ids=["while-checked", "while-rolled-out"])
def test_an_activation_the_client_abandons_still_completes(
    service: Service, after_s: float
) -> None:
    """Serve cancels the request of a client that goes; the activation finishes regardless,
    whether the client went while the model was being checked (CI once caught it there, on
    a slow machine) or while it was rolled out."""
    with service.client() as c:
        before = c.get("/v1/models/active").json()["model_id"]
        target = "test-b" if before != "test-b" else "test-a"
        with pytest.raises(httpx.TimeoutException):
            c.post("/v1/admin/models/activate", json={"model_id": target}, timeout=after_s)
        settled_on(service, c, target)
        assert activate(c, before).status_code == 200


def test_an_upload_the_client_abandons_is_installed_and_activated(
    service: Service, tmp_path: Path
) -> None:
    folder = saved(tmp_path, "abandoned-1", seed=13)
    with service.client() as c:
        before = c.get("/v1/models/active").json()["model_id"]
        # Gone 1 s after sending it whole (a read timeout): the form is read by then (before,
        # nothing can be installed), and the model is being checked, converted or rolled out.
        with pytest.raises(httpx.TimeoutException):
            upload(c, folder, "abandoned-1", activate=True, timeout=1.0)
        settled_on(service, c, "abandoned-1")
        assert activate(c, before).status_code == 200


def test_a_killed_model_replica_costs_503s_not_500s(service: Service) -> None:
    """Reads caught by the death answer 503 service_not_ready with Retry-After, never 500; the
    restarted replica answers again within 15 s."""
    statuses: list[tuple[int, str, str | None]] = []
    stop = threading.Event()

    def hammer() -> None:
        with service.client() as mine:
            while not stop.is_set():
                r = mine.post("/v1/read", files={"file": ("d.png", SEVEN, "image/png")})
                code = r.json().get("code", "") if r.status_code != 200 else ""
                statuses.append((r.status_code, code, r.headers.get("retry-after")))
                if r.status_code == 503:  # as the bot does: spinning on refusals takes the
                    time.sleep(float(r.headers["retry-after"]))  # CPU the restart needs

    workers = [threading.Thread(target=hammer) for _ in range(6)]
    for w in workers:
        w.start()
    try:
        time.sleep(2)
        for pid in replica_pids(service):
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        back = None
        with service.client() as c:
            while time.monotonic() - killed < 60:
                r = c.post("/v1/read", files={"file": ("d.png", SEVEN, "image/png")})
                if r.status_code == 200 and time.monotonic() - killed > 1:
                    back = time.monotonic() - killed
                    break
                time.sleep(0.2)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=60)
    failed = [s for s in statuses if s[0] != 200]
    # Never a 500 or a 504: a read caught by the death, or queued behind it, is told to
    # retry, as are reads that arrive while the replica restarts (or would queue too long).
    allowed = {(503, "service_not_ready"), (503, "overloaded")}
    assert {(status, code) for status, code, _ in failed} <= allowed, failed
    assert all(wait and int(wait) >= 1 for status, _, wait in failed if status == 503), failed
    assert back is not None and back < 15, back


def test_with_two_model_replicas_a_killed_one_fails_no_read(service: Service) -> None:
    """The batch caught by the death is sent again and lands on the surviving replica."""
    statuses: list[tuple[int, str]] = []
    stop = threading.Event()

    def hammer() -> None:
        with service.client(secure=True, headers={"X-Api-Key": API_KEY}) as mine:
            while not stop.is_set():
                r = mine.post("/v1/read", files={"file": ("d.png", SEVEN, "image/png")})
                code = "" if r.status_code == 200 else r.json()["code"]
                statuses.append((r.status_code, code))
                if code == "overloaded":  # admission under a busy machine, not the kill
                    time.sleep(float(r.headers["retry-after"]))

    deadline = time.monotonic() + 120
    while len(replica_pids(service, "handai-secure")) < 2 and time.monotonic() < deadline:
        time.sleep(1)  # an earlier test's kill may still be healing
    pids = replica_pids(service, "handai-secure")
    assert len(pids) == 2, pids
    workers = [threading.Thread(target=hammer) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        time.sleep(2)
        before = len(statuses)
        os.kill(min(pids), signal.SIGKILL)
        time.sleep(5)
        after = len(statuses)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=60)
    answered = [s for s in statuses[before:after] if s[0] == 200]
    assert len(answered) > 5, Counter(statuses)  # reads went on through the survivor
    assert set(statuses) <= {(200, ""), (503, "overloaded")}, Counter(statuses)
