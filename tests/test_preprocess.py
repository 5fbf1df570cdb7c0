import io
import time
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageDraw, ImageFilter

from handai.errors import HandaiError
from handai.preprocess import (
    BACKGROUND,
    MNIST_MEAN,
    MNIST_STD,
    _evenly_lit,
    _pieces,
    _soft_pieces,
    dark_background,
    decode,
    deskew,
    find_ink,
    flatten,
    keep_digit,
    otsu,
    preprocess,
    remove_lines,
)
from tests.images import (
    DATA,
    binary_digit,
    draw_seven,
    encode,
    hwd_digit,
    hwd_files,
    on_paper,
    tight_crop,
)
from train import wild

CODES = {
    "invalid_image",
    "unsupported_media_type",
    "bad_dimensions",
    "too_large",
    "preprocessing_failed",
}


def ink_of(pixels: np.ndarray) -> np.ndarray:
    ink: np.ndarray = pixels[0, 0] * MNIST_STD + MNIST_MEAN
    return ink


def test_output_is_mnist_shaped_and_normalized() -> None:
    out = preprocess(encode(draw_seven()))
    assert out.pixels.shape == (1, 1, 28, 28)
    assert out.pixels.dtype == np.float32
    ink = ink_of(out.pixels)
    assert ink.min() == pytest.approx(0.0, abs=1e-5)  # paper -> 0 (dark)
    assert ink.max() == pytest.approx(1.0, abs=0.05)  # ink -> 1 (light)
    assert out.pixels[0, 0, 0, 0] == pytest.approx(BACKGROUND)
    assert out.preview.shape == (28, 28) and out.preview.dtype == np.uint8


def test_digit_fits_20x20_and_is_centred_by_mass() -> None:
    ink = ink_of(preprocess(encode(draw_seven())).pixels)
    rows, cols = np.nonzero(ink > 0.05)
    assert max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) <= 21
    ys, xs = np.indices(ink.shape)
    cy, cx = (ys * ink).sum() / ink.sum(), (xs * ink).sum() / ink.sum()
    assert abs(cy - 13.5) <= 1.0 and abs(cx - 13.5) <= 1.0


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_every_supported_format_decodes(fmt: str) -> None:
    img = draw_seven()
    if fmt == "BMP":
        img = img.convert("RGB")
    out = preprocess(encode(img, fmt))
    assert out.pixels.shape == (1, 1, 28, 28)


def test_dark_background_is_inverted_automatically() -> None:
    light = preprocess(encode(draw_seven()))
    dark = preprocess(encode(draw_seven(ink=255, paper=0)))
    assert dark.inverted and not light.inverted
    np.testing.assert_allclose(light.pixels, dark.pixels, atol=1e-5)


def test_invert_override_wins() -> None:
    # Forcing the wrong polarity makes the paper the "ink": refused, never a guess.
    with pytest.raises(HandaiError) as err:
        preprocess(encode(draw_seven()), invert=True)
    assert err.value.code == "preprocessing_failed"
    assert not preprocess(encode(draw_seven()), invert=False).inverted


def test_alpha_is_composited_onto_white() -> None:
    rgba = Image.new("RGBA", (100, 100), (0, 0, 0, 0))  # transparent black "paper"
    d = ImageDraw.Draw(rgba)
    d.line([(50, 10), (50, 90)], fill=(0, 0, 0, 255), width=8)
    out = preprocess(encode(rgba))
    assert not out.inverted
    assert ink_of(out.pixels).max() > 0.9


@pytest.mark.parametrize("mode", ["P", "I;16", "CMYK", "RGB", "LA", "1"])
def test_modes_convert_to_gray(mode: str) -> None:
    img = draw_seven()
    if mode == "I;16":
        arr = np.asarray(img, dtype=np.uint16) * 257
        img = Image.fromarray(arr.astype(np.uint16))
        converted = img
    else:
        converted = img.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = preprocess(encode(converted, fmt))
    np.testing.assert_allclose(
        ink_of(out.pixels).sum(), ink_of(preprocess(encode(img)).pixels).sum(), rtol=0.15
    )


