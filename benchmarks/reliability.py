"""docs/reliability.md from the chaos suite's JSON (benchmarks.chaos --doc)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _head(r: dict[str, Any], part: str, title: str) -> list[str]:
    """A part's heading, and its own date when it was kept from an earlier run (--keep)."""
    when = r.get("measured", {}).get(part)
    kept = [f"Measured {when} (kept from that run).", ""] if when and when != r.get("date") else []
    return [title, "", *kept]


def render(r: dict[str, Any]) -> str:
    m = r.get("machine", {})
    out = [
        "# Reliability: the chaos suite's figures",
        "",
        f"Measured {r.get('date')} on {m.get('cpu')} ({m.get('cpus')} CPUs) by `make chaos`",
        "(`python -m benchmarks.chaos`): the service started as `make serve` starts it, the",
        "shipped serve_config.yaml, the load client on the same machine. Cold start "
        f"{r.get('cold_start_s')} s. `make test` runs the fast parts (tests/test_chaos.py).",
        "",
    ]
    if f := r.get("fuzz"):
        out += [
            *_head(r, "fuzz", "## Fuzzed reads"),
            f"{f['sent']} mutated and malformed uploads (bit flips, truncation, splices, huge",
            "declared sizes, broken multipart, wrong fields, raw bodies, odd query values):",
            "",
            _row("statuses", "5xx", "errors not in the documented body", "ready after"),
            _row("---", "---", "---", "---"),
            _row(f["statuses"], f["server_errors"], f["bad_bodies"], f["ready_after"]),
            "",
            f"Codes: {f['codes']}",
            "",
        ]
    if h := r.get("hostile"):
        after = h.get("_after", {})
        out += _head(r, "hostile", "## Malicious model uploads")
        out.append(_row("upload", "status", "code", "as expected"))
        out.append(_row("---", "---", "---", "---"))
        for name, v in h.items():
            if isinstance(v, dict) and not name.startswith("_"):
                out.append(_row(name, v["status"], v["code"], v["as_expected"]))
        out += [
            "",
            f"Afterwards: listing {after.get('listing_status')}, live model unchanged "
            f"{after.get('active_unchanged')}, pickle payload ran {after.get('payload_ran')}, "
            f"ready {after.get('ready')}.",
            "",
        ]
    if o := r.get("overload"):
        u, c, f4, ol = (
            o["unloaded_1_client"],
            o["capacity_32_clients"],
            o["clients_128"],
            o["open_loop_4x"],
        )
        out += [
            *_head(r, "overload", "## Overload"),
            "28x28 PNG, TTA off. Capacity is the answered rate at 32 closed-loop clients; "
            "128 clients is 4x that; clients wait the `Retry-After` of a refusal, as the bot "
            "does. The open-loop row sends at 4x the capacity whatever the answers.",
            "",
            _row("load", "answered/s", "share of capacity", "p50 ms", "p99 ms", "not answered"),
            _row("---", "---", "---", "---", "---", "---"),
            _row("1 client", u["rps"], "", u["p50_ms"], u["p99_ms"], u["failure_statuses"]),
            _row("32 clients", c["rps"], "1.0", c["p50_ms"], c["p99_ms"], c["failure_statuses"]),
            _row(
                "128 clients",
                f4["rps"],
                o["answered_share_of_capacity_128"],
                f4["p50_ms"],
                f4["p99_ms"],
                f4["failure_statuses"],
            ),
            _row(
                f"open loop {ol['offered_rps']:.0f}/s",
                ol["answered_rps"],
                o["answered_share_of_capacity_open_4x"],
                ol["p50_ms"],
                ol["p99_ms"],
                ol["statuses"],
            ),
            "",
        ]
    if n := r.get("numbers"):
        a, b, h = n["digit_reads_alone"], n["digit_reads_beside_numbers"], n["number_reads"]
        out += [
            *_head(r, "numbers", "## Costly whole-number uploads beside digit reads"),
            f"8 clients read a 28x28 PNG (TTA off), alone and while {n['number_clients']} "
            "clients post a row of four scribbles to `/v1/read/number?tta=true` in closed "
            "loops (64 candidate digits, 12 read with TTA: the most one upload can cost).",
            "",
            _row("reads", "answered/s", "p50 ms", "p99 ms", "not answered"),
            _row("---", "---", "---", "---", "---"),
            _row("digits alone", a["rps"], a["p50_ms"], a["p99_ms"], a["failure_statuses"]),
            _row(
                "digits beside numbers", b["rps"], b["p50_ms"], b["p99_ms"], b["failure_statuses"]
            ),
            _row("the number reads", h["rps"], h["p50_ms"], h["p99_ms"], h["failure_statuses"]),
            "",
        ]
    if s := r.get("swaps"):
        out += [
            *_head(r, "swaps", "## Model swaps under load"),
            f"{s['swaps']} activations while 4 clients read and `/readyz` is polled every 0.2 s: "
            f"reads {s['reads']}, readiness polls {s['readyz_polls']}, activations took "
            f"{s['activation_s']} s.",
            "",
        ]
    if k := r.get("kill"):
        out += [
            *_head(r, "kill", "## A Model replica killed under load (8 clients)"),
            f"Replicas killed: {k['replicas_killed']}; reads after the kill: "
            f"{k['reads_after_kill']}; answering again after {k['answering_again_after_s']} s; "
            f"500s: {k['status_500']}.",
            "",
        ]
    if s := r.get("soak"):
        out += [
            *_head(
                r,
                "soak",
                f"## Soak: {s['minutes']} minutes, {s['clients']} clients, "
                f"{s.get('reads_per_s')} reads/s",
            ),
            f"Reads: {s['reads']}. Replica memory (RSS, MB) first {s['rss_mb_first']}, "
            f"last {s['rss_mb_last']}; growth % {s['growth_pct']}.",
            "",
        ]
    if cycles := r.get("restarts"):
        out += [
            *_head(r, "restarts", "## Stop and start again"),
            _row("cycle", "stopped by", "ready s", "read", "stop s", "left", "ports bound"),
            _row("---", "---", "---", "---", "---", "---", "---"),
        ]
        for c in cycles:
            out.append(
                _row(
                    c["cycle"],
                    c["stopped_by"],
                    c["ready_s"],
                    c["read_status"],
                    c["stop_s"],
                    c["processes_left"],
                    c["ports_still_bound"] or "none",
                )
            )
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(json.loads(Path(sys.argv[1]).read_text())))
