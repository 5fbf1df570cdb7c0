import io
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from handai.cli import LOW_CONFIDENCE_HINT, fitted, format_reply
from tests.conftest import BIN, Service
from tests.images import HWD, encode, phone_photo


def answer(confidence: float, uncertain: bool) -> dict[str, object]:
    return {
        "digit": 7,
        "confidence": confidence,
        "model_id": "m1",
        "uncertain": uncertain,
        "top_k": [
            {"digit": 7, "prob": confidence},
            {"digit": 1, "prob": 0.011},
            {"digit": 9, "prob": 0.002},
        ],
    }


def test_reply_matches_the_bot_format() -> None:
    assert format_reply(answer(0.987, False)).splitlines() == [
        "Digit: 7 (98.7% confidence)",
        "Top-3: 7=0.987, 1=0.011, 9=0.002",
        "Model: m1",
    ]


def test_uncertain_reply_adds_the_hint() -> None:
    assert format_reply(answer(0.5, True)).splitlines()[-1] == LOW_CONFIDENCE_HINT


def test_cli_reads_against_the_live_service(service: Service) -> None:
    out = subprocess.run(
        [str(BIN / "handai"), "read", str(HWD / "3-001.png"), "--url", service.url, "--tta"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("Digit: ") and lines[1].startswith("Top-3: ")
    assert lines[2].startswith("Model: test-")


def test_cli_reports_service_errors(service: Service, tmp_path: Path) -> None:
    bogus = tmp_path / "x.png"
    bogus.write_bytes(b"not an image")
    out = subprocess.run(
        [sys.executable, "-m", "handai.cli", "read", str(bogus), "--url", service.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert "invalid_image" in out.stderr


def test_cli_output_to_a_reader_gone_is_no_traceback(service: Service) -> None:
    """`handai read IMAGE | head -1`: once the reader has gone, the rest of the reply is
    dropped quietly (here it has gone before the reply, so every write meets a closed pipe)."""
    gone, stdout = os.pipe()
    os.close(gone)
    try:
        read = subprocess.run(
            [str(BIN / "handai"), "read", str(HWD / "3-001.png"), "--url", service.url],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(stdout)
    assert read.returncode == 0 and read.stderr == ""


def test_a_photo_over_the_limits_is_sent_scaled_down_and_upright(tmp_path: Path) -> None:
    photo = phone_photo(tmp_path / "IMG_0001.jpg")
    name, data = fitted(photo.name, photo.read_bytes(), 1024, 2 * 1024 * 1024)
    sent = Image.open(io.BytesIO(data))
    assert (name, sent.format, sent.size) == ("IMG_0001.jpg", "JPEG", (1024, 768))
    # Transparency goes on white, not black; an image within the limits goes as it is.
    clear = Image.new("RGBA", (2000, 100), (0, 0, 0, 0))
    _, data = fitted("a.png", encode(clear), 1024, 2 * 1024 * 1024)
    assert np.asarray(Image.open(io.BytesIO(data)).convert("L")).min() > 250
    small = (HWD / "3-001.png").read_bytes()
    assert fitted("3.png", small, 1024, 2 * 1024 * 1024) == ("3.png", small)
    assert fitted("x.png", b"not an image", 1024, 10) == ("x.png", b"not an image")


def test_cli_reads_a_phone_photo_the_service_refuses_as_it_is(
    service: Service, tmp_path: Path
) -> None:
    photo = phone_photo(tmp_path / "IMG_0001.jpg")
    as_is = httpx.post(f"{service.url}/v1/read", files={"file": (photo.name, photo.read_bytes())})
    assert as_is.status_code == 413 and as_is.json()["code"] == "too_large"
    read = subprocess.run(
        [str(BIN / "handai"), "read", str(photo), "--url", service.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert read.returncode == 0, read.stderr
    assert read.stdout.startswith("Digit: ")
