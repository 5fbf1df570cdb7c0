"""Cold start: seconds from `make serve` (installed, nothing running) to /readyz answering 200.

    .venv/bin/python -m benchmarks.cold_start --out artifacts/bench/cold_start.json

Leaves the service running (its output in logs/serve.log): `make stop` ends it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import httpx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8081")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench/cold_start.json"))
    args = parser.parse_args()
    Path("logs").mkdir(exist_ok=True)
    with Path("logs/serve.log").open("ab") as log:
        start = time.monotonic()
        # Its own session, so the service outlives this script.
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    first_answer = None
    while time.monotonic() - start < args.timeout:
        if proc.poll() is not None:
            raise SystemExit(f"`make serve` exited with {proc.returncode}; see logs/serve.log")
        try:
            status = httpx.get(f"{args.url}/readyz", timeout=2).status_code
            first_answer = first_answer or time.monotonic() - start
            if status == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    else:
        raise SystemExit(f"not ready within {args.timeout:g} s; see logs/serve.log")
    ready = round(time.monotonic() - start, 1)
    result = {"ready_s": ready, "first_http_answer_s": round(first_answer or ready, 1)}
    print(f"make serve -> /readyz 200 in {ready} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
