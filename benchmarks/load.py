"""An async HTTP load client for /v1/read: N clients in closed loops for a fixed time.

The multipart body is encoded once and aiohttp sends it as is, so the client spends as
little of the shared CPU as it can (httpx cost ~3x more per request here).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Self

import aiohttp

from benchmarks.images import UPLOADS

BOUNDARY = "handai-bench-boundary"


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    requests: int  # answered 200 in the measured window
    failures: int
    failure_statuses: dict[int, int]  # e.g. {503: n}: refused, retried after Retry-After
    warmup_requests: int  # answered 200 during warm-up (the service saw them too)
    mean_ms_all: float  # mean latency over warm-up and measured reads: the service's population
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    rps: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ReaderThreads:
    """`clients` threads each running `read_loop` until the with-block ends (a subclass says
    what one client does and what it records)."""

    def __init__(self, clients: int) -> None:
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.read_loop) for _ in range(clients)]

    def read_loop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)


def multipart(data: bytes, content_type: str) -> bytes:
    head = (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="digit"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


async def _client(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    deadline: float,
    latencies: list[float],
    failures: list[int],
) -> None:
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        async with session.post(url, data=body, headers=headers) as resp:
            await resp.read()
            if resp.status == 200:
                latencies.append((time.perf_counter() - start) * 1000)
            else:
                failures.append(resp.status)
                # As a well-behaved client does (the bot included): a refused read is retried
                # when the service says, not at once; a client that retries at once spends
                # the CPU the reads need on being refused.
                wait = resp.headers.get("Retry-After", "")
                if wait.isdigit():
                    await asyncio.sleep(min(float(wait), max(0.0, deadline - time.perf_counter())))


async def _run(
    url: str, body: bytes, concurrency: int, seconds: float, warmup: float
) -> LoadResult:
    connector = aiohttp.TCPConnector(limit=concurrency + 2)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        warm: tuple[list[float], list[int]] = ([], [])
        warm_until = time.perf_counter() + warmup
        await asyncio.gather(
            *(_client(session, url, body, warm_until, *warm) for _ in range(concurrency))
        )
        latencies: list[float] = []
        failures: list[int] = []
        started = time.perf_counter()
        await asyncio.gather(
            *(
                _client(session, url, body, started + seconds, latencies, failures)
                for _ in range(concurrency)
            )
        )
        elapsed = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return LoadResult(
        concurrency=concurrency,
        requests=len(latencies),
        failures=len(failures),
        failure_statuses={s: failures.count(s) for s in sorted(set(failures))},
        warmup_requests=len(warm[0]),
        mean_ms_all=round(statistics.fmean([*warm[0], *latencies] or [float("nan")]), 2),
        seconds=round(elapsed, 2),
        p50_ms=round(q[49], 2),
        p95_ms=round(q[94], 2),
        p99_ms=round(q[98], 2),
        rps=round(len(latencies) / elapsed, 1),
    )


def run_load(
    url: str,
    data: bytes,
    content_type: str,
    concurrency: int,
    seconds: float = 10.0,
    warmup: float = 2.0,
) -> LoadResult:
    """Closed-loop load on `url` (the full /v1/read URL with its query)."""
    return asyncio.run(_run(url, multipart(data, content_type), concurrency, seconds, warmup))


@dataclass(frozen=True)
class OpenLoopResult:
    offered_rps: float
    seconds: float
    sent: int
    answered: int  # 200
    statuses: dict[int, int]
    answered_rps: float
    p50_ms: float
    p99_ms: float  # of answered reads
    refusal_p99_ms: float  # how fast a 503 came back

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _open_loop(url: str, body: bytes, rate: float, seconds: float) -> OpenLoopResult:
    """Poisson arrivals at `rate` per second, whatever the service answers: overload as
    many independent users make it, not as a few polite clients do."""
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    latencies: list[float] = []
    refusals: list[float] = []
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    rng = random.Random(0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> None:
            start = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0  # no answer at all
            took = (time.perf_counter() - start) * 1000
            statuses[status] = statuses.get(status, 0) + 1
            (latencies if status == 200 else refusals).append(took)

        tasks: list[asyncio.Task[None]] = []
        began = time.perf_counter()
        due = began
        while due < began + seconds:
            due += rng.expovariate(rate)
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - began

    def pct(values: list[float], q: int) -> float:
        if len(values) < 2:
            return float("nan")
        return round(statistics.quantiles(values, n=100)[q - 1], 1)

    return OpenLoopResult(
        offered_rps=rate,
        seconds=round(elapsed, 1),
        sent=len(tasks),
        answered=len(latencies),
        statuses=dict(sorted(statuses.items())),
        answered_rps=round(len(latencies) / seconds, 1),
        p50_ms=pct(latencies, 50),
        p99_ms=pct(latencies, 99),
        refusal_p99_ms=pct(refusals, 99),
    )


def run_open_loop(
    url: str, data: bytes, content_type: str, rate: float, seconds: float = 20.0
) -> OpenLoopResult:
    return asyncio.run(_open_loop(url, multipart(data, content_type), rate, seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description="Load a running service's /v1/read.")
    parser.add_argument("--url", default="http://127.0.0.1:8081")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--image", choices=sorted(UPLOADS), default="png28")
    parser.add_argument("--tta", action="store_true")
    args = parser.parse_args()
    _, ctype, make = UPLOADS[args.image]
    data = make()
    url = f"{args.url}/v1/read?tta={'true' if args.tta else 'false'}"
    for clients in args.clients:
        print(run_load(url, data, ctype, clients, args.seconds))


if __name__ == "__main__":
    main()
