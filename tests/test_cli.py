import os
import subprocess
import sys
from pathlib import Path

from handai.cli import LOW_CONFIDENCE_HINT, format_reply
from tests.conftest import BIN, Service
from tests.images import HWD


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
