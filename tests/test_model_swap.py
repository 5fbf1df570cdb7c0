"""The Model deployment's swap, run on the class itself (Serve's part is in test_swap.py).

Serve stops routing to a replica while its reconfigure() runs (Ray 2.60), so reconfigure()
must return at once and leave the new model to a thread, the old one serving meanwhile.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployments.model import Model
from handai import backends
from handai.registry import MODEL_FILE, set_active
from tests.conftest import make_model

IMAGE = np.zeros((1, 1, 28, 28), np.float32)


@pytest.fixture
def replica(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    models = tmp_path / "models"
    for seed, model_id in enumerate(("m-a", "m-b", "m-c", "m-bad")):
        make_model(models, model_id, seed)
    set_active(models, "m-a")
    monkeypatch.setenv("STORAGE__ROOT", str(tmp_path))
    monkeypatch.setenv("APP__BACKEND", "torch")  # the swap's logic, without conversions
    monkeypatch.setattr(backends, "CACHE", tmp_path / "cache")
    # serve.deployment is typed as keeping the class; at run time it is a Deployment.
    model = Model.func_or_class()  # type: ignore[attr-defined]
    model.reconfigure({})  # as Serve does when the replica starts: loaded before it returns
    yield model
    if model.preparing is not None:
        model.preparing.join(timeout=60)


def held_plan_lock(tmp_path: Path) -> Any:
    """Hold the lock the backend plan takes: a preparation waits there, as on a slow CPU."""
    (lock,) = (tmp_path / "cache").glob("plan-*.lock")
    handle = lock.open("a")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def finish(model: Any) -> None:
    thread = model.preparing
    if thread is not None:
        thread.join(timeout=60)
    assert model.preparing is None


def test_a_new_model_is_prepared_beside_the_serving_one(replica: Any, tmp_path: Path) -> None:
    assert replica.active.manifest.model_id == "m-a"
    set_active(tmp_path / "models", "m-b")
    with held_plan_lock(tmp_path):
        replica.reconfigure({"rollout": "m-b@1"})  # returns while m-b cannot be ready
        assert replica.preparing is not None and replica.preparing.is_alive()
        assert replica.active.manifest.model_id == "m-a"
        assert len(replica.active.engine.predict(IMAGE, [True])) == 1  # still answering
    finish(replica)
    assert replica.active.manifest.model_id == "m-b" and replica.failed is None


def test_activations_in_quick_succession_end_on_the_last(replica: Any, tmp_path: Path) -> None:
    with held_plan_lock(tmp_path):
        set_active(tmp_path / "models", "m-b")
        replica.reconfigure({"rollout": "m-b@1"})
        set_active(tmp_path / "models", "m-c")
        replica.reconfigure({"rollout": "m-c@2"})
    finish(replica)
    assert replica.active.manifest.model_id == "m-c"


def test_a_model_that_cannot_load_leaves_the_old_one_serving(replica: Any, tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "m-bad" / MODEL_FILE).write_bytes(b"not the weights the manifest names")
    set_active(models, "m-bad")
    replica.reconfigure({"rollout": "m-bad@1"})
    finish(replica)
    assert replica.active.manifest.model_id == "m-a"
    assert replica.failed is not None and replica.failed[0] == "m-bad"
    assert "sha256" in replica.failed[1]  # what the activation reports
    set_active(models, "m-b")  # the next activation clears it
    replica.reconfigure({"rollout": "m-b@2"})
    finish(replica)
    assert replica.active.manifest.model_id == "m-b" and replica.failed is None