def test_exif_orientation_is_applied() -> None:
    img = draw_seven()
    rotated = img.transpose(Image.Transpose.ROTATE_90)  # stored sideways ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... and tagged "rotate 90 CW to display"
    out = preprocess(encode(rotated, "JPEG", exif=exif.tobytes(), quality=95))
    upright = preprocess(encode(img, "JPEG", quality=95))
    assert np.abs(out.pixels - upright.pixels).mean() < 0.1


def test_gif_uses_the_first_frame() -> None:
    frames = [draw_seven(), Image.new("L", (200, 200), 255)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    assert preprocess(buf.getvalue()).pixels.shape == (1, 1, 28, 28)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "invalid_image"),
        (b"hello, this is not an image", "invalid_image"),
        (encode(draw_seven())[:200], "invalid_image"),
        (encode(Image.new("L", (1, 1), 0)), "bad_dimensions"),
        (encode(Image.new("L", (2000, 100), 255)), "bad_dimensions"),
        (encode(Image.new("L", (1100, 1100), 255)), "too_large"),
        (encode(Image.new("L", (100, 100), 255)), "preprocessing_failed"),
        (encode(Image.new("L", (100, 100), 0)), "preprocessing_failed"),
        (encode(draw_seven(), "TIFF"), "unsupported_media_type"),
    ],
    ids=["empty", "text", "truncated", "1x1", "wide", "too-many-pixels", "white", "black", "tiff"],
)
def test_bad_inputs_get_their_code(data: bytes, code: str) -> None:
    with pytest.raises(HandaiError) as err:
        preprocess(data)
    assert err.value.code == code
    assert err.value.message


def test_decompression_bomb_is_refused_before_decoding() -> None:
    # A 10000x10000 PNG that compresses to ~100 kB.
    bomb = encode(Image.new("1", (10000, 10000), 1), optimize=True)
    start = time.perf_counter()
    with pytest.raises(HandaiError) as err:
        preprocess(bomb)
    assert err.value.code == "too_large"
    assert time.perf_counter() - start < 1.0


def test_otsu_splits_two_levels() -> None:
    gray = np.array([[10] * 50 + [200] * 50], dtype=np.uint8)
    assert 10 <= otsu(gray) < 200


def test_specks_go_and_a_second_stroke_stays() -> None:
    mask = np.zeros((60, 60), dtype=bool)
    mask[10:50, 28:32] = True  # the main stroke
    mask[10:14, 34:50] = True  # a bar drawn separately, like a 5's top
    mask[55:57, 2:4] = True  # a speck far away
    kept = keep_digit(mask)
    assert kept[12, 40] and kept[30, 30]
    assert not kept[56, 3]


def test_two_stroke_four_survives() -> None:
    mask = np.zeros((60, 60), dtype=bool)
    mask[5:35, 10:13] = True
    mask[33:36, 10:45] = True  # the open "L" of a 4
    mask[5:55, 38:41] = True  # the downstroke, not touching
    assert keep_digit(mask).sum() == mask.sum()


def test_deskew_straightens_a_slanted_bar_within_the_cap() -> None:
    ink = np.zeros((40, 40), dtype=np.float32)
    for y in range(40):
        x = int(10 + y * 0.1)
        ink[y, x : x + 3] = 1.0  # leans by atan(0.1) ~ 5.7 degrees
    out, angle = deskew(ink)
    assert 4.0 < angle < 7.0
    cols_per_row = [np.nonzero(r > 0.5)[0].mean() for r in out if (r > 0.5).any()]
    assert np.ptp(cols_per_row) < 2.0
    steep = np.eye(40, dtype=np.float32)  # 45 degrees: capped
    assert abs(deskew(steep)[1]) <= 10.0


def test_round_blob_is_not_deskewed() -> None:
    yy, xx = np.indices((30, 30))
    disk = (((yy - 15) ** 2 + (xx - 15) ** 2) < 100).astype(np.float32)
    assert deskew(disk)[1] == 0.0


def assert_finite_or_clear_error(data: bytes) -> None:
    """The read path's promise for any input: a 1x1x28x28 finite tensor or a HandaiError."""
    try:
        out = preprocess(data)
    except HandaiError as err:
        assert err.code in CODES
    else:
        assert out.pixels.shape == (1, 1, 28, 28) and np.isfinite(out.pixels).all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_only_raise_handai_errors(data: bytes) -> None:
    assert_finite_or_clear_error(data)


