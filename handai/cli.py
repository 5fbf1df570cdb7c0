"""`handai read IMAGE`: the bot's /read reply, from the command line."""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageOps

from handai.config import DigitsSettings

LOW_CONFIDENCE_HINT = (
    "I'm not sure about this one. Try a photo of a single digit, dark ink on light paper, "
    "filling most of the frame."
)


def format_reply(answer: dict[str, Any]) -> str:
    """The bot's reply text for a /v1/read answer."""
    top = ", ".join(f"{t['digit']}={t['prob']:.3f}" for t in answer["top_k"])
    lines = [
        f"Digit: {answer['digit']} ({answer['confidence']:.1%} confidence)",
        f"Top-3: {top}",
        f"Model: {answer['model_id']}",
    ]
    if answer.get("uncertain"):
        lines.append(LOW_CONFIDENCE_HINT)
    return "\n".join(lines)


def format_number(answer: dict[str, Any]) -> str:
    """The bot's reply text for a /v1/read/number answer: the number, then a line a digit."""
    lines = [f"Number: {answer['number']} ({answer['confidence']:.1%} confidence)"]
    for n, d in enumerate(answer["digits"], 1):
        top = ", ".join(f"{t['digit']}={t['prob']:.3f}" for t in d["top_k"])
        lines.append(f"Digit {n}: {d['digit']} ({d['confidence']:.1%} confidence); Top-3: {top}")
    lines.append(f"Model: {answer['model_id']}")
    if answer.get("uncertain"):
        lines.append(LOW_CONFIDENCE_HINT)
    return "\n".join(lines)


def fitted(name: str, data: bytes, max_side: int, max_bytes: int) -> tuple[str, bytes]:
    """A phone's photo (~12 megapixels, several MB) is over the service's upload limits: it
    goes scaled down to them as a JPEG, upright (its EXIF rotation applied) and with any
    transparency on white, as the page sends it. Anything else goes as it is, and the
    service says what is wrong with it."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if max(img.size) <= max_side and len(data) <= max_bytes:
                return name, data
            img.draft("RGB", (max_side, max_side))  # a JPEG decodes at a fraction of its size
            upright = ImageOps.exif_transpose(img)
            upright.thumbnail((max_side, max_side))
            rgba = upright.convert("RGBA")
    except (OSError, ValueError, Image.DecompressionBombError):
        return name, data
    paper = Image.new("RGB", rgba.size, "white")
    paper.paste(rgba, mask=rgba.getchannel("A"))
    out = io.BytesIO()
    paper.save(out, "JPEG", quality=92)
    return f"{Path(name).stem}.jpg", out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="handai", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    read = commands.add_parser("read", help="read the digit in an image")
    read.add_argument("image", type=Path)
    read.add_argument("--url", default=os.environ.get("HANDAI_URL", "http://127.0.0.1:8081"))
    read.add_argument("--tta", action="store_true", help="average 9 shifted/rotated views")
    read.add_argument("--api-key", default=os.environ.get("HANDAI_API_KEY"))
    read.add_argument("--number", action="store_true", help="read every digit of a number")
    args = parser.parse_args(argv)
    try:
        data = args.image.read_bytes()
    except OSError as exc:
        print(f"error: cannot read {args.image}: {exc.strerror}", file=sys.stderr)
        return 2
    limits = DigitsSettings()  # the service's limits as shipped
    name, data = fitted(args.image.name, data, limits.max_image_side_px, limits.max_image_bytes)
    headers = {"X-Api-Key": args.api_key} if args.api_key else {}
    params = {"tta": "true"} if args.tta else {}
    try:
        resp = httpx.post(
            f"{args.url.rstrip('/')}/v1/read" + ("/number" if args.number else ""),
            files={"file": (name, data)},
            params=params,
            headers=headers,
            timeout=30,
        )
    except httpx.HTTPError as exc:
        print(f"error: {args.url} is not answering: {exc}", file=sys.stderr)
        return 1
    body = (
        resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
    )
    if resp.status_code != 200:
        message = body.get("message", resp.text[:200])
        print(f"error: {body.get('code', resp.status_code)}: {message}", file=sys.stderr)
        return 1
    try:
        print(format_number(body) if args.number else format_reply(body), flush=True)
    except BrokenPipeError:  # `handai read ... | head -1`: the reader has all it wanted
        # Python would report the closed pipe again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
