"""The HTTP edge: auth, limits, the original service's routes, and its error format.

No `from __future__ import annotations` here: Serve's class ingress needs real annotations.
"""

import asyncio
import base64
import contextvars
import importlib.metadata
import io
import logging
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    RequestCancelledError,
)
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Histogram
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.admission import Admission
from deployments.batching import Batcher
from deployments.deps import Admin, Authorized
from deployments.metrics import stage_histogram
from deployments.model import Answer
from deployments.rollout import rollout_model
from deployments.training import router as training_router
from handai import registry
from handai.config import load_settings
from handai.errors import STATUS, ErrorCode, HandaiError
from handai.manifest import Manifest
from handai.numbers import DigitCut
from handai.prediction import Prediction
from handai.preprocess import Preprocessed

log = logging.getLogger("ray.serve")
SERVICE = "handai"
PAGE = (Path(__file__).parent / "static" / "index.html").read_text(encoding="utf-8")
REPLICA_GONE = (RayActorError, ActorUnavailableError, DeploymentUnavailableError)
MULTIPART_SLACK = 64 * 1024  # boundaries, part headers and the manifest around a file
MANIFEST_LIMIT = 1024 * 1024
T = TypeVar("T")
RETRY_WAIT_S = 2.0  # a batch caught by a dying replica is sent once more, for this long


class TopK(BaseModel):
    digit: int
    prob: float


class ReadResponse(BaseModel):
    digit: int
    confidence: float
    probs: list[float]
    top_k: list[TopK]
    model_id: str
    uncertain: bool
    latency_ms: float
    visual_png_b64: str | None


class DigitReading(BaseModel):
    digit: int
    confidence: float
    top_k: list[TopK]
    box: list[int]  # x, y, width, height in the upload's pixels


class NumberResponse(BaseModel):
    number: str  # a string: leading zeros are part of what was written
    confidence: float  # the product of the digits' confidences
    uncertain: bool  # any digit uncertain
    digits: list[DigitReading]
    model_id: str
    latency_ms: float


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", "")) or uuid.uuid4().hex


def error_response(
    request: Request, code: ErrorCode, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    rid = request_id_of(request)
    body = ErrorBody(code=code, message=message, request_id=rid).model_dump()
    return JSONResponse(body, status_code=STATUS[code], headers=headers)


class RequestContext:
    """Pure ASGI middleware: request ids and body limits before any route runs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        # Serve's proxy puts X-Request-ID (the client's, or one it made) on the request and
        # echoes it on the response; the error body carries the same id.
        rid = headers.get("x-request-id", "")[:128] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        path = scope["path"].removeprefix(scope.get("root_path", ""))  # "/secure/v1/..." too
        digits = scope["app"].state.settings.digits
        if path.startswith("/v1/admin/"):
            limit = digits.max_model_bytes + MANIFEST_LIMIT + MULTIPART_SLACK
        else:
            limit = digits.max_image_bytes + MULTIPART_SLACK

        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await self._too_large(rid, limit, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HandaiError("too_large", f"expected a body of at most {limit} bytes")
            return message

        await self.app(scope, counted, send)

    @staticmethod
    async def _too_large(rid: str, limit: int, send: Send) -> None:
        body = (
            ErrorBody(
                code="too_large",
                message=f"expected a body of at most {limit} bytes",
                request_id=rid,
            )
            .model_dump_json()
            .encode()
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class IngressConfig(BaseModel):
    """The Ingress deployment's user_config: changing it reconfigures the replica in place."""

    model_config = ConfigDict(extra="forbid")

    # Reads queued together become one Preprocess call and one Model call.
    max_batch_size: Annotated[int, Field(ge=1, le=256)] = 32
    # Batches on their way through the graph at once: one gathers while another runs.
    max_batches_in_flight: Annotated[int, Field(ge=1, le=64)] = 2
    # Reads admitted at once per replica; more answer 503 overloaded straight away.
    max_pending_reads: Annotated[int, Field(ge=1)] = 256
    # Beyond `always_admit` reads in flight, a read expected to wait longer than this
    # answers 503 overloaded at once (as does one that would miss its deadline).
    max_wait_ms: Annotated[float, Field(gt=0.0)] = 120.0
    # Up to this many reads in flight are admitted whatever the estimate: a stall (a model
    # swap, one slow batch) must not turn a handful of clients away.
    always_admit: Annotated[int, Field(ge=0)] = 32
    # Whole-number reads in flight at once per replica; more answer 503 overloaded at once.
    # One costs the graph ~16 digit reads (a hostile one ~100): beside two clients posting
    # scribbles with TTA, 8 digit clients read 54/s with 2 allowed, 90/s with 1 (163 alone).
    max_number_reads: Annotated[int, Field(ge=1)] = 1


@dataclass(frozen=True)
class ReadJob:
    upload: bytes
    invert: bool | None
    tta: bool | None
    visualize: bool
    queued_at: float  # perf_counter() when it joined the queue


@dataclass(frozen=True)
class Reading:
    answer: Answer
    image: Preprocessed | None  # only when the caller asked to see what the model saw


class ActivateRequest(BaseModel):
    model_id: str


class Metrics:
    def __init__(self) -> None:
        self.errors = Counter(
            "handai_errors_total", description="Errors by code.", tag_keys=("code",)
        )
        self.reads = Counter(
            "handai_reads_total", description="Answers by digit.", tag_keys=("digit",)
        )
        self.uncertain = Counter("handai_uncertain_total", description="Uncertain answers.")
        self.stage = stage_histogram()
        self.batch = Histogram(
            "handai_ingress_batch_size",
            description="Reads per ingress batch (one Preprocess and one Model call).",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256],
        )


