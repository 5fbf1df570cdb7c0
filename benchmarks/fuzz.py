"""Hostile inputs: fuzzed reads and malicious model uploads, with what each must answer.

Used by the chaos suite (`make chaos`) at full size and by tests/test_chaos.py at a small
one, against a live service.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import struct
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch
from PIL import Image

from handai.registry import MANIFEST_FILE, MODEL_FILE

ERROR_KEYS = {"code", "message", "request_id"}
BOUNDARY = "handai-fuzz-boundary"
CTYPES = ["image/png", "image/jpeg", "application/octet-stream", "text/plain", "", "image/x-what"]


@dataclass(frozen=True)
class Case:
    """One raw HTTP request: a body exactly as sent, with its headers."""

    kind: str
    body: bytes
    headers: dict[str, str]
    params: dict[str, str]


def seeds(folder: Path) -> list[bytes]:
    """Valid uploads to mutate: a few hand-drawn digits in PNG, JPEG, GIF and WebP."""
    found = sorted(folder.glob("*.png"))[:8]
    out: list[bytes] = []
    for n, path in enumerate(found):
        raw = path.read_bytes()
        out.append(raw)
        image = Image.open(io.BytesIO(raw)).convert("RGB")
        buf = io.BytesIO()
        image.save(buf, format=["JPEG", "GIF", "WEBP", "BMP"][n % 4])
        out.append(buf.getvalue())
    return out


def part(name: str, data: bytes, ctype: str, filename: str = "d.png") -> bytes:
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"'
    head += f"\r\nContent-Type: {ctype}" if ctype else ""
    return (head + "\r\n\r\n").encode() + data + b"\r\n"


def close(body: bytes) -> bytes:
    return body + f"--{BOUNDARY}--\r\n".encode()


def mutate(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    """A damaged copy of a valid file, and what was done to it."""
    kind = rng.choice(["flip", "truncate", "splice", "zero", "huge-dims", "repeat", "magic-only"])
    raw = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 40)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        raw = raw[: rng.randrange(len(raw))]
    elif kind == "splice":
        at = rng.randrange(len(raw))
        raw[at:at] = rng.randbytes(rng.randint(1, 512))
    elif kind == "zero":
        at = rng.randrange(len(raw))
        raw[at : at + rng.randint(1, 256)] = bytes(min(256, len(raw) - at))
    elif kind == "huge-dims" and raw[:8] == b"\x89PNG\r\n\x1a\n":
        # IHDR claims a vast image; the CRC is fixed so the decoder believes it.
        w, h = rng.choice([(65535, 65535), (1, 10**6), (2**31 - 1, 1), (0, 0)])
        ihdr = bytearray(raw[12:29])
        ihdr[4:12] = struct.pack(">II", w, h)
        raw[12:29] = ihdr
        raw[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    elif kind == "repeat":
        raw = raw * rng.randint(2, 20)
    else:
        raw = raw[:8] + rng.randbytes(rng.randint(0, 64))
    return kind, bytes(raw)


def cases(rng: random.Random, valid: list[bytes], n: int) -> Iterator[Case]:
    multipart = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    for _ in range(n):
        data = rng.choice(valid)
        shape = rng.random()
        params = {}
        if rng.random() < 0.2:
            key = rng.choice(["invert", "tta", "visualize", "center"])
            params[key] = rng.choice(["true", "false", "1", "maybe", "", "\u00e9" * 3])
        if shape < 0.70:  # a damaged file in a well-formed upload
            kind, damaged = mutate(rng, data)
            body = close(part("file", damaged, rng.choice(CTYPES)))
            yield Case(f"file:{kind}", body, multipart, params)
        elif shape < 0.78:  # a valid file, odd packaging
            how = rng.choice(["two-files", "wrong-field", "empty-file", "no-filename"])
            if how == "two-files":
                body = close(part("file", data, "image/png") + part("file", data, "image/png"))
            elif how == "wrong-field":
                body = close(part("image", data, "image/png"))
            elif how == "empty-file":
                body = close(part("file", b"", "image/png"))
            else:
                body = close(
                    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"\r\n\r\n'.encode()
                    + data
                    + b"\r\n"
                )
            yield Case(f"packaging:{how}", body, multipart, params)
        elif shape < 0.90:  # a broken multipart body
            body = close(part("file", data, "image/png"))
            cut = rng.randrange(len(body))
            how = rng.choice(["cut", "no-close", "garbage-boundary"])
            if how == "cut":
                body = body[:cut]
            elif how == "no-close":
                body = part("file", data, "image/png")
            else:
                body = body.replace(BOUNDARY.encode(), rng.randbytes(8).hex().encode(), 1)
            yield Case(f"multipart:{how}", body, multipart, params)
        else:  # not multipart at all
            ctype = rng.choice(["image/png", "application/json", "text/plain", ""])
            headers = {"Content-Type": ctype} if ctype else {}
            yield Case("raw-body", data if rng.random() < 0.5 else b"", headers, params)


@dataclass
class FuzzReport:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)  # 5xx other than 503 overloaded
    bad_bodies: list[str] = field(default_factory=list)  # errors not in the documented shape
    ready_after: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "statuses": dict(sorted(self.statuses.items())),
            "codes": dict(self.codes.most_common()),
            "server_errors": len(self.server_errors),
            "bad_bodies": len(self.bad_bodies),
            "examples": (self.server_errors + self.bad_bodies)[:5],
            "ready_after": self.ready_after,
        }


def check_answer(resp: httpx.Response, report: FuzzReport, kind: str) -> None:
    report.statuses[resp.status_code] += 1
    try:
        body = resp.json()
    except ValueError:
        report.bad_bodies.append(f"{kind}: {resp.status_code} not JSON: {resp.text[:120]}")
        return
    if resp.status_code == 200:
        if not isinstance(body.get("digit"), int):
            report.bad_bodies.append(f"{kind}: 200 without a digit: {resp.text[:120]}")
        return
    if set(body) != ERROR_KEYS or not body.get("message"):
        report.bad_bodies.append(f"{kind}: {resp.status_code} {resp.text[:160]}")
    report.codes[str(body.get("code"))] += 1
    if resp.status_code >= 500 and body.get("code") != "overloaded":
        report.server_errors.append(f"{kind}: {resp.status_code} {resp.text[:160]}")


async def fuzz(
    url: str, valid: list[bytes], n: int, seed: int = 0, clients: int = 4, api_key: str = ""
) -> FuzzReport:
    """Send n fuzzed reads from `clients` concurrent clients; every answer is checked."""
    report = FuzzReport()
    todo = list(cases(random.Random(seed), valid, n))
    key = {"X-Api-Key": api_key} if api_key else {}

    async def worker(client: httpx.AsyncClient) -> None:
        while todo:
            case = todo.pop()
            resp = await client.post(
                "/v1/read", content=case.body, headers={**case.headers, **key}, params=case.params
            )
            report.sent += 1
            check_answer(resp, report, case.kind)

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        report.ready_after = (await client.get("/readyz")).status_code == 200
    return report


# Malicious model uploads ---------------------------------------------------------------


class Payload:
    """Runs a command if unpickled without weights_only: the upload must never get that far."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        import os

        return (os.system, (f"touch {self.marker}",))


