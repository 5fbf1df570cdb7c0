"""Whole numbers: segmentation on the cleaned image (handai.numbers), POST /v1/read/number over
real HTTP, and `handai read --number`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from benchmarks.images import scribbles_png
from handai.errors import HandaiError
from handai.numbers import MAX_CANDIDATES, MAX_DIGITS, Slot, choose, flatten, segment
from tests.conftest import API_KEY, Service
from tests.images import digit_row as row
from tests.images import hwd_tile as tile
from tests.images import number_png, png


def test_digits_come_in_reading_order_with_boxes_in_upload_pixels() -> None:
    img = row([tile(d) for d in "4096"], scale=4)  # 4x: boxes must scale back
    slots = segment(png(img))
    assert len(slots) == 4
    xs = [s.whole.box[0] for s in slots]
    assert xs == sorted(xs)
    for slot in slots:
        x, y, w, h = slot.whole.box
        assert x >= 0 and x + w <= img.shape[1] and y >= 0 and y + h <= img.shape[0]
        assert h > 40  # the 4x upload's pixels, not the working copy's
        assert slot.whole.image.pixels.shape == (1, 1, 28, 28)


def test_a_digit_broken_in_two_stacked_pieces_stays_one_digit() -> None:
    eight = tile("8").copy()
    ys = np.nonzero((eight < 128).any(axis=1))[0]
    middle = (ys.min() + ys.max()) // 2
    eight[middle - 1 : middle + 2] = 255  # a gap across the waist: two loops, one digit
    slots = segment(png(row([tile("2"), eight, tile("3")])))
    assert len(slots) == 3


def test_specks_are_not_digits() -> None:
    img = row([tile(d) for d in "57"])
    img[2:4, -5:-3] = 0  # a dot in the corner
    assert len(segment(png(img))) == 2


def zeros(centres: list[int]) -> bytes:
    """Pen-drawn zeros at these x positions (36 px wide: centres 34 apart touch)."""
    img = np.full((100, max(centres) + 40), 255, np.uint8)
    for x in centres:
        cv2.ellipse(img, (x, 50), (15, 30), 0, 0, 360, 0, 5)
    return png(img)


def test_touching_digits_get_a_split_to_choose() -> None:
    """Two digits that touch: the wide piece is offered whole, split in two at the profile's
    valleys, and in three (a narrow 1 may hide in a pair's width)."""
    slots = segment(zeros([30, 64, 130]))
    assert len(slots) == 2 and slots[0].splits and not slots[1].splits
    assert [len(split) for split in slots[0].splits] == [2, 2, 2, 3]


def test_choose_takes_the_reading_whose_confidences_multiply_to_the_most() -> None:
    slots = segment(zeros([30, 64, 130]))
    wide = Slot(slots[0].whole, slots[0].splits[:2])
    assert len(flatten([wide])) == 5  # the whole, then two ways of halving it
    whole_sure = choose([wide], [0.99, 0.6, 0.7, 0.9, 0.5], lambda a: a)
    assert [cut for cut, _ in whole_sure] == [wide.whole]
    second_sure = choose([wide], [0.3, 0.6, 0.7, 0.95, 0.9], lambda a: a)
    assert [cut for cut, _ in second_sure] == list(wide.splits[1])
    # Two sure halves (0.9 x 0.9) do not beat a whole surer than their product.
    whole_surer = choose([wide], [0.85, 0.9, 0.9, 0.2, 0.2], lambda a: a)
    assert [cut for cut, _ in whole_surer] == [wide.whole]


def test_choose_weighs_each_reading_by_what_the_shapes_say() -> None:
    """How likely the piece holds that many digits and how likely a split's cuts fall between
    digits scale the confidences' product (handai.shapes)."""
    wide = segment(zeros([30, 64, 130]))[0]
    answers = [0.99, 0.9, 0.9, 0.8, 0.8]
    # Two digits likely; the first split's cut doubtful: 0.9 x 0.2 x 0.81 = 0.15 and
    # 0.9 x 0.9 x 0.64 = 0.52 against the whole's 0.1 x 0.99.
    pair = Slot(wide.whole, wide.splits[:2], counts=(0.1, 0.9, 0.0), between=(0.2, 0.9))
    assert [cut for cut, _ in choose([pair], answers, lambda a: a)] == list(wide.splits[1])
    # One digit likely: the whole (0.89) beats any split (at most 0.1 x 0.9 x 0.81).
    one = Slot(wide.whole, wide.splits[:2], counts=(0.9, 0.1, 0.0), between=(0.9, 0.9))
    assert [cut for cut, _ in choose([one], answers, lambda a: a)] == [wide.whole]


@pytest.mark.parametrize(
    ("image", "fragment"),
    [
        (np.full((60, 200), 255, np.uint8), "no ink"),
        (row([tile(str(d % 10)) for d in range(MAX_DIGITS + 1)]), "expected 1-12 digits"),
    ],
    ids=["blank", "thirteen-digits"],
)
def test_no_digits_or_too_many_is_preprocessing_failed(
    image: NDArray[np.uint8], fragment: str
) -> None:
    with pytest.raises(HandaiError) as refused:
        segment(png(image))
    assert refused.value.code == "preprocessing_failed" and fragment in refused.value.message


def test_a_scribbled_row_is_read_at_a_bounded_cost() -> None:
    """Every piece is still offered whole, but the splits stop at MAX_CANDIDATES digits
    (twelve scribbles made 216: one upload cost the Model ~200 single reads)."""
    slots = segment(scribbles_png(12))
    assert len(slots) == 12
    assert len(flatten(slots)) <= MAX_CANDIDATES
    assert sum(bool(slot.splits) for slot in slots) >= 2  # the budget went to splits too


def test_a_reading_of_more_than_twelve_digits_is_preprocessing_failed() -> None:
    slots = segment(scribbles_png(12))
    answers = [1.0] * len(flatten(slots))  # every split as sure as every whole: the most digits
    too_many = [Slot(s.whole, s.splits, counts=(0.0, 1.0, 1.0)) for s in slots]
    with pytest.raises(HandaiError) as refused:
        choose(too_many, answers, lambda a: a)
    assert refused.value.code == "preprocessing_failed"
    assert "expected 1-12 digits" in refused.value.message


def test_read_number_over_http(service: Service) -> None:
    with service.client() as c:
        resp = c.post("/v1/read/number", files={"file": ("n.png", number_png("4096"), "image/png")})
        active = c.get("/v1/models/active").json()["model_id"]
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"number", "confidence", "uncertain", "digits", "model_id", "latency_ms"}
    assert isinstance(body["number"], str) and len(body["number"]) == 4
    product = float(np.prod([d["confidence"] for d in body["digits"]]))
    assert body["confidence"] == pytest.approx(product)
    assert body["uncertain"] == any(d["confidence"] < 0.85 for d in body["digits"])
    for digit in body["digits"]:
        assert set(digit) == {"digit", "confidence", "top_k", "box"} and len(digit["box"]) == 4
        assert len(digit["top_k"]) == 3
    assert body["model_id"] == active


