"""The Ray Train loop: DDP ResNet-18 on preprocessed MNIST, one report and checkpoint per epoch."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import psutil
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import DataLoader

from handai.backends import native_bf16
from handai.model import build_model
from handai.storage import location, write_whole
from train.augment import build_augment
from train.augment_config import NONE, AugmentConfig
from train.data import DigitDataset, joined, load_split, load_wild, model_input, train_val
from train.events import Events
from train.layout import LAYOUTS, fastest_layout

log = logging.getLogger(__name__)
STATE_FILE = "state.pt"
NICENESS = 19  # the lowest OS priority: serving shares these cores and goes first
# Images per forward pass when scoring (logits_of, validation): on a CPU 28x28 activations of 64
# images stay in cache; at 512 a pass took 26.6 ms an image against 19.7 (1 thread, AVX2 EPYC).
# Not measured on a GPU, where validation is a small part of an epoch either way.
EVAL_BATCH = 64


class MemoryPressureError(RuntimeError):
    """A worker grew past its memory bound; raised before the machine runs out."""


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: str
    run_id: str
    request_id: str = ""
    user_id: int | str = ""
    epochs: Annotated[int, Field(ge=1, le=200)] = 8
    batch_size: Annotated[int, Field(ge=8, le=4096)] = 128
    lr: Annotated[float, Field(gt=0, le=10)] = 0.1
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 5e-4
    optimizer: Literal["sgd", "adamw"] = "sgd"
    schedule: Literal["onecycle", "cosine"] = "onecycle"
    seed: int = 0
    augment: AugmentConfig = NONE
    data_root: Path
    cache_dir: Path
    progress_file: str | None = None  # a path or a URI (see handai.storage)
    train_limit: Annotated[int, Field(ge=100)] | None = None
    wild_renders: Annotated[int, Field(ge=0)] = 0  # per style (train.data.load_wild)
    max_batches: Annotated[int, Field(ge=1)] | None = None  # per epoch; calibration runs
    # Calibration trials: samples/s and memory only, no validation (scoring the validation
    # digits took longer than the trial's 30 batches on an AVX2-only CPU) and no weights saved.
    measure_only: bool = False
    threads_per_worker: Annotated[int, Field(ge=1, le=256)] = 1
    loader_workers: Annotated[int, Field(ge=0, le=32)] = 0
    memory_limit_mb: Annotated[int, Field(ge=256)] = 8192
    redis_url: str | None = None
    init_from: Path | None = None  # a model.pt to fine-tune instead of starting from scratch


def check_memory(limit_mb: int) -> float:
    """RSS of this worker and its loader processes; raises before it passes the bound."""
    proc = psutil.Process()
    rss = proc.memory_info().rss + sum(
        c.memory_info().rss for c in proc.children(recursive=True) if c.is_running()
    )
    rss_mb = rss / 2**20
    if rss_mb > limit_mb:
        raise MemoryPressureError(
            f"memory_pressure: worker RSS {rss_mb:.0f} MB is over its {limit_mb} MB bound; "
            "lower batch_size or loader_workers"
        )
    return rss_mb


def logits_of(
    model: nn.Module, images: NDArray[np.uint8], batch_size: int = EVAL_BATCH
) -> torch.Tensor:
    """Plain (no TTA) logits for preprocessed images: used for validation and calibration.
    bf16 only where the CPU does it natively: emulated, it made a refit on an AVX2-only
    machine take over 30 minutes instead of a few."""
    model.eval()
    outs = []
    bf16 = native_bf16(torch.device("cpu"))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start : start + batch_size]).float().div_(255.0)
            outs.append(model(model_input(x.unsqueeze(1))).float())
    return torch.cat(outs)


def _loaders(cfg: TrainConfig) -> tuple[DataLoader[Any], DataLoader[Any]]:
    full = load_split(cfg.data_root, "train", cfg.cache_dir, cfg.train_limit)
    train, val = train_val(full, cfg.seed)
    if cfg.wild_renders:
        train = joined(train, load_wild(train, cfg.wild_renders, cfg.seed, cfg.cache_dir))
    common: dict[str, Any] = {
        "num_workers": cfg.loader_workers,
        "persistent_workers": cfg.loader_workers > 0,
    }
    train_loader = DataLoader(
        DigitDataset(train),
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        **common,
    )
    val_loader = DataLoader(DigitDataset(val), batch_size=EVAL_BATCH, **common)
    return (
        ray.train.torch.prepare_data_loader(train_loader),
        ray.train.torch.prepare_data_loader(val_loader),
    )


def _optimizer(
    cfg: TrainConfig, model: nn.Module, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt: torch.optim.Optimizer
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=0.9,
            nesterov=True,
            weight_decay=cfg.weight_decay,
        )
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched: torch.optim.lr_scheduler.LRScheduler
    if cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    return opt, sched


def _evaluate(
    model: nn.Module, loader: DataLoader[Any], device: torch.device, bf16: bool
) -> tuple[float, float]:
    """Validation accuracy and NLL over every worker's shard."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # correct, nll sum, count
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for x, y in loader:
            logits = model(model_input(x)).float()
            totals[0] += (logits.argmax(1) == y).sum().item()
            totals[1] += F.cross_entropy(logits, y, reduction="sum").item()
            totals[2] += len(y)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    return float(totals[0] / totals[2]), float(totals[1] / totals[2])


