"""The baseline: one process, FastAPI + uvicorn, preprocess and predict per request.

Built like the original single-process service: a sync route that Starlette runs in its
thread pool, one forward pass per request (batch of one), the same model file and the same
core code (handai.preprocess, handai.inference) as the Ray Serve graph.

    .venv/bin/python -m benchmarks.baseline --port 8091
"""

from __future__ import annotations

import argparse
from typing import Annotated, Any

import numpy as np
import uvicorn
from fastapi import FastAPI, File, Query
from fastapi.responses import JSONResponse

from handai import registry
from handai.backends import plan
from handai.config import load_settings
from handai.errors import HandaiError
from handai.inference import Engine
from handai.preprocess import preprocess


def build_app() -> FastAPI:
    settings = load_settings()
    model_dir = settings.storage.models
    registry.seed_registry(model_dir, registry.SEED_DIR)
    model_id = registry.resolve_active(model_dir, settings.digits.initial_model)
    loaded = registry.load(model_dir, model_id)
    # The same forward pass as the Model deployment picks: the graph is compared, not the backend.
    forward = plan(
        loaded.module,
        loaded.sha256,
        loaded.manifest.arch,
        settings.app.backend,
        settings.app.threads,
    )
    engine = Engine(forward, loaded.manifest.temperature, settings.digits.uncertain_threshold)
    engine.predict(np.zeros((1, 1, 28, 28), np.float32), [True])  # warm
    app = FastAPI(title="Handai baseline")

    @app.exception_handler(HandaiError)
    def handai_error(_: Any, exc: HandaiError) -> JSONResponse:
        return JSONResponse({"code": exc.code, "message": exc.message}, status_code=exc.status)

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready", "model_id": model_id}

    @app.post("/v1/read")
    def read(
        file: Annotated[bytes, File()],
        tta: Annotated[bool | None, Query()] = None,
    ) -> dict[str, Any]:
        image = preprocess(file, max_side=settings.digits.max_image_side_px)
        flag = settings.digits.tta if tta is None else tta
        prediction = engine.predict(image.pixels, [flag])[0]
        return {
            "digit": prediction.digit,
            "confidence": prediction.confidence,
            "probs": prediction.probs,
            "top_k": [{"digit": d, "prob": p} for d, p in prediction.top_k],
            "model_id": model_id,
            "uncertain": prediction.uncertain,
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the baseline on one process.")
    parser.add_argument("--port", type=int, default=8091)
    args = parser.parse_args()
    app = build_app()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