def test_read_number_errors_match_read(service: Service) -> None:
    blank = png(np.full((60, 200), 255, np.uint8))
    with service.client() as c:
        failed = c.post("/v1/read/number", files={"file": ("b.png", blank, "image/png")})
        assert failed.status_code == 400 and failed.json()["code"] == "preprocessing_failed"
        wrong = c.post("/v1/read/number", files={"image": ("b.png", blank, "image/png")})
        assert wrong.status_code == 400 and wrong.json()["code"] == "malformed_multipart"
    with httpx.Client(base_url=service.secure_url, timeout=60) as c:
        files = {"file": ("n.png", number_png("12"), "image/png")}
        assert c.post("/v1/read/number", files=files).status_code == 401
        ok = c.post("/v1/read/number", files=files, headers={"X-Api-Key": API_KEY})
        assert ok.status_code == 200, ok.text


def test_cli_reads_a_number(service: Service, tmp_path: Path) -> None:
    image = tmp_path / "n.png"
    image.write_bytes(number_png("4096"))
    done = subprocess.run(
        [sys.executable, "-m", "handai.cli", "read", str(image), "--number", "--url", service.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    first, *rest = done.stdout.splitlines()
    assert first.startswith("Number: ") and "% confidence)" in first
    assert sum(line.startswith("Digit ") for line in rest) == 4


def test_number_reads_are_bounded_and_take_turns(service: Service) -> None:
    """A read of more than 12 digits is refused; TTA re-reads only the chosen digits; past
    `max_number_reads` at once, number reads answer 503 overloaded with Retry-After, and
    digit reads go on meanwhile."""
    with service.client() as c:
        many = c.post("/v1/read/number", files={"file": ("s.png", scribbles_png(12), "image/png")})
        assert many.status_code == 400 and many.json()["code"] == "preprocessing_failed"
        assert "expected 1-12 digits" in many.json()["message"]
        files = {"file": ("n.png", number_png("4096"), "image/png")}
        plain = c.post("/v1/read/number", files=files)
        tta = c.post("/v1/read/number", files=files, params={"tta": "true"})
    assert plain.status_code == tta.status_code == 200, tta.text
    assert len(plain.json()["number"]) == len(tta.json()["number"]) == 4
    # The same digits, read with TTA: each answer its own.
    assert [d["box"] for d in plain.json()["digits"]] == [d["box"] for d in tta.json()["digits"]]

    async def burst() -> tuple[list[httpx.Response], list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=service.url, timeout=60) as c:
            numbers = [
                c.post(
                    "/v1/read/number",
                    files={"file": ("s.png", scribbles_png(4), "image/png")},
                    params={"tta": "true"},
                )
                for _ in range(8)
            ]
            digits = [
                c.post("/v1/read", files={"file": ("n.png", number_png("7"), "image/png")})
                for _ in range(4)
            ]
            answers = await asyncio.gather(*numbers, *digits)
            return list(answers[:8]), list(answers[8:])

    numbers, digits = asyncio.run(burst())
    statuses = [r.status_code for r in numbers]
    assert set(statuses) == {200, 503}, statuses
    for r in numbers:
        if r.status_code == 503:
            assert r.json()["code"] == "overloaded" and r.headers["retry-after"] == "1"
    assert [r.status_code for r in digits] == [200] * 4