def _write_progress(path: str | None, progress: dict[str, Any]) -> None:
    if path is None:
        return
    place = location(path)
    place.parent.mkdir(parents=True, exist_ok=True)
    write_whole(place, json.dumps(progress).encode())


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    cfg = TrainConfig.model_validate(config)
    torch.set_num_threads(cfg.threads_per_worker)
    # First: loading the data and timing the layouts are work too (threads started later,
    # torch's pool and loader processes, inherit the priority).
    yield_to_serving()
    torch.manual_seed(cfg.seed)
    rank = ray.train.get_context().get_world_rank()
    lead = rank == 0
    events = Events(
        request_id=cfg.request_id,
        user_id=cfg.user_id,
        model_id=cfg.model_id,
        run_id=cfg.run_id,
        redis_url=cfg.redis_url,
    )
    train_loader, val_loader = _loaders(cfg)
    augment = build_augment(cfg.augment)
    base = build_model()
    if cfg.init_from is not None:  # a resumed run's checkpoint below replaces these weights
        base.load_state_dict(torch.load(cfg.init_from, map_location="cpu", weights_only=True))
    device = ray.train.torch.get_device()
    bf16 = native_bf16(device)
    layout = fastest_layout(device, bf16, cfg.batch_size, cfg.cache_dir)
    log.info("training in the %s layout (measured faster here)", layout)
    model = ray.train.torch.prepare_model(base.to(memory_format=LAYOUTS[layout]))
    per_epoch = (
        len(train_loader) if cfg.max_batches is None else min(cfg.max_batches, len(train_loader))
    )
    opt, sched = _optimizer(cfg, model, per_epoch * cfg.epochs)
    event_every = max(1, per_epoch // 10)  # ten progress events per epoch
    start_epoch, best_acc = 0, -1.0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restarted run with the same name picks up where it was
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, weights_only=True)
        _unwrap(model).load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, best_acc = int(state["epoch"]) + 1, float(state["best_acc"])
        log.info("resuming at epoch %d", start_epoch + 1)
    if lead and start_epoch == 0:
        events.publish("started", epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr)

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        seen, loss_sum, correct, tick = 0, 0.0, 0, time.perf_counter()
        for step, (x, y) in enumerate(train_loader):
            if step >= per_epoch:
                break
            x = model_input(x, augment)  # augmented in fp32, outside autocast
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(y)
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            if step % 20 == 0:
                check_memory(cfg.memory_limit_mb)
            if lead and (step + 1) % event_every == 0:
                progress = {
                    "epoch": epoch + 1,
                    "batch": step + 1,
                    "batches": per_epoch,
                    "loss": loss_sum / seen,
                    "accuracy": correct / seen,
                    "samples_per_sec": seen / (time.perf_counter() - tick),
                }
                events.publish("batch", **progress)
                _write_progress(cfg.progress_file, progress)
        world = ray.train.get_context().get_world_size()
        samples_per_sec = seen * world / (time.perf_counter() - tick)
        if cfg.measure_only:
            _report_measured(samples_per_sec, check_memory(cfg.memory_limit_mb), lead)
            continue
        val_acc, val_nll = _evaluate(model, val_loader, device, bf16)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "val_acc": val_acc,
            "val_nll": val_nll,
            "samples_per_sec": samples_per_sec,
            "rss_mb": check_memory(cfg.memory_limit_mb),
        }
        improved = val_acc > best_acc
        best_acc = max(best_acc, val_acc)
        if lead:
            events.publish("epoch", **metrics)
            if improved:
                events.publish("best", epoch=epoch + 1, val_acc=val_acc)
            _write_progress(cfg.progress_file, {**metrics, "batch": per_epoch})
        with tempfile.TemporaryDirectory() as folder:
            ckpt = None
            if lead:
                torch.save(
                    {
                        "model": _unwrap(model).state_dict(),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "epoch": epoch,
                        "best_acc": best_acc,
                    },
                    Path(folder) / STATE_FILE,
                )
                ckpt = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=ckpt)
        if not math.isfinite(metrics["train_loss"]):
            raise RuntimeError(f"training diverged at epoch {epoch + 1}: loss is not finite")


def _report_measured(samples_per_sec: float, rss_mb: float, lead: bool) -> None:
    """A calibration trial's report. Ray Train V2 keeps only metrics reported with a
    checkpoint, so the figures go with one that holds them alone (a trial's weights are
    never used)."""
    metrics = {"samples_per_sec": samples_per_sec, "rss_mb": rss_mb}
    with tempfile.TemporaryDirectory() as folder:
        ckpt = None
        if lead:
            (Path(folder) / "measured.json").write_text(json.dumps(metrics))
            ckpt = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=ckpt)


def yield_to_serving() -> None:
    """Lower every thread of this worker (Linux priorities are per thread) to NICENESS, so a
    Model replica's forward pass preempts a training step instead of waiting for one."""
    tasks = Path("/proc/self/task")
    for tid in tasks.iterdir() if tasks.is_dir() else []:
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid.name), NICENESS)
        except (OSError, ValueError):  # a thread that ended meanwhile; not Linux
            continue


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)
    assert isinstance(inner, nn.Module)
    return inner


def load_checkpoint_model(checkpoint: ray.train.Checkpoint) -> nn.Module:
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, weights_only=True)
    model = build_model()
    model.load_state_dict(state["model"])
    return model.eval()


def default_memory_limit_mb(num_workers: int) -> int:
    """Leave a quarter of the machine for Serve, Ray and the OS."""
    total = psutil.virtual_memory().total / 2**20
    return int(total * 0.75 / max(num_workers, 1))
