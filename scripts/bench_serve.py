"""Latency and throughput of a running service's /v1/read, from concurrent clients.

    .venv/bin/python scripts/bench_serve.py --url http://127.0.0.1:8081 --clients 1 32

Prints p50/p95/p99 latency and requests/s per concurrency level. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import httpx

IMAGE = Path(__file__).resolve().parents[2] / "shared/data/hwd1000/img/7-001.png"


async def client_loop(
    client: httpx.AsyncClient,
    data: bytes,
    params: dict[str, str],
    deadline: float,
    latencies: list[float],
    failures: list[int],
) -> None:
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        resp = await client.post(
            "/v1/read", files={"file": ("d.png", data, "image/png")}, params=params
        )
        if resp.status_code == 200:
            latencies.append((time.perf_counter() - start) * 1000)
        else:
            failures.append(resp.status_code)


async def run(url: str, clients: int, seconds: float, tta: bool) -> None:
    data = IMAGE.read_bytes()
    params = {"tta": "true"} if tta else {}
    latencies: list[float] = []
    failures: list[int] = []
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        for _ in range(5):  # warm the connection pool and the replicas
            await client.post("/v1/read", files={"file": ("d.png", data, "image/png")})
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        await asyncio.gather(
            *(
                client_loop(client, data, params, deadline, latencies, failures)
                for _ in range(clients)
            )
        )
        elapsed = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100)
    print(
        f"clients={clients:>3} tta={'on ' if tta else 'off'} "
        f"p50={q[49]:6.1f} ms p95={q[94]:6.1f} ms p99={q[98]:6.1f} ms "
        f"{len(latencies) / elapsed:6.1f} req/s failures={len(failures)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8081")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tta", action="store_true")
    args = parser.parse_args()
    for clients in args.clients:
        asyncio.run(run(args.url, clients, args.seconds, args.tta))


if __name__ == "__main__":
    main()