def _torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def deflated(weights: bytes) -> bytes:
    """The same archive with every entry deflated: a zip bomb's shape."""
    src = zipfile.ZipFile(io.BytesIO(weights))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            out.writestr(info.filename, src.read(info))
    return buf.getvalue()


def malicious_uploads(
    seed_model: Path, marker: Path, max_model_bytes: int
) -> list[tuple[str, str, bytes, bytes, set[int]]]:
    """(name, model_id, manifest, weights, acceptable statuses) for each hostile upload."""
    manifest = json.loads((seed_model / MANIFEST_FILE).read_text())
    weights = (seed_model / MODEL_FILE).read_bytes()
    state = torch.load(io.BytesIO(weights), weights_only=True)

    def m(**change: Any) -> bytes:
        return json.dumps({**manifest, **change}).encode()

    reshaped = dict(state)
    first = next(k for k, v in state.items() if v.ndim == 4)
    reshaped[first] = torch.zeros(3, *state[first].shape[1:])
    naive = manifest.get("created_at", "2026-01-01T00:00:00")[:19]
    pickled = _torch_bytes({"x": Payload(marker)})
    cases: list[tuple[str, str, dict[str, Any] | bytes, bytes, set[int]]] = [
        ("pickle-payload", "evil-pickle", {}, pickled, {400}),
        ("pickle-in-state", "evil-state", {}, _torch_bytes([Payload(marker)]), {400}),
        ("path-traversal", "../../escape", {}, weights, {400}),
        ("absolute-path", "/tmp/escape", {}, weights, {400}),
        ("dot-id", "..", {}, weights, {400}),
        ("zip-bomb", "bomb", {}, deflated(weights), {400}),
        ("wrong-shapes", "shapes", {}, _torch_bytes(reshaped), {400}),
        ("wrong-n-classes", "classes", {"n_classes": 12}, weights, {400}),
        ("garbage-manifest", "garbage", b"{not json", weights, {400}),
        ("not-a-model", "notmodel", {}, b"PK\x03\x04" + b"\0" * 64, {400}),
        ("oversized", "huge", {}, weights + b"\0" * (max_model_bytes + 1), {413}),
        ("reserved-id", "ACTIVE", {}, weights, {400}),
        # Not an attack: a timestamp without a zone is taken as UTC and must keep working.
        ("naive-timestamp", "naive-ts", {"created_at": naive}, weights, {200}),
    ]
    return [
        (name, model_id, _manifest(m, model_id, change), blob, ok)
        for name, model_id, change, blob, ok in cases
    ]


def _manifest(m: Any, model_id: str, change: dict[str, Any] | bytes) -> bytes:
    """The seed's manifest for this id with the change applied, or raw bytes as given."""
    return m(model_id=model_id, **change) if isinstance(change, dict) else change


def upload_hostile(
    url: str, admin_key: str, seed_model: Path, marker: Path, max_model_bytes: int
) -> dict[str, Any]:
    """Every malicious upload answers its status in the error format; nothing runs, the
    listing and the live model are unharmed."""
    results: dict[str, Any] = {}
    with httpx.Client(base_url=url, timeout=180, headers={"X-Api-Key": admin_key}) as c:
        active = c.get("/v1/models/active").json()["model_id"]
        for name, model_id, manifest, weights, ok in malicious_uploads(
            seed_model, marker, max_model_bytes
        ):
            resp = c.post(
                "/v1/admin/models/upload",
                files={
                    "manifest": ("manifest.json", manifest, "application/json"),
                    "model": ("model.pt", weights, "application/octet-stream"),
                },
                data={"model_id": model_id},
            )
            shaped = resp.status_code == 200 or set(resp.json()) == ERROR_KEYS
            results[name] = {
                "status": resp.status_code,
                "code": resp.json().get("code") if resp.status_code != 200 else None,
                "as_expected": resp.status_code in ok and shaped,
            }
        listing = c.get("/v1/models")
        results["_after"] = {
            "listing_status": listing.status_code,
            "active_unchanged": c.get("/v1/models/active").json()["model_id"] == active,
            "payload_ran": marker.exists(),
            "ready": c.get("/readyz").status_code == 200,
        }
    return results