@settings(max_examples=100, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(8, 64), st.integers(8, 64))))
def test_arbitrary_arrays_give_finite_output_or_a_clear_error(arr: np.ndarray) -> None:
    assert_finite_or_clear_error(encode(Image.fromarray(arr)))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    canvas=st.integers(60, 250),
    fx=st.floats(0, 1),
    fy=st.floats(0, 1),
)
def test_shifted_on_a_larger_canvas_gives_the_same_tensor(
    seed: int, canvas: int, fx: float, fy: float
) -> None:
    digit = binary_digit(np.random.default_rng(seed))
    base = np.full((48, 48), 255, np.uint8)
    base[4:44, 4:44] = digit
    big = np.full((canvas, canvas), 255, np.uint8)
    y, x = int(fy * (canvas - 48)), int(fx * (canvas - 48))
    big[y : y + 48, x : x + 48] = base
    a = preprocess(encode(Image.fromarray(base)))
    b = preprocess(encode(Image.fromarray(big)))
    np.testing.assert_allclose(a.pixels, b.pixels, atol=1e-5)


@pytest.mark.parametrize("path", hwd_files()[::10], ids=lambda p: p.name)
def test_hand_drawn_digits_decode_keep_ink_and_centre(path) -> None:  # type: ignore[no-untyped-def]
    raw = path.read_bytes()
    source = np.asarray(Image.open(io.BytesIO(raw)).convert("L"))
    out = preprocess(raw)
    ink = ink_of(out.pixels)
    assert not out.inverted  # black ink on white
    # Most of the drawn ink survives the clean-up (measured as dark pixel mass).
    assert ink.sum() > 0.5 * ((255 - source.astype(np.float32)) / 255).sum() * (20 / 28) ** 2
    ys, xs = np.indices(ink.shape)
    cy, cx = (ys * ink).sum() / ink.sum(), (xs * ink).sum() / ink.sum()
    assert abs(cy - 13.5) <= 1.5 and abs(cx - 13.5) <= 1.5


def test_every_hand_drawn_digit_preprocesses() -> None:
    files = hwd_files()
    assert len(files) == 1000
    for path in files:
        assert preprocess(path.read_bytes()).pixels.shape == (1, 1, 28, 28)


def test_decode_keeps_small_images_whole() -> None:
    assert decode(encode(draw_seven(100)), max_side=1024).shape == (100, 100)
    assert max(decode(encode(draw_seven(1000)), max_side=1024).shape) <= 256


# Photos: every step on images rendered the way phones take them (tests/images.py).
SEVEN_HWD = hwd_files()[705]


def test_phone_jpegs_opened_as_mpo_are_read() -> None:
    img = draw_seven(300).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "MPO", save_all=True, append_images=[img.resize((150, 150))])
    mpo = buf.getvalue()
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    out = preprocess(mpo)
    np.testing.assert_allclose(out.pixels, preprocess(encode(img, "JPEG")).pixels, atol=0.2)


@pytest.mark.parametrize(
    ("upload", "light_ink"),
    [
        (lambda: on_paper(hwd_digit(SEVEN_HWD), shadow=0.6), False),
        (lambda: on_paper(hwd_digit(SEVEN_HWD), lines=True), False),
        (lambda: tight_crop(hwd_digit(SEVEN_HWD)), False),
        (lambda: encode(draw_seven(400, width=40, ink=230, paper=30)), True),
        (lambda: encode(draw_seven(28, width=3, ink=255, paper=0)), True),
    ],
    ids=["shadowed-photo", "ruled-photo", "tight-crop", "dark-mode", "mnist-style"],
)
def test_polarity_comes_from_the_whole_image(upload: Any, light_ink: bool) -> None:
    assert dark_background(decode(upload(), max_side=1024)) is light_ink


