"""The chaos suite: hostile inputs, overload, faults and restarts against Handai as users run it.

    make chaos                                       # all of it (~45 min), docs/reliability.md
    .venv/bin/python -m benchmarks.chaos --only fuzz,hostile --fuzz 2000

It starts the service the way `make serve` does (`python -m deployments.cluster serve`, the
shipped serve_config.yaml and ports; any running instance is stopped first) with its storage
in a temporary folder and an admin key of its own, then runs each part and prints its
figures. Parts: restarts (5 start/stop cycles by Ctrl-C, kill -9 + make stop, SIGTERM,
SIGHUP), fuzz (mutated and malformed reads), hostile (malicious model uploads),
overload (4x the measured capacity), numbers (digit reads beside clients posting costly
whole-number uploads), swaps (activations under load, /readyz polled every
0.2 s), kill (a Model replica killed under load), soak (moderate load for --soak-minutes,
replica memory sampled). Asserts nothing: tests/test_chaos.py runs the fast parts in `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks import fuzz
from benchmarks.images import UPLOADS, scribbles_png
from benchmarks.load import LoadResult, ReaderThreads, run_load, run_open_loop
from deployments.cluster import Cluster, Ports
from handai.backends import cpu_name
from handai.registry import MANIFEST_FILE, MODEL_FILE

ROOT = Path(__file__).resolve().parents[1]
HWD = ROOT.parent / "shared" / "data" / "hwd1000" / "img"
PARTS = ("restarts", "fuzz", "hostile", "overload", "numbers", "swaps", "kill", "soak")


@dataclass(frozen=True)
class Target:
    url: str
    dashboard: str
    admin_key: str

    def client(self, timeout: float = 60, **kw: Any) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, timeout=timeout, headers={"X-Api-Key": self.admin_key}, **kw
        )


def seed_model() -> Path:
    return sorted(p for p in (ROOT / "seed").iterdir() if (p / MODEL_FILE).is_file())[-1]


def replica_pids(target: Target, deployment: str | None = None) -> dict[str, list[int]]:
    details = httpx.get(f"{target.dashboard}/api/serve/applications/", timeout=30).json()
    out: dict[str, list[int]] = {}
    for app in details["applications"].values():
        for name, dep in app["deployments"].items():
            if deployment in (None, name):
                out.setdefault(name, []).extend(
                    r["pid"] for r in dep["replicas"] if r["state"] == "RUNNING"
                )
    return out


def read_once(c: httpx.Client, data: bytes) -> httpx.Response:
    return c.post("/v1/read", files={"file": ("d.png", data, "image/png")})


class Hammer(ReaderThreads):
    """`clients` threads reading in closed loops (a refused read waits its Retry-After)."""

    def __init__(self, target: Target, data: bytes, clients: int, pause_s: float = 0.0) -> None:
        self.target, self.data, self.pause_s = target, data, pause_s
        self.outcomes: list[tuple[float, int, str]] = []  # (time, status, code)
        super().__init__(clients)

    def read_loop(self) -> None:
        with self.target.client() as c:
            while not self.stop.is_set():
                try:
                    r = read_once(c, self.data)
                except httpx.HTTPError as exc:
                    self.outcomes.append((time.monotonic(), 0, type(exc).__name__))
                    continue
                code = "" if r.status_code == 200 else str(r.json().get("code"))
                self.outcomes.append((time.monotonic(), r.status_code, code))
                if r.status_code == 503:
                    time.sleep(float(r.headers.get("retry-after", "1")))
                elif self.pause_s:
                    time.sleep(self.pause_s)

    def counts(self) -> dict[str, int]:
        return dict(Counter(f"{s} {c}".strip() for _, s, c in self.outcomes))


# The parts ---------------------------------------------------------------------------------


def part_fuzz(target: Target, n: int) -> dict[str, Any]:
    report = asyncio.run(fuzz.fuzz(target.url, fuzz.seeds(HWD), n, api_key=target.admin_key))
    return report.as_dict()


def part_hostile(target: Target, max_model_bytes: int) -> dict[str, Any]:
    marker = Path(tempfile.gettempdir()) / f"handai-chaos-pwned-{secrets.token_hex(4)}"
    return fuzz.upload_hostile(target.url, target.admin_key, seed_model(), marker, max_model_bytes)


def part_overload(target: Target, seconds: float) -> dict[str, Any]:
    _, ctype, make = UPLOADS["png28"]
    data = make()
    url = f"{target.url}/v1/read?tta=false"
    unloaded = run_load(url, data, ctype, 1, seconds=seconds / 2)
    capacity = run_load(url, data, ctype, 32, seconds=seconds / 2)
    flood = run_load(url, data, ctype, 128, seconds=seconds)
    open_loop = run_open_loop(url, data, ctype, capacity.rps * 4, seconds=seconds)
    return {
        "unloaded_1_client": unloaded.as_dict(),
        "capacity_32_clients": capacity.as_dict(),
        "clients_128": flood.as_dict(),
        "open_loop_4x": open_loop.as_dict(),
        "answered_share_of_capacity_128": round(flood.rps / capacity.rps, 3),
        "answered_share_of_capacity_open_4x": round(open_loop.answered_rps / capacity.rps, 3),
    }


NUMBER_CLIENTS = 2  # one more than the Ingress's max_number_reads: one waits its Retry-After


def part_numbers(target: Target, seconds: float) -> dict[str, Any]:
    """8 clients reading digits, alone and beside clients posting the costliest whole-number
    upload there is (rows of scribbles, TTA on) in closed loops."""
    _, ctype, make = UPLOADS["png28"]
    digits = f"{target.url}/v1/read?tta=false"
    numbers = f"{target.url}/v1/read/number?tta=true"
    alone = run_load(digits, make(), ctype, 8, seconds=seconds)
    hostile: list[LoadResult] = []
    flood = threading.Thread(
        target=lambda: hostile.append(
            run_load(numbers, scribbles_png(4), "image/png", NUMBER_CLIENTS, seconds + 4, 1.0)
        )
    )
    flood.start()
    time.sleep(2.0)
    beside = run_load(digits, make(), ctype, 8, seconds=seconds)
    flood.join()
    return {
        "digit_reads_alone": alone.as_dict(),
        "digit_reads_beside_numbers": beside.as_dict(),
        "number_reads": hostile[0].as_dict(),
        "number_clients": NUMBER_CLIENTS,
    }


def install_copy(target: Target, model_id: str) -> None:
    """The shipped model again under another id: something to swap to."""
    seed = seed_model()
    manifest = {**json.loads((seed / MANIFEST_FILE).read_text()), "model_id": model_id}
    with target.client(timeout=180) as c:
        resp = c.post(
            "/v1/admin/models/upload",
            files={
                "manifest": ("m.json", json.dumps(manifest).encode(), "application/json"),
                "model": ("model.pt", (seed / MODEL_FILE).read_bytes(), "application/octet-stream"),
            },
            data={"model_id": model_id},
        )
        if resp.status_code != 200 and "already registered" not in resp.text:
            raise RuntimeError(f"could not install {model_id}: {resp.text}")


def part_swaps(target: Target, swaps: int) -> dict[str, Any]:
    install_copy(target, "chaos-b")
    seven = (HWD / "7-001.png").read_bytes()
    with target.client() as c:
        first = c.get("/v1/models/active").json()["model_id"]
    readiness: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        with target.client() as c:
            while not stop.is_set():
                readiness.append(c.get("/readyz").status_code)
                time.sleep(0.2)

    poller = threading.Thread(target=poll)
    took: list[float] = []
    with Hammer(target, seven, 4) as hammer:
        poller.start()
        with target.client(timeout=300) as c:
            for k in range(swaps):
                model_id = "chaos-b" if k % 2 == 0 else first
                began = time.monotonic()
                resp = c.post("/v1/admin/models/activate", json={"model_id": model_id})
                took.append(round(time.monotonic() - began, 2))
                if resp.status_code != 200:
                    raise RuntimeError(f"activation failed: {resp.text}")
                time.sleep(2)
        stop.set()
        poller.join()
    return {
        "swaps": swaps,
        "activation_s": took,
        "reads": hammer.counts(),
        "readyz_polls": dict(Counter(readiness)),
    }


def part_kill(target: Target) -> dict[str, Any]:
    seven = (HWD / "7-001.png").read_bytes()
    with Hammer(target, seven, 8) as hammer:
        time.sleep(3)
        pids = replica_pids(target, "Model")["Model"]
        killed = time.monotonic()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        back = None
        while time.monotonic() - killed < 60:
            recent = [t for t, s, _ in hammer.outcomes if s == 200 and t > killed + 0.5]
            if recent:
                back = round(min(recent) - killed, 1)
                break
            time.sleep(0.2)
        time.sleep(3)
    after = [f"{s} {c}".strip() for t, s, c in hammer.outcomes if t >= killed]
    return {
        "replicas_killed": len(pids),
        "answering_again_after_s": back,
        "reads_after_kill": dict(Counter(after)),
        "status_500": sum(1 for _, s, _ in hammer.outcomes if s == 500),
    }


def replica_rss_mb(target: Target) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, pids in replica_pids(target).items():
        total = 0.0
        for pid in pids:
            try:
                total += psutil.Process(pid).memory_info().rss / 2**20
            except psutil.NoSuchProcess:
                continue
        out[name] = round(total, 1)
    return out


def part_soak(target: Target, minutes: float, clients: int = 4) -> dict[str, Any]:
    """Moderate load: each client pauses 0.2 s between reads (~15 reads/s in all, under a
    tenth of capacity), for `minutes`, with the replicas' memory sampled."""
    seven = (HWD / "7-001.png").read_bytes()
    samples: list[dict[str, Any]] = []
    end = time.monotonic() + minutes * 60
    with Hammer(target, seven, clients, pause_s=0.2) as hammer:
        time.sleep(min(60.0, minutes * 60 / 4))  # warm: caches, allocator pools
        while True:
            samples.append(
                {"t_s": round(time.monotonic() - end + minutes * 60), **replica_rss_mb(target)}
            )
            if time.monotonic() >= end:
                break
            time.sleep(min(30.0, max(0.0, end - time.monotonic())))
    first, last = samples[0], samples[-1]
    growth = {
        name: round((last[name] - first[name]) / first[name] * 100, 1)
        for name in first
        if name != "t_s" and first[name] and name in last
    }
    return {
        "minutes": minutes,
        "clients": clients,
        "reads_per_s": round(len(hammer.outcomes) / (minutes * 60), 1),
        "reads": hammer.counts(),
        "rss_mb_first": first,
        "rss_mb_last": last,
        "growth_pct": growth,
        "samples": samples,
    }


