"""Dataloader calibration: a Ray Tune search over loader settings, scored by measured samples/s.

Each trial is a short real TorchTrainer run (Ray 2.60's Train V2 runs inside a Tune function
trainable, not as one). Trials run one at a time so they don't compete for the cores, each
worker asking for the CPU share that fits beside Serve (train.placement: a whole CPU per
worker never scheduled on the cluster `make serve` starts). The winner is cached per
machine signature; `python -m train.job --calibrate` searches afresh.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import platform
from pathlib import Path
from typing import Annotated, Any

import psutil
import ray
import ray.train
import torch
from pydantic import BaseModel, ConfigDict, Field
from ray import tune
from ray.train.torch import TorchTrainer

from train.placement import MIN_CPU_SHARE, NoRoomError, free_cpus_by_node, widest_share
from train.trainer import TrainConfig, train_loop

log = logging.getLogger(__name__)
TRIAL_BATCHES = 30
TRIAL_CPU = 0.01  # what the Tune trial driving the workers holds: Tune refuses zero


class LoaderSettings(BaseModel):
    model_config = ConfigDict(extra="ignore")

    num_workers: Annotated[int, Field(ge=1)] = 1
    threads_per_worker: Annotated[int, Field(ge=1)] = 1
    loader_workers: Annotated[int, Field(ge=0)] = 0
    batch_size: Annotated[int, Field(ge=8)] = 128
    samples_per_sec: float = 0.0  # 0: not measured, a default
    machine: str = ""

    def override(self, **values: int | None) -> LoaderSettings:
        return self.model_copy(update={k: v for k, v in values.items() if v is not None})


def machine_signature() -> str:
    mem_gb = round(psutil.virtual_memory().total / 2**30)
    cores = os.cpu_count() or 1
    return (
        f"{platform.machine()}-{cores}c-{mem_gb}g-torch{torch.__version__}-ray{ray.__version__}"
        f"-gpu{torch.cuda.device_count()}"
    )


def default_settings() -> LoaderSettings:
    """Before any search: one worker using every core, which measured best here."""
    return LoaderSettings(threads_per_worker=os.cpu_count() or 1, machine=machine_signature())


def candidates(cores: int) -> list[dict[str, int]]:
    """Worker x thread splits that fit the cores, with and without loader processes."""
    grid = []
    for workers, threads, loaders, batch in itertools.product(
        (1, 2, 4), (1, 2, 4, 8), (0, 1, 2), (64, 128)
    ):
        if workers * threads <= cores and workers <= cores and (loaders == 0 or loaders < cores):
            grid.append(
                {
                    "num_workers": workers,
                    "threads_per_worker": threads,
                    "loader_workers": loaders,
                    "batch_size": batch,
                }
            )
    return grid


def _trial(config: dict[str, Any]) -> None:
    choice = config["choice"]
    base = TrainConfig.model_validate(config["base"])
    cfg = base.model_copy(
        update={
            "threads_per_worker": choice["threads_per_worker"],
            "loader_workers": choice["loader_workers"],
            "batch_size": choice["batch_size"],
        }
    )
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=cfg.model_dump(mode="json"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=choice["num_workers"],
            resources_per_worker={"CPU": config["shares"][str(choice["num_workers"])]},
        ),
        run_config=ray.train.RunConfig(
            name=f"calibrate-{tune.get_context().get_trial_id()}",
            storage_path=config["storage"],
        ),
    )
    metrics = trainer.fit().metrics or {}
    tune.report(
        {
            "samples_per_sec": metrics.get("samples_per_sec", 0.0),
            "rss_mb": metrics.get("rss_mb", 0.0),
        }
    )


def search(
    data_root: Path,
    cache_dir: Path,
    memory_bound_mb: int,
    grid: list[dict[str, int]] | None = None,
    batches: int = TRIAL_BATCHES,
) -> LoaderSettings:
    base = TrainConfig(
        model_id="calibration",
        run_id="calibration",
        epochs=1,
        max_batches=batches,
        measure_only=True,
        data_root=data_root,
        cache_dir=cache_dir,
        train_limit=10000,
        memory_limit_mb=memory_bound_mb,
    )
    storage = str((cache_dir / "calibration-runs").resolve())
    free = [max(f - TRIAL_CPU, 0.0) for f in free_cpus_by_node()]
    choices = grid or candidates(os.cpu_count() or 1)
    shares = {str(n): widest_share(free, n) for n in {c["num_workers"] for c in choices}}
    fitting = [c for c in choices if shares[str(c["num_workers"])] >= MIN_CPU_SHARE]
    if not fitting:
        raise NoRoomError(
            f"no room to calibrate: free CPUs per node {', '.join(f'{f:.2f}' for f in free)}"
        )
    tuner = tune.Tuner(
        # The trial only drives its Train workers: a token share.
        tune.with_resources(_trial, {"CPU": TRIAL_CPU}),
        param_space={
            "base": base.model_dump(mode="json"),
            "storage": storage,
            "shares": shares,
            "choice": tune.grid_search(fitting),
        },
        tune_config=tune.TuneConfig(max_concurrent_trials=1),
        run_config=tune.RunConfig(name="calibration", storage_path=storage),  # not ~/ray_results
    )
    results = tuner.fit()
    best: LoaderSettings | None = None
    for index in range(len(results)):
        result = results[index]
        metrics = result.metrics or {}
        if result.error or metrics.get("rss_mb", 0.0) > memory_bound_mb:
            continue
        found = LoaderSettings(
            **(result.config or {})["choice"],
            samples_per_sec=metrics.get("samples_per_sec", 0.0),
            machine=machine_signature(),
        )
        log.info("calibration trial %s", found.model_dump())
        if best is None or found.samples_per_sec > best.samples_per_sec:
            best = found
    return best or default_settings()


def loader_settings(force: bool, data_root: Path, cache_dir: Path) -> LoaderSettings:
    """The cached calibration for this machine; a fresh search when forced."""
    path = cache_dir / f"calibration-{machine_signature()}.json"
    if not force and path.is_file():
        return LoaderSettings.model_validate_json(path.read_text())
    if not force:
        return default_settings()
    bound = int(psutil.virtual_memory().total / 2**20 * 0.5)
    chosen = search(data_root, cache_dir, bound)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(chosen.model_dump(), indent=2))
    log.info("calibrated loader settings: %s", chosen.model_dump())
    return chosen
