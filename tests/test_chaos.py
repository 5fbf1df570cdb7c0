"""The chaos suite's fast parts against the test cluster: fuzzed reads, malicious model
uploads and a flood at 4x the concurrency the service is sized for. The full suite (10,000
fuzzed reads, swaps, kills, a 30-minute soak, restart cycles) is `make chaos`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from benchmarks import fuzz
from benchmarks.chaos import seed_model
from benchmarks.images import UPLOADS
from benchmarks.load import run_load
from tests.conftest import ADMIN_KEY, Service
from tests.images import HWD


def test_fuzzed_reads_never_5xx_and_always_answer_in_the_error_format(service: Service) -> None:
    report = asyncio.run(fuzz.fuzz(service.url, fuzz.seeds(HWD), 400, seed=1))
    assert report.sent == 400
    assert report.server_errors == [] and report.bad_bodies == [], report.as_dict()
    assert report.ready_after
    assert len(report.codes) >= 4, report.codes  # the fuzzer reaches many different refusals


def test_malicious_model_uploads_are_refused_and_harm_nothing(
    service: Service, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    results = fuzz.upload_hostile(
        service.url, ADMIN_KEY, seed_model(), marker, max_model_bytes=64 * 2**20
    )
    after = results.pop("_after")
    wrong = {name: v for name, v in results.items() if not v["as_expected"]}
    assert wrong == {}, wrong
    assert after == {
        "listing_status": 200,
        "active_unchanged": True,
        "payload_ran": False,
        "ready": True,
    }
    assert not marker.exists()
    escaped = [p for p in service.model_dir.parent.rglob("*escape*")]
    assert escaped == [] and not Path("/tmp/escape").exists()


def test_a_flood_is_refused_early_and_admitted_reads_never_time_out(service: Service) -> None:
    """128 clients (4x the 32 the service is sized for): every read is answered or refused
    with 503 overloaded; none waits into a 504, and the service is ready afterwards."""
    _, ctype, make = UPLOADS["png28"]
    flood = run_load(f"{service.url}/v1/read", make(), ctype, 128, seconds=8, warmup=1)
    assert flood.requests > 0
    assert set(flood.failure_statuses) <= {503}, flood
    assert flood.p99_ms < 5000, flood  # the deadline; admission keeps it far lower
    with httpx.Client(base_url=service.url, timeout=30) as c:
        assert c.get("/readyz").status_code == 200
