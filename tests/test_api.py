"""The HTTP contract over real HTTP against the Serve graph on a local Ray cluster."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ADMIN_KEY, API_KEY, Service
from tests.images import HWD, draw_seven, encode

SEVEN = (HWD / "7-001.png").read_bytes()
ERROR_KEYS = {"code", "message", "request_id"}


def read(
    client: httpx.Client,
    data: bytes,
    name: str = "d.png",
    ctype: str = "image/png",
    field: str = "file",
    **params: str,
) -> httpx.Response:
    return client.post("/v1/read", files={field: (name, data, ctype)}, params=params)


def assert_error(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == ERROR_KEYS
    assert body["code"] == code
    assert body["message"]
    assert body["request_id"] and resp.headers["x-request-id"] == body["request_id"]


def test_health_ready_version(service: Service) -> None:
    with service.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready" and ready.json()["model_loaded"] is True
        version = c.get("/version").json()
        assert version["service"] == "handai" and set(version) == {
            "service",
            "version",
            "build",
            "commit",
        }


def test_read_answers_in_the_original_shape(service: Service) -> None:
    with service.client() as c:
        resp = read(c, SEVEN)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {
        "digit",
        "confidence",
        "probs",
        "top_k",
        "model_id",
        "uncertain",
        "latency_ms",
        "visual_png_b64",
    }
    assert len(body["probs"]) == 10 and sum(body["probs"]) == pytest.approx(1, abs=1e-3)
    assert body["digit"] == int(np.argmax(body["probs"]))
    assert next(t["digit"] for t in body["top_k"]) == body["digit"] and len(body["top_k"]) == 3
    assert body["confidence"] == pytest.approx(max(body["probs"]))
    assert body["uncertain"] == (body["confidence"] < 0.85)
    assert body["visual_png_b64"] is None
    assert body["latency_ms"] > 0


def test_predict_alias_tta_and_visualize(service: Service) -> None:
    with service.client() as c:
        resp = c.post(
            "/v1/predict",
            files={"file": ("d.png", SEVEN, "image/png")},
            params={"tta": "true", "visualize": "true"},
        )
    assert resp.status_code == 200, resp.text
    png = base64.b64decode(resp.json()["visual_png_b64"])
    assert Image.open(io.BytesIO(png)).size[0] % 28 == 0


def test_concurrent_reads_share_batches_and_keep_their_own_answers(service: Service) -> None:
    """Reads that arrive together are batched; each still gets its own image's answer."""
    uploads = [(HWD / f"{digit}-001.png").read_bytes() for digit in range(10)]
    params = {"visualize": "true", "tta": "false"}
    with service.client() as c:
        alone = [read(c, data, **params).json() for data in uploads]

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=service.url, timeout=60) as c:
            calls = [
                c.post("/v1/read", files={"file": ("d.png", data, "image/png")}, params=params)
                for data in [*uploads, b"nope"] * 3
            ]
            return await asyncio.gather(*calls)

    responses = asyncio.run(together())
    for i, resp in enumerate(responses):
        if i % 11 == 10:  # the broken upload fails alone, not its batch
            assert_error(resp, 400, "invalid_image")
            continue
        body, expected = resp.json(), alone[i % 11]
        assert resp.status_code == 200, resp.text
        assert body["visual_png_b64"] == expected["visual_png_b64"]  # its own image
        # Its own probabilities (a batch may run in bf16 where a lone read ran in fp32).
        assert np.allclose(body["probs"], expected["probs"], atol=0.03)


def test_request_id_is_echoed_or_generated(service: Service) -> None:
    with service.client() as c:
        assert (
            c.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"]
            == "abc-123"
        )
        assert c.get("/healthz").headers["x-request-id"]


def test_active_model_and_listing(service: Service) -> None:
    with service.client() as c:
        active = c.get("/v1/models/active").json()
        listing = c.get("/v1/models").json()
    assert active["model_loaded"] is True
    for key in (
        "model_id",
        "arch",
        "n_classes",
        "version",
        "created_at",
        "schema_version",
        "val_acc",
        "temperature",
    ):
        assert key in active
    ids = {m["model_id"] for m in listing["models"]}
    assert {"test-a", "test-b"} <= ids
    assert [m["model_id"] for m in listing["models"] if m["active"]] == [active["model_id"]]