app = FastAPI(title="Handai", version=importlib.metadata.version("handai"))
app.add_middleware(RequestContext)
app.include_router(training_router)


def count_error(request: Request, code: str) -> None:
    metrics: Metrics | None = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors.inc(tags={"code": code})


@app.exception_handler(HandaiError)
async def handai_error(request: Request, exc: HandaiError) -> JSONResponse:
    count_error(request, exc.code)
    retry = exc.retry_after_s or (1 if exc.code in ("overloaded", "service_not_ready") else None)
    headers = {"Retry-After": str(retry)} if retry else None
    return error_response(request, exc.code, exc.message, headers)


@app.exception_handler(RequestValidationError)
async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"])
    count_error(request, "invalid_request")
    return error_response(request, "invalid_request", f"{where}: {first['msg']}")


@app.exception_handler(HTTPException)
async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    codes: dict[int, ErrorCode] = {404: "not_found", 405: "method_not_allowed"}
    code = codes.get(exc.status_code, "invalid_request")
    detail = exc.detail if isinstance(exc.detail, str) else "invalid request"
    if code == "not_found":
        detail = f"no route {request.method} {request.url.path}"
    response = error_response(request, code, detail)
    response.status_code = exc.status_code
    return response


@app.exception_handler(Exception)
async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    cause = _handai_cause(exc)
    if cause is not None:
        return await handai_error(request, cause)
    log.exception("unexpected error", extra={"request_id": request_id_of(request)})
    count_error(request, "internal_error")
    return error_response(request, "internal_error", "unexpected error; it has been logged")