def test_a_shadow_is_divided_out_and_the_ink_stays() -> None:
    gray = decode(on_paper(hwd_digit(SEVEN_HWD), shadow=0.6), max_side=1024)
    darkening = flatten(gray)
    h, w = gray.shape
    assert gray[10, w - 10] < 0.6 * gray[10, 10]  # the right side really is in shadow
    assert darkening[: h // 5, w - w // 5 :].max() < 0.1  # shadowed paper: not ink
    assert np.percentile(darkening, 99.9) > 0.6  # the pen stroke: strongly ink


def test_ruled_lines_go_and_strokes_across_them_stay() -> None:
    side = 200
    darkening = np.zeros((side, side), np.float32)
    darkening[20::20, :] = 0.25  # faint ruled lines
    darkening[30:170, 98:102] = 0.9  # a "1": long, straight and dark
    darkening[100:104, 40:90] = 0.9  # a short bar crossing nothing
    cleaned = remove_lines(darkening)
    assert cleaned[20, 10] == 0.0 and cleaned[140, 150] == 0.0  # lines gone
    assert (cleaned[30:170, 98:102] == 0.9).all()  # the 1 whole, where it crosses lines too
    assert (cleaned[100:104, 40:90] == 0.9).all()


def test_a_pencil_stroke_as_faint_as_the_lines_is_not_cut_where_it_crosses_them() -> None:
    side = 200
    darkening = np.zeros((side, side), np.float32)
    darkening[20::12, :] = 0.19  # ruled lines, a little fainter than the pencil
    darkening[30:170, 96:104] = 0.28  # a pencil "1" across eleven of them
    cleaned = remove_lines(darkening)
    assert cleaned[20, 10] == 0.0 and cleaned[140, 150] == 0.0  # lines gone
    assert (cleaned[30:170, 96:104] == 0.28).all()  # the stroke whole, crossings included


def test_a_stray_mark_away_from_the_digit_is_dropped() -> None:
    mask = np.zeros((200, 200), dtype=bool)
    mask[40:140, 60:68] = True  # the digit
    mask[40:48, 60:110] = True
    mask[180:186, 150:190] = True  # a pen tick far below: 30 % of the digit's ink
    kept = keep_digit(mask)
    assert kept[100, 64] and not kept[183, 170]


def test_a_pen_tick_beside_a_pencil_digit_is_not_part_of_it() -> None:
    darkness = np.zeros((200, 200), np.float32)
    darkness[40:160, 96:102] = 0.2  # a pencil 1
    darkness[30:34, 110:140] = 0.6  # a pen tick near its top, as big as a 7's bar
    mask = darkness > 0.05
    kept = keep_digit(mask, darkness)
    assert kept[100, 98] and not kept[32, 120]
    assert keep_digit(mask)[32, 120]  # by shape alone it would be the bar of a 7
    darkness[30:34, 110:140] = 0.25  # the same stroke in the same pencil: part of the digit
    assert keep_digit(mask, darkness)[32, 120]


def test_pencil_is_read_and_blank_paper_refused() -> None:
    faint = on_paper(hwd_digit(SEVEN_HWD), shadow=0.4)  # then made pencil-faint below
    gray = decode(faint, max_side=1024).astype(np.float32)
    pencil = np.clip(255 - (255 - gray) * 0.25, 0, 255).astype(np.uint8)  # ink 25 % as dark
    assert preprocess(encode(Image.fromarray(pencil), "JPEG", quality=60)).pixels.shape == (
        1,
        1,
        28,
        28,
    )
    blank = np.full((400, 300), 235, np.uint8)
    blank[:, 150:] = 140  # paper, half of it in a hard shadow: no ink anywhere
    with pytest.raises(HandaiError) as err:
        preprocess(encode(Image.fromarray(blank), "JPEG"))
    assert err.value.code == "preprocessing_failed"


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(65, 300), st.integers(65, 300))))
def test_arbitrary_photo_sized_arrays_give_finite_output_or_a_clear_error(
    arr: np.ndarray,
) -> None:
    assert_finite_or_clear_error(encode(Image.fromarray(arr)))


