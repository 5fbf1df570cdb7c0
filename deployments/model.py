"""The Model deployment: batched ResNet-18 with test-time augmentation, swapped in the
background when reconfigure() names a new active model."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.metrics import Histogram

from deployments.metrics import stage_histogram
from handai import registry
from handai.config import Settings, load_settings
from handai.errors import HandaiError
from handai.manifest import Manifest
from handai.numbers import DigitCut, Slot, choose, flatten
from handai.prediction import N_VIEWS, Prediction
from handai.preprocess import Prepared, Preprocessed

if TYPE_CHECKING:
    from handai.inference import Engine

# A model id and its reading, or the error that image earned upstream.
Answer = tuple[str, Prediction] | HandaiError

log = logging.getLogger("ray.serve")
# Views a number read sends the Model per call: about an ingress batch's worth, so digit reads
# queued behind it wait one such pass, not the whole number's.
NUMBER_VIEWS = 32


class ModelConfig(BaseModel):
    """The Model deployment's user_config: changing it reconfigures replicas in place."""

    model_config = ConfigDict(extra="forbid")

    # Activation sets it (a fresh value each time) so that Serve calls reconfigure() on every
    # replica; the model served is always the one the registry's ACTIVE record names.
    rollout: str = ""
    tta: bool | None = None  # default for requests that don't say; None: settings.digits.tta
    # Ingress batches (each up to the Ingress's max_batch_size images) merged per forward pass.
    max_batch_size: Annotated[int, Field(ge=1, le=64)] = 4
    # 0: take what is queued when the last pass ends; load itself makes the batches.
    batch_wait_timeout_s: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0


@dataclass(frozen=True)
class Active:
    """Swapped as one reference, so a batch never sees half of an old and half of a new model."""

    manifest: Manifest
    engine: Engine


