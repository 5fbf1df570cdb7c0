"""Loader calibration: a real (small) Tune search of short TorchTrainer runs on the cluster."""

from __future__ import annotations

import pytest
import ray

from deployments.cluster import RAY_ENV
from tests.conftest import Service
from tests.images import MNIST
from train.calibrate import LoaderSettings, candidates, loader_settings, machine_signature, search
from train.trainer import MemoryPressureError, check_memory


def test_candidates_fit_the_cores() -> None:
    for cores in (1, 2, 16):
        grid = candidates(cores)
        assert grid
        assert all(c["num_workers"] * c["threads_per_worker"] <= cores for c in grid)


def test_memory_guard_stops_before_the_bound() -> None:
    assert check_memory(1 << 20) > 0
    with pytest.raises(MemoryPressureError, match="memory_pressure"):
        check_memory(1)


def test_search_measures_and_caches(
    service: Service, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the shared cluster, as `train.job --calibrate` runs it (Tune started a Ray of its
    own in this process when nothing was connected, and left it running)."""
    for name, value in RAY_ENV.items():
        monkeypatch.setenv(name, value)
    cache = tmp_path_factory.mktemp("calibration")
    grid = [
        {"num_workers": 1, "threads_per_worker": 1, "loader_workers": 0, "batch_size": 64},
        {"num_workers": 1, "threads_per_worker": 2, "loader_workers": 1, "batch_size": 64},
    ]
    ray.init(address=f"127.0.0.1:{service.cluster.ports.gcs}")
    try:
        best = search(MNIST, cache, memory_bound_mb=16384, grid=grid, batches=5)
    finally:
        ray.shutdown()
    assert best.samples_per_sec > 0
    assert best.model_dump(exclude={"samples_per_sec", "machine"}) in grid
    assert best.machine == machine_signature()
    # Without --calibrate and no cache: the defaults; the cached result once written.
    assert loader_settings(False, MNIST, cache).samples_per_sec == 0.0
    path = cache / f"calibration-{machine_signature()}.json"
    path.write_text(best.model_dump_json())
    assert loader_settings(False, MNIST, cache) == LoaderSettings.model_validate_json(
        path.read_text()
    )