def filled_crop(digit: np.ndarray, light_ink: bool, scale: int = 7) -> bytes:
    """A thick digit cropped to its ink, so the ink touches every edge and covers about half
    of the image: neither the border nor the bulk is paper."""
    thick = np.asarray(Image.fromarray(digit).filter(ImageFilter.MaxFilter(3)))
    rows, cols = np.nonzero(thick > 40)
    crop = thick[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    img = Image.fromarray(crop if light_ink else 255 - crop)
    return encode(img.resize((crop.shape[1] * scale, crop.shape[0] * scale)))


@pytest.mark.parametrize("light_ink", [False, True], ids=["dark-ink", "light-ink"])
def test_a_crop_filled_by_its_digit_gets_its_polarity_from_the_pieces(light_ink: bool) -> None:
    upload = filled_crop(hwd_digit(SEVEN_HWD), light_ink)
    gray = decode(upload, max_side=1024)
    assert max(gray.shape) > 64 and not _evenly_lit(gray)  # the bulk rule's case
    dark = gray <= otsu(gray)
    assert 0.3 < dark.mean() < 0.7  # ink is about half the image
    assert dark_background(gray) is light_ink
    out = preprocess(upload)
    assert out.inverted is light_ink and ink_of(out.pixels).sum() > 40


def test_tight_crops_rendered_in_both_polarities_are_never_refused() -> None:
    digits, labels = wild.sources(DATA)
    for upload in wild.render("tight", digits, labels, 60, seed=5):
        gray = decode(upload.data, max_side=1024)
        assert dark_background(gray) is upload.light_ink
        assert preprocess(upload.data).inverted is upload.light_ink


def test_pieces_count_strokes_not_specks() -> None:
    mask = np.zeros((100, 100), bool)
    mask[10:90, 10:14] = True  # a stroke
    mask[10:14, 10:60] = True  # joined to it: the same piece
    mask[50:90, 70:74] = True  # a second piece
    mask[95, 95] = True  # a speck: under 0.2 % of the image
    assert _pieces(mask) == 2
    assert _pieces(~mask) == 1


def test_a_half_ink_crop_keeps_its_ink_above_the_paper_noise() -> None:
    crop = np.full((120, 90), 245, np.uint8)
    crop[:, 25:65] = 20  # a broad stroke: with the bar, over half the crop
    crop[40:80, :] = 20
    ink = find_ink(crop)
    assert ink.mask.mean() > 0.5 and ink.mask[60, 45] and not ink.mask[5, 5]


def test_a_pattern_of_same_sized_marks_is_not_one_digit() -> None:
    keys = np.full((300, 400), 200, np.uint8)
    for y in range(20, 280, 60):
        for x in range(20, 380, 60):
            keys[y : y + 45, x : x + 45] = 60
    with pytest.raises(HandaiError, match="no single digit") as err:
        preprocess(encode(Image.fromarray(keys), "JPEG"))
    assert err.value.code == "preprocessing_failed"


def pencil_under_a_hard_shadow(shadow: bool) -> bytes:
    """A faint pencil 7 on paper and, optionally, the edge of a phone's shadow coming into the
    frame beside it: darker than the pencil, and too narrow a sliver of shadow for the
    background estimate to follow."""
    side = 400
    digit = np.zeros((side, side), np.float32)
    digit[40:200, 40:200] = wild.pen_ink(hwd_digit(SEVEN_HWD), 160, np.random.default_rng(0), 0.8)
    light = np.ones((side, side), np.float32)
    if shadow:
        mask = np.zeros((side, side), np.uint8)
        cv2.ellipse(mask, (560, 260), (200, 150), 0, 0, 360, 255, -1)
        light -= 0.5 * np.asarray(cv2.GaussianBlur(mask / 255.0, (0, 0), 10.0), np.float32)
    img = (230.0 * (1.0 - 0.2 * digit)) * light
    return encode(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), "JPEG", quality=80)


def test_a_hard_shadows_edge_is_not_taken_for_the_digit() -> None:
    upload = pencil_under_a_hard_shadow(shadow=True)
    gray = decode(upload, max_side=1024)
    darkening = remove_lines(flatten(gray))
    ink_level = float(np.percentile(darkening, 99.9))
    edge = _soft_pieces(gray, darkening, darkening > 0.35 * ink_level)
    h, w = gray.shape
    assert edge[:, w * 3 // 4 :].any()  # what the estimate leaves of the shadow is set aside,
    assert not edge[: h // 2, : w // 2].any()  # the pencil strokes are not
    alone = preprocess(pencil_under_a_hard_shadow(shadow=False)).pixels.ravel()
    read = preprocess(upload).pixels.ravel()
    assert np.corrcoef(alone, read)[0, 1] > 0.9  # the model sees the 7, not the shadow