@serve.deployment
class Model:
    def __init__(self) -> None:
        # torch is imported here, in the replica, not with the module: Serve's build step
        # imports every deployment's module, and the Ingress imports this one's types.
        import torch

        self.settings: Settings = load_settings()
        if self.settings.app.threads:
            torch.set_num_threads(self.settings.app.threads)
        model_dir = self.settings.storage.models
        seeded = registry.seed_registry(model_dir, registry.SEED_DIR)
        if seeded:
            log.info("seeded %s with %s", model_dir, seeded)
        self.active: Active | None = None
        self.lock = threading.Lock()  # guards wanted, preparing and failed
        self.wanted = ""  # the model the last reconfigure() asked for
        self.preparing: threading.Thread | None = None
        self.failed: tuple[str, str] | None = None  # (model_id, why) of the last failed load
        self.tta_default = self.settings.digits.tta
        self.batch_hist = Histogram(
            "handai_batch_size",
            description="Images per forward pass.",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128],
        )
        self.stage = stage_histogram()
        self.infer_hist = Histogram(
            "handai_inference_ms",
            description="Forward pass time per batch (ms).",
            boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply the user_config; a new model is prepared in the background (see _prepare)."""
        cfg = ModelConfig.model_validate(user_config)
        model_id = registry.resolve_active(
            self.settings.storage.models, self.settings.digits.initial_model
        )
        if self.active is None:  # starting: Serve routes here only once this returns
            self.active = self._load(model_id)
            log.info("active model is %s", model_id)
        else:
            self._want(model_id)
        self.tta_default = self.settings.digits.tta if cfg.tta is None else cfg.tta
        # serve.batch's wrapper is untyped to mypy; these setters are its documented API.
        self.predict.set_max_batch_size(cfg.max_batch_size)  # type: ignore[attr-defined,misc]
        self.predict.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)  # type: ignore[attr-defined,misc]

    def _want(self, model_id: str) -> None:
        """Serve takes a replica out of routing while reconfigure() runs (Ray 2.60: UPDATING
        is not a routable state), so loading a model there stopped every read for seconds.
        Instead a thread prepares the wanted model beside the one serving and swaps it in."""
        with self.lock:
            self.wanted = model_id
            if self.preparing is None:
                self.preparing = threading.Thread(
                    target=self._prepare, name="prepare-model", daemon=True
                )
                self.preparing.start()

    def _prepare(self) -> None:
        """Load, convert, compile and warm the wanted model, then switch in one assignment;
        again while activations keep changing what is wanted."""
        while True:
            with self.lock:
                model_id = self.wanted
                if self.active is not None and self.active.manifest.model_id == model_id:
                    self.preparing = None
                    return
            try:
                ready = self._load(model_id)
            except Exception as exc:  # the old model keeps serving; activation reports it
                log.exception("could not load %s", model_id)
                with self.lock:
                    self.failed = (model_id, f"{type(exc).__name__}: {exc}")
                    if self.wanted == model_id:
                        self.preparing = None
                        return
                continue
            with self.lock:
                self.active, self.failed = ready, None
            log.info("active model is now %s", model_id)

    def _load(self, model_id: str) -> Active:
        from handai.backends import plan
        from handai.inference import Engine

        loaded = registry.load(self.settings.storage.models, model_id)
        forward = plan(
            loaded.module,
            loaded.sha256,
            loaded.manifest.arch,
            self.settings.app.backend,
            self.settings.app.threads,
        )
        log.info("%s runs on %s", model_id, forward.name)
        engine = Engine(
            forward, loaded.manifest.temperature, self.settings.digits.uncertain_threshold
        )
        engine.predict(np.zeros((1, 1, 28, 28), np.float32), [True])  # warm before serving
        return Active(loaded.manifest, engine)

    def serving(self) -> dict[str, str | None]:
        """What this replica serves, for a rollout waiting until every replica serves it."""
        with self.lock:
            failed = self.failed
        return {
            "replica": serve.get_replica_context().replica_id.unique_id,
            "model_id": self.active.manifest.model_id if self.active else None,
            "failed": failed[0] if failed else None,
            "error": failed[1] if failed else None,
        }

    def info(self) -> dict[str, Any]:
        if self.active is None:
            raise HandaiError("service_not_ready", "no model is loaded")
        return {**self.active.manifest.public(), "tta_default": self.tta_default}

    def check_health(self) -> None:
        if self.active is None:
            raise RuntimeError("no model is loaded")

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.0)  # type: ignore[arg-type]
    async def predict(  # type: ignore[misc]
        self, batches: list[list[Prepared]], tta: list[list[bool | None]]
    ) -> list[list[Answer]]:
        """Each call is one ingress batch; the calls queued together share one forward pass."""
        active = self.active
        if active is None:
            raise HandaiError("service_not_ready", "no model is loaded")
        items = [item for batch in batches for item in batch]
        flags = [flag for batch in tta for flag in batch]
        answers: dict[int, Answer] = {
            i: item for i, item in enumerate(items) if isinstance(item, HandaiError)
        }
        good = [(i, item) for i, item in enumerate(items) if isinstance(item, Preprocessed)]
        if good:
            pixels = np.concatenate([item.pixels for _, item in good])
            wanted = [self.tta_default if flags[i] is None else bool(flags[i]) for i, _ in good]
            start = time.perf_counter()
            # Off the event loop, so the next calls queue (and batch) meanwhile.
            priors = [item.prior for _, item in good]
            results = await asyncio.to_thread(active.engine.predict, pixels, wanted, priors)
            forward_ms = (time.perf_counter() - start) * 1000
            self.infer_hist.observe(forward_ms)
            self.batch_hist.observe(len(good))
            for _ in good:
                self.stage.observe(forward_ms, tags={"stage": "forward"})
            for (i, _), result in zip(good, results, strict=True):
                answers[i] = (active.manifest.model_id, result)
        out: list[list[Answer]] = []
        at = 0
        for batch in batches:
            out.append([answers[j] for j in range(at, at + len(batch))])
            at += len(batch)
        return out

    async def read_number(
        self, slots: list[Slot], tta: bool | None
    ) -> list[tuple[DigitCut, tuple[str, Prediction]]]:
        """A number's digits: every candidate read without TTA, the reading chosen
        (handai.numbers.choose), then with TTA on only the chosen digits read again with it
        (TTA on every candidate made one upload up to 9 x 64 views)."""
        cuts = flatten(slots)
        read = choose(slots, await self._read(cuts, False), lambda a: a[1].confidence)
        if not (self.tta_default if tta is None else tta):
            return read
        chosen = [cut for cut, _ in read]
        return list(zip(chosen, await self._read(chosen, True), strict=True))

    async def _read(self, cuts: list[DigitCut], tta: bool) -> list[tuple[str, Prediction]]:
        """Digits through `predict` a few views at a time, one call after another: digit reads
        queued meanwhile share the next forward pass instead of waiting behind all of them."""
        step = max(1, NUMBER_VIEWS // (N_VIEWS if tta else 1))
        read = []
        for at in range(0, len(cuts), step):
            part = cuts[at : at + step]
            answers: list[Answer] = await self.predict(  # type: ignore[misc, call-arg]
                [c.image for c in part], [tta] * len(part)
            )
            for answer in answers:
                if isinstance(answer, HandaiError):
                    raise answer
                read.append(answer)
        return read