def ports_still_bound(ports: Ports) -> list[int]:
    """The service's ports still bound by someone after a stop."""
    taken = []
    for port in (
        ports.http,
        ports.dashboard,
        ports.gcs,
        ports.haproxy_stats,
        ports.haproxy_metrics,
    ):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                taken.append(port)
    return taken


class Service:
    """The service as `make serve` runs it, in a process of its own."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.cluster = Cluster()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.gettempdir()) / "handai-chaos-serve.log"

    def start(self, timeout: float = 300) -> float:
        began = time.monotonic()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "deployments.cluster", "serve"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        while time.monotonic() - began < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}; see {self.log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.cluster.url}/readyz", timeout=2).status_code == 200:
                    return round(time.monotonic() - began, 1)
            time.sleep(0.5)
        raise RuntimeError(f"not ready within {timeout:g} s; see {self.log}")

    def stop(self, how: str) -> float:
        assert self.proc is not None
        began = time.monotonic()
        sig = {"ctrl-c": signal.SIGINT, "sigterm": signal.SIGTERM, "sighup": signal.SIGHUP}
        if how == "kill-9+make-stop":
            self.proc.kill()
            self.proc.wait()
            subprocess.run(
                [sys.executable, "-m", "deployments.cluster", "stop"],
                cwd=ROOT,
                env=self.env,
                capture_output=True,
                timeout=180,
                check=True,
            )
        else:
            if how == "sigterm":  # `kill PID`
                self.proc.send_signal(sig[how])
            else:  # a terminal's Ctrl-C, or its closing: the whole foreground process group
                os.killpg(self.proc.pid, sig[how])
            self.proc.wait(timeout=180)
        return round(time.monotonic() - began, 1)


def part_restarts(service: Service, cycles: int) -> list[dict[str, Any]]:
    ways = ["ctrl-c", "kill-9+make-stop", "sigterm", "ctrl-c", "sighup"]
    seven = (HWD / "7-001.png").read_bytes()
    out = []
    for k in range(cycles):
        how = ways[k % len(ways)]
        ready_s = service.start()
        with httpx.Client(base_url=service.cluster.url, timeout=60) as c:
            read = read_once(c, seven).status_code
        stop_s = service.stop(how)
        left = [p.pid for p in service.cluster._processes()]
        out.append(
            {
                "cycle": k + 1,
                "stopped_by": how,
                "ready_s": ready_s,
                "read_status": read,
                "stop_s": stop_s,
                "processes_left": len(left),
                "ports_still_bound": ports_still_bound(service.cluster.ports),
            }
        )
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__)
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts")
    parser.add_argument("--fuzz", type=int, default=10_000, help="fuzzed reads")
    parser.add_argument("--overload-seconds", type=float, default=20.0)
    parser.add_argument("--swaps", type=int, default=6)
    parser.add_argument("--soak-minutes", type=float, default=30.0)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts/chaos/chaos.json")
    parser.add_argument("--doc", type=Path, help="write the figures as markdown here too")
    parser.add_argument(
        "--keep", type=Path, help="an earlier run's JSON: its parts not rerun stay in the report"
    )
    args = parser.parse_args()
    parts = [p for p in args.only.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")

    storage = Path(tempfile.mkdtemp(prefix="handai-chaos-"))
    admin_key = secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "STORAGE__ROOT": str(storage),
        "SECURITY__ADMIN_KEY": admin_key,
        "DIGITS__MAX_MODEL_MB": os.environ.get("DIGITS__MAX_MODEL_MB", "64"),
    }
    max_model_bytes = int(env["DIGITS__MAX_MODEL_MB"]) * 2**20
    service = Service(env)
    target = Target(service.cluster.url, service.cluster.dashboard, admin_key)
    results: dict[str, Any] = json.loads(args.keep.read_text()) if args.keep else {}
    results["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results["machine"] = {"cpus": os.cpu_count(), "cpu": cpu_name()}
    service.cluster.stop()  # as `make bench` does: nothing else of this project running
    live = [p for p in parts if p != "restarts"]
    try:
        if "restarts" in parts:
            print("== restarts", flush=True)
            results["restarts"] = part_restarts(service, args.cycles)
            results.setdefault("measured", {})["restarts"] = results["date"]
        if live:
            results["cold_start_s"] = service.start()
            for part in live:
                print(f"== {part}", flush=True)
                began = time.monotonic()
                if part == "fuzz":
                    results[part] = part_fuzz(target, args.fuzz)
                elif part == "hostile":
                    results[part] = part_hostile(target, max_model_bytes)
                elif part == "overload":
                    results[part] = part_overload(target, args.overload_seconds)
                elif part == "numbers":
                    results[part] = part_numbers(target, args.overload_seconds)
                elif part == "swaps":
                    results[part] = part_swaps(target, args.swaps)
                elif part == "kill":
                    results[part] = part_kill(target)
                elif part == "soak":
                    results[part] = part_soak(target, args.soak_minutes)
                results[part]["took_s"] = round(time.monotonic() - began, 1)
                results.setdefault("measured", {})[part] = results["date"]
                print(json.dumps(results[part], default=str)[:3000], flush=True)
            service.stop("ctrl-c")
    finally:
        if service.proc is not None and service.proc.poll() is None:
            service.stop("ctrl-c")
        shutil.rmtree(storage, ignore_errors=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, default=str))
    if args.doc is not None:
        from benchmarks.reliability import render

        args.doc.write_text(render(results))
        print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
