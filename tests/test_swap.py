"""Model uploads and swaps on the live graph: in place, on every replica, nothing dropped."""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import torch

from handai.model import build_model
from handai.registry import MANIFEST_FILE, MODEL_FILE, save
from tests.conftest import Service
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


def replica_pids(service: Service) -> set[int]:
    details = httpx.get(f"{service.dashboard}/api/serve/applications/", timeout=30).json()
    model = details["applications"]["handai"]["deployments"]["Model"]
    return {r["pid"] for r in model["replicas"]}


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

        workers = [threading.Thread(target=hammer) for _ in range(4)]
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