BAD_INPUTS = [
    ("text-as-png", {"file": ("a.png", b"just some text", "image/png")}, 400, "invalid_image"),
    (
        "truncated-png",
        {"file": ("a.png", SEVEN[: len(SEVEN) // 2], "image/png")},
        400,
        "invalid_image",
    ),
    (
        "one-pixel",
        {"file": ("a.png", encode(Image.new("L", (1, 1))), "image/png")},
        400,
        "bad_dimensions",
    ),
    (
        "blank",
        {"file": ("a.png", encode(Image.new("L", (64, 64), 255)), "image/png")},
        400,
        "preprocessing_failed",
    ),
    (
        "bomb",
        {"file": ("a.png", encode(Image.new("1", (10000, 10000), 1)), "image/png")},
        413,
        "too_large",
    ),
    ("wrong-field", {"image": ("a.png", SEVEN, "image/png")}, 400, "malformed_multipart"),
    ("pdf", {"file": ("a.pdf", b"%PDF-1.4", "application/pdf")}, 415, "unsupported_media_type"),
]


@pytest.mark.parametrize(
    ("files", "status", "code"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_uploads_get_their_code_and_service_stays_ready(
    service: Service, files: dict[str, tuple[str, bytes, str]], status: int, code: str
) -> None:
    with service.client() as c:
        assert_error(c.post("/v1/read", files=files), status, code)
        assert c.get("/readyz").status_code == 200


def test_two_files_and_empty_body(service: Service) -> None:
    with service.client() as c:
        two = c.post(
            "/v1/read",
            files=[
                ("file", ("a.png", SEVEN, "image/png")),
                ("file", ("b.png", SEVEN, "image/png")),
            ],
        )
        assert_error(two, 400, "malformed_multipart")
        assert_error(c.post("/v1/read"), 400, "malformed_multipart")
        assert_error(
            c.post(
                "/v1/read",
                content=b"x=1",
                headers={"content-type": "application/x-www-form-urlencoded"},
            ),
            415,
            "unsupported_media_type",
        )
        broken = c.post(
            "/v1/read",
            content=b"--zz\r\nnot a part",
            headers={"content-type": "multipart/form-data; boundary=zz"},
        )
        assert_error(broken, 400, "malformed_multipart")


def test_real_world_formats(service: Service) -> None:
    frames = [draw_seven(), Image.new("L", (200, 200), 255)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = encode(
        draw_seven().transpose(Image.Transpose.ROTATE_90).convert("RGB"),
        "JPEG",
        exif=exif.tobytes(),
    )
    cmyk = encode(draw_seven().convert("CMYK"), "JPEG")
    with service.client() as c:
        for data in (gif.getvalue(), rotated, cmyk):
            resp = read(c, data, ctype="image/jpeg")
            assert resp.status_code == 200, resp.text


def test_body_over_the_limit_is_refused_before_reading(service: Service) -> None:
    big = b"\0" * (3 * 1024 * 1024)
    with service.client() as c:
        assert_error(read(c, big), 413, "too_large")
        assert c.get("/readyz").status_code == 200


def test_framework_errors_use_the_error_format(service: Service) -> None:
    with service.client() as c:
        assert_error(c.get("/no/such/route"), 404, "not_found")
        assert_error(c.get("/v1/read"), 405, "method_not_allowed")
        assert_error(read(c, SEVEN, tta="maybe"), 400, "invalid_request")
        assert_error(
            c.post(
                "/v1/admin/models/activate",
                content=b"{",
                headers={"content-type": "application/json"},
            ),
            400,
            "invalid_request",
        )


def test_api_key_guards_reads_and_admin_but_not_health(service: Service) -> None:
    with service.client(secure=True) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        assert c.get("/version").status_code == 200
        assert_error(read(c, SEVEN), 401, "unauthorized")
        wrong = c.post(
            "/v1/read",
            files={"file": ("d.png", SEVEN, "image/png")},
            headers={"X-Api-Key": "wrong"},
        )
        assert_error(wrong, 401, "unauthorized")
        assert_error(
            c.post("/v1/admin/models/activate", json={"model_id": "test-a"}), 401, "unauthorized"
        )
        # The bot's read key never authorizes admin: it could replace the model otherwise.
        assert_error(
            c.post(
                "/v1/admin/models/activate",
                json={"model_id": "test-a"},
                headers={"X-Api-Key": API_KEY},
            ),
            401,
            "unauthorized",
        )
        ok = c.post(
            "/v1/read",
            files={"file": ("d.png", SEVEN, "image/png")},
            headers={"X-Api-Key": API_KEY},
        )
        assert ok.status_code == 200, ok.text
    with service.client() as c:  # the open app answers without a key
        assert read(c, SEVEN).status_code == 200


def test_activate_unknown_or_unsafe_model(service: Service) -> None:
    with service.client() as c:
        assert_error(
            c.post("/v1/admin/models/activate", json={"model_id": "nope"}), 404, "model_not_found"
        )
        assert_error(
            c.post("/v1/admin/models/activate", json={"model_id": "../x"}), 400, "invalid_model"
        )


def test_error_bodies_are_json(service: Service) -> None:
    with service.client() as c:
        resp = read(c, b"nope")
    assert resp.headers["content-type"].startswith("application/json")
    assert json.loads(resp.text)["code"] == "invalid_image"


def test_deadline_gives_504_and_cancels(service: Service) -> None:
    with httpx.Client(base_url=service.tight_url, timeout=60) as c:
        assert_error(read(c, SEVEN), 504, "timeout")
        assert c.get("/readyz").status_code == 200


def test_overload_answers_503_with_retry_after(service: Service) -> None:
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=service.secure_url, timeout=60) as c:
            return await asyncio.gather(
                *(
                    c.post(
                        "/v1/read",
                        files={"file": ("d.png", SEVEN, "image/png")},
                        params={"tta": "true"},
                        headers={"X-Api-Key": API_KEY},
                    )
                    for _ in range(40)
                )
            )

    responses = asyncio.run(burst())
    statuses = {r.status_code for r in responses}
    assert statuses <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    for r in responses:
        if r.status_code == 503:
            assert_error(r, 503, "overloaded")
            assert r.headers["retry-after"]
    with service.client(secure=True) as c:
        for _ in range(30):  # the queue drains: ready again
            if c.get("/readyz").status_code == 200:
                break
            time.sleep(1)
        assert c.get("/readyz").status_code == 200


def test_custom_metrics_reach_the_prometheus_export(service: Service) -> None:
    with service.client() as c:
        assert read(c, SEVEN).status_code == 200
        assert read(c, b"nope").status_code == 400
    wanted = (
        "handai_reads_total",
        "handai_errors_total",
        "handai_preprocess_ms",
        "handai_inference_ms",
        "handai_batch_size",
    )
    text = ""
    for _ in range(60):  # Ray pushes metrics every few seconds
        text = httpx.get(service.metrics_url, timeout=10).text
        # Other tests' errors may have exported the counter already: wait for this one's.
        if all(name in text for name in wanted) and 'code="invalid_image"' in text:
            break
        time.sleep(2)
    missing = [name for name in wanted if name not in text]
    assert not missing, missing
    assert 'code="invalid_image"' in text


def test_admin_is_off_until_an_admin_key_is_set(service: Service) -> None:
    """As shipped: no admin key, so no upload, activation or training job, whatever is sent."""
    with httpx.Client(base_url=service.tight_url, timeout=60) as c:
        for key in ("", API_KEY, ADMIN_KEY):
            headers = {"X-Api-Key": key} if key else {}
            for method, path, body in (
                ("POST", "/v1/admin/models/activate", {"model_id": "test-a"}),
                ("POST", "/api/v1/training/jobs", {"model_id": "x"}),
                ("GET", "/api/v1/training/jobs/train-x-00000000", None),
            ):
                resp = c.request(method, path, json=body, headers=headers)
                assert_error(resp, 403, "admin_disabled")
        assert read(c, SEVEN).status_code in (200, 504)  # reads are not admin


def test_model_uploads_are_bounded_by_the_model_limit(service: Service) -> None:
    """The secure app allows 1 MB models: a bigger upload is refused before it is read."""
    with service.client(secure=True, headers={"X-Api-Key": ADMIN_KEY}) as c:
        big = c.post(
            "/v1/admin/models/upload",
            files={
                "manifest": ("m.json", b"{}", "application/json"),
                "model": ("model.pt", b"0" * (3 * 1024 * 1024), "application/octet-stream"),
            },
            data={"model_id": "big"},
        )
    assert_error(big, 413, "too_large")