def _handai_cause(exc: BaseException) -> HandaiError | None:
    """Ray wraps errors raised in other deployments; find ours inside. A replica that died or
    is unreachable mid-request is the service not being ready, not a bug: 503, retry."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, HandaiError):
            return seen
        if isinstance(seen, REPLICA_GONE):
            return HandaiError("service_not_ready", "a replica stopped mid-request; retry shortly")
        seen = getattr(seen, "cause", None) or seen.__cause__
    return None


async def read_form(request: Request, max_files: int = 2) -> FormData:
    ctype = request.headers.get("content-type", "")
    body_expected = request.headers.get("content-length", "1") != "0"
    if not body_expected:
        raise HandaiError("malformed_multipart", "expected a multipart/form-data body, got none")
    if not ctype.lower().startswith("multipart/form-data"):
        raise HandaiError(
            "unsupported_media_type", f"expected multipart/form-data, got {ctype or 'none'}"
        )
    try:
        return await request.form(max_files=max_files, max_fields=10)
    except (MultiPartException, HTTPException) as exc:  # starlette wraps the first in the second
        detail = getattr(exc, "detail", None) or getattr(exc, "message", str(exc))
        raise HandaiError("malformed_multipart", f"could not parse the upload: {detail}") from None


async def single_file(form: FormData, name: str, limit: int) -> bytes:
    parts = form.getlist(name)
    if len(parts) != 1 or not isinstance(parts[0], UploadFile):
        got = ", ".join(sorted(set(form.keys()))) or "no parts"
        raise HandaiError(
            "malformed_multipart",
            f"expected one file part named {name!r}, got {got}"
            + (f" ({len(parts)} parts named {name!r})" if len(parts) > 1 else ""),
        )
    part = parts[0]
    declared = (part.content_type or "").split(";")[0].strip().lower()
    if (
        name == "file"
        and declared
        and not (declared.startswith("image/") or declared == "application/octet-stream")
    ):
        raise HandaiError("unsupported_media_type", f"expected an image file, got {declared}")
    data = await part.read(limit + 1)
    if len(data) > limit:
        raise HandaiError("too_large", f"expected a file of at most {limit} bytes")
    return data


def preview_png(image: Preprocessed, max_kb: int) -> str | None:
    buf = io.BytesIO()
    Image.fromarray(image.preview).resize((112, 112), Image.Resampling.NEAREST).save(
        buf, format="PNG", optimize=True
    )
    if buf.tell() > max_kb * 1024:
        return None
    return base64.b64encode(buf.getvalue()).decode()


def _read_response(
    prediction: Prediction, model_id: str, start: float, visual: str | None
) -> ReadResponse:
    return ReadResponse(
        digit=prediction.digit,
        confidence=prediction.confidence,
        probs=prediction.probs,
        top_k=[TopK(digit=d, prob=p) for d, p in prediction.top_k],
        model_id=model_id,
        uncertain=prediction.uncertain,
        latency_ms=(time.perf_counter() - start) * 1000,
        visual_png_b64=visual,
    )


@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(self, preprocess: DeploymentHandle[Any], model: DeploymentHandle[Any]) -> None:
        self.preprocess = preprocess
        self.model = model
        self.settings = load_settings()
        # The page scales a phone's photo to the upload limits before sending it.
        self.page_html = PAGE.replace(
            "{{max_image_side_px}}", str(self.settings.digits.max_image_side_px)
        ).replace("{{max_image_bytes}}", str(self.settings.digits.max_image_bytes))
        self.metrics = Metrics()
        app.state.settings = self.settings
        app.state.metrics = self.metrics
        self.timeout = self.settings.digits.predict_timeout_seconds
        cfg = IngressConfig()
        self.admission = Admission(
            cfg.max_wait_ms / 1000,
            self.timeout,
            max_pending=cfg.max_pending_reads,
            always=cfg.always_admit,
        )
        self.reads = Batcher(self._read_batch, cfg.max_batch_size, cfg.max_batches_in_flight)
        self.max_number_reads = cfg.max_number_reads
        self.number_reads = 0  # in flight
        self.switching = asyncio.Lock()
        self.switches: set[asyncio.Task[Any]] = set()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        cfg = IngressConfig.model_validate(user_config)
        self.admission.max_pending = cfg.max_pending_reads
        self.admission.max_wait_s = cfg.max_wait_ms / 1000
        self.admission.always = cfg.always_admit
        self.reads.max_batch_size = cfg.max_batch_size
        self.reads.max_in_flight = cfg.max_batches_in_flight
        self.max_number_reads = cfg.max_number_reads

    @app.get("/", include_in_schema=False)
    async def page(self) -> HTMLResponse:
        """The try-it page: draw or photograph a digit, or a number (static, no build)."""
        return HTMLResponse(self.page_html)

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """Ready while this application's own graph answers: a Model replica returns its
        model and a Preprocess replica an (empty) batch. A replica reconfiguring in place
        still answers, so a model swap never reads as down."""
        try:
            info, _ = await asyncio.wait_for(
                asyncio.gather(self.model.info.remote(), self.preprocess.remote([], [])),
                timeout=5.0,
            )
        except Exception as exc:  # not ready, whatever the reason; say why in the log
            log.warning("not ready: %r", exc)
            info = {}
        ready = bool(info)
        body = {
            "status": "ready" if ready else "not_ready",
            "model_loaded": ready,
            "model_id": info.get("model_id"),
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/version")
    async def version(self) -> dict[str, str]:
        return {
            "service": SERVICE,
            "version": importlib.metadata.version("handai"),
            "build": os.environ.get("HANDAI_BUILD", "dev"),
            "commit": os.environ.get("HANDAI_COMMIT", "unknown"),
        }

    @app.get("/v1/models/active")
    async def active_model(self) -> dict[str, Any]:
        info = await self._model_info()
        fields = (
            "model_id",
            "arch",
            "n_classes",
            "version",
            "created_at",
            "schema_version",
            "val_acc",
            "temperature",
        )
        return {"model_loaded": True, **{k: info.get(k) for k in fields}}

    @app.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        active = (await self._model_info()).get("model_id")
        manifests = await asyncio.to_thread(registry.list_manifests, self.settings.storage.models)
        return {
            "active_model_id": active,
            "models": [{**m.public(), "active": m.model_id == active} for m in manifests],
        }

    @app.post("/v1/read", response_model=ReadResponse)
    @app.post("/v1/predict", response_model=ReadResponse)
    async def read(
        self,
        request: Request,
        _: Authorized,
        invert: Annotated[bool | None, Query()] = None,
        center: Annotated[bool, Query()] = True,
        visualize: Annotated[bool, Query()] = False,
        tta: Annotated[bool | None, Query()] = None,
    ) -> ReadResponse:
        start = time.perf_counter()
        # `center` is kept for the bot's old URLs: centring is what the model was trained on.
        del center

        def submit(data: bytes) -> Awaitable[Reading]:
            return self.reads.submit(ReadJob(data, invert, tta, visualize, time.perf_counter()))

        reading = await self._admitted(request, submit)
        if isinstance(reading.answer, HandaiError):
            raise reading.answer
        model_id, prediction = reading.answer
        visual = (
            preview_png(reading.image, self.settings.digits.visualize_max_kb)
            if reading.image is not None
            else None
        )
        self.metrics.reads.inc(tags={"digit": str(prediction.digit)})
        if prediction.uncertain:
            self.metrics.uncertain.inc()
        response = _read_response(prediction, model_id, start, visual)
        self.metrics.stage.observe(response.latency_ms, tags={"stage": "handler"})
        return response

    @app.post("/v1/read/number", response_model=NumberResponse)
    async def read_number(
        self,
        request: Request,
        _: Authorized,
        invert: Annotated[bool | None, Query()] = None,
        tta: Annotated[bool | None, Query()] = None,
    ) -> NumberResponse:
        """1-12 digits written in a row: segmented on the same cleaned image as /v1/read,
        every candidate digit read by the same Model deployment (batched with other reads)."""
        start = time.perf_counter()
        if self.number_reads >= self.max_number_reads:
            raise HandaiError(
                "overloaded", "too many whole-number reads at once; retry shortly", retry_after_s=1
            )
        self.number_reads += 1
        try:
            answers = await self._admitted(
                request, lambda data: self._read_digits(data, invert, tta)
            )
        finally:
            self.number_reads -= 1
        model_id = answers[0][1][0]
        predictions = [p for _, (_, p) in answers]
        for prediction in predictions:
            self.metrics.reads.inc(tags={"digit": str(prediction.digit)})
        return NumberResponse(
            number="".join(str(p.digit) for p in predictions),
            confidence=math.prod(p.confidence for p in predictions),
            uncertain=any(p.uncertain for p in predictions),
            digits=[
                DigitReading(
                    digit=p.digit,
                    confidence=p.confidence,
                    top_k=[TopK(digit=d, prob=q) for d, q in p.top_k],
                    box=list(cut.box),
                )
                for cut, (_, p) in answers
            ],
            model_id=model_id,
            latency_ms=(time.perf_counter() - start) * 1000,
        )

    async def _admitted(self, request: Request, work: Callable[[bytes], Awaitable[T]]) -> T:
        """What every read shares: admission (checked before the body is read, so a refusal
        does not parse the upload), the one `file` part, and the deadline."""
        self.admission.check()
        form = await read_form(request)
        data = await single_file(form, "file", self.settings.digits.max_image_bytes)
        ticket = self.admission.admit()
        try:
            return await asyncio.wait_for(work(data), timeout=self.timeout)
        except TimeoutError:
            # A batch the read joined goes on for the others; a read still queued is dropped.
            raise self.admission.timed_out(ticket) from None
        except BackPressureError:
            raise HandaiError("overloaded", "too many requests in flight; retry shortly") from None
        except RequestCancelledError:
            raise HandaiError("timeout", "the request was cancelled") from None
        finally:
            self.admission.release()

    async def _read_digits(
        self, data: bytes, invert: bool | None, tta: bool | None
    ) -> list[tuple[DigitCut, tuple[str, Prediction]]]:
        # Chained: Ray hands the slots straight to the Model. A HandaiError raised in another
        # deployment arrives wrapped: the edge unwraps it.
        slots = self.preprocess.segment.remote(data, invert)
        read: list[tuple[DigitCut, tuple[str, Prediction]]] = await self.model.read_number.remote(
            slots, tta
        )
        return read

    async def _read_batch(self, jobs: list[ReadJob]) -> list[Reading]:
        """One Preprocess call and one Model call for every read queued together.

        The calls are chained without awaiting in between: Ray hands Preprocess's output
        straight to the Model.
        """
        began = time.perf_counter()
        try:
            answers, images = await self._through_graph(jobs)
        except Exception as exc:  # a HandaiError raised in another deployment arrives wrapped
            cause = _handai_cause(exc)
            if cause is None:
                raise
            if cause.code != "service_not_ready":
                raise cause from None
            # A replica died mid-call: send the batch once more, which the handle routes to a
            # live replica. Briefly: with none left, waiting for a new one would only turn
            # these reads' 503 into a 504.
            log.warning("a replica stopped mid-batch; retrying %d read(s)", len(jobs))
            self.admission.replica_failed()
            try:
                answers, images = await asyncio.wait_for(self._through_graph(jobs), RETRY_WAIT_S)
            except TimeoutError:
                self.admission.replica_failed(none_left=True)  # new reads are told at once
                raise cause from None
            except Exception as again:
                self.admission.replica_failed(none_left=True)
                raise (_handai_cause(again) or again) from None
        done = time.perf_counter()
        self.admission.batch_done(len(jobs), began, done)
        self.metrics.batch.observe(len(jobs))
        for job in jobs:
            self.metrics.stage.observe((began - job.queued_at) * 1000, tags={"stage": "queue"})
            self.metrics.stage.observe((done - began) * 1000, tags={"stage": "graph"})
        return [
            Reading(answer, image if job.visualize and isinstance(image, Preprocessed) else None)
            for answer, image, job in zip(answers, images, jobs, strict=True)
        ]

    async def _through_graph(self, jobs: list[ReadJob]) -> tuple[list[Answer], list[Any]]:
        prepared = self.preprocess.remote([j.upload for j in jobs], [j.invert for j in jobs])
        answers: list[Answer] = await self.model.predict.remote(prepared, [j.tta for j in jobs])
        visualize = any(j.visualize for j in jobs)
        images: list[Any] = await prepared if visualize else [None] * len(jobs)
        return answers, images

    @app.post("/v1/admin/models/upload")
    async def upload(self, request: Request, _: Admin) -> dict[str, Any]:
        form = await read_form(request, max_files=2)
        manifest = await single_file(form, "manifest", MANIFEST_LIMIT)
        weights = await single_file(form, "model", self.settings.digits.max_model_bytes)
        model_id = str(form.get("model_id") or "")
        activate = str(form.get("activate") or "false").lower() in ("1", "true", "yes", "on")
        installed = await self._whole(self._install(model_id, manifest, weights, activate))
        return {
            "model_id": installed.model_id,
            "installed": True,
            "active": activate,
            "manifest": installed.public(),
        }

    @app.post("/v1/admin/models/activate")
    async def activate(self, body: ActivateRequest, _: Admin) -> dict[str, Any]:
        await self._whole(self._activate(body.model_id))
        return {"model_id": body.model_id, "active": True}

    async def _whole(self, work: Coroutine[Any, Any, T]) -> T:
        """Run an admin change to its end even if the client goes. Serve cancels the request
        of a client that disconnects or times out, and the handle calls made in its context;
        cancelled midway, a model could be installed but not activated, or recorded active
        and not rolled out. So the work runs as a task of its own, in a context of its own
        (Serve's cancellation reaches neither it nor its calls), and the request only waits."""
        task = asyncio.create_task(work, context=contextvars.Context())
        self.switches.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.switches.discard(task)
        # Logged in any case: a client that went away never hears of the failure.
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("admin change failed: %s", exc)

    async def _install(
        self, model_id: str, manifest: bytes, weights: bytes, activate: bool
    ) -> Manifest:
        installed = await asyncio.to_thread(
            registry.install, self.settings.storage.models, model_id, manifest, weights
        )
        if activate:
            await self._switch(model_id)
        return installed

    async def _activate(self, model_id: str) -> None:
        # Refused (404, 400) before anything changes if the model is missing or unloadable.
        await asyncio.to_thread(registry.load, self.settings.storage.models, model_id)
        await self._switch(model_id)

    async def _switch(self, model_id: str) -> None:
        """Record, then roll out."""
        async with self.switching:  # one activation at a time: the last one wins, whole
            await asyncio.to_thread(registry.set_active, self.settings.storage.models, model_id)
            await rollout_model(model_id)

    async def _model_info(self) -> dict[str, Any]:
        try:
            info: dict[str, Any] = await asyncio.wait_for(self.model.info.remote(), timeout=5.0)
        except TimeoutError:
            raise HandaiError("service_not_ready", "the model is not answering") from None
        return info
