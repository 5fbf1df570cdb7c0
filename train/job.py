"""Training job entry point: `ray job submit --working-dir . -- python -m train.job ...`.

Reads MNIST, trains with Ray Train, fits the temperature on the validation split, reports
test accuracy once at the end, writes `<artifacts>/<model_id>/`, and with --promote hands
the model to the live service.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from pydantic import ValidationError
from ray.train.torch import TorchTrainer

from handai.config import anchored, load_settings
from handai.registry import save
from handai.storage import Place, local_or, location
from train.calibrate import LoaderSettings, loader_settings
from train.data import TEST_SIZE, load_split, load_wild, train_val
from train.events import Events
from train.orphan import stop_when_orphaned
from train.placement import cpu_share
from train.refit import fit_on_validation, test_figures
from train.request import JobRequest
from train.trainer import (
    TrainConfig,
    default_memory_limit_mb,
    load_checkpoint_model,
    train_loop,
    yield_to_serving,
)

log = logging.getLogger("train.job")


class JobStopped(BaseException):  # not an Exception: no `except Exception` may swallow it
    """`ray job stop` (or DELETE on the API) sent SIGTERM."""


def parse_args(argv: list[str]) -> tuple[JobRequest, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m train.job", description=__doc__)
    p.add_argument("--job-json", help="the job as JSON text, a file path, or - for stdin")
    p.add_argument("--model-id")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--augment", help="default | none | name=value,... (see train/augment.py)")
    p.add_argument("--num-workers", type=int)
    p.add_argument("--train-limit", type=int)
    p.add_argument("--wild-renders", type=int, help="photo-like uploads per style, read as served")
    p.add_argument("--promote", action="store_true", default=None)
    p.add_argument("--notes")
    p.add_argument("--data-root", type=Path, help="folder of the MNIST IDX files")
    p.add_argument("--artifacts", type=location, help="where <model_id>/ is written")
    p.add_argument("--run-name", help="a rerun with the same name resumes (default: model id)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--schedule", choices=("onecycle", "cosine"), default="onecycle")
    p.add_argument("--calibrate", action="store_true", help="search loader settings afresh")
    p.add_argument("--threads-per-worker", type=int)
    p.add_argument("--loader-workers", type=int)
    p.add_argument("--progress-file", type=location, help="latest progress as JSON (for the API)")
    p.add_argument("--result-file", type=location, help="final metrics as JSON (for the API)")
    p.add_argument("--terminal-file", type=location, help="the last event, once published (API)")
    p.add_argument(
        "--cpus-per-worker", type=float, help="default: the cluster's free CPUs, split evenly"
    )
    p.add_argument("--init-from", type=Path, help="a model folder or model.pt to fine-tune")
    p.add_argument(
        "--max-failures",
        type=int,
        default=2,
        help="worker failures survived by restarting from the last checkpoint",
    )
    args = p.parse_args(argv)
    body: dict[str, Any] = {}
    if args.job_json:
        text = args.job_json
        if text == "-":
            text = sys.stdin.read()
        elif not text.lstrip().startswith("{"):
            text = Path(text).read_text()
        body = json.loads(text)
    for key in (
        "model_id",
        "epochs",
        "batch_size",
        "lr",
        "seed",
        "augment",
        "num_workers",
        "train_limit",
        "wild_renders",
        "promote",
        "notes",
    ):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    try:
        return JobRequest.model_validate(body), args
    except ValidationError as exc:
        err = exc.errors()[0]
        p.error(f"{'.'.join(map(str, err['loc']))}: {err['msg']}")
        raise  # unreachable: p.error exits


def worker_threads(
    calibrated: LoaderSettings, workers: int, share: float, asked: int | None
) -> int:
    """Torch threads per training worker: those asked for; else the calibration's, where it
    measured this many workers (its threads were timed at that split); else one per whole
    CPU of the worker's share, at least one."""
    if asked:  # 0, as before, means not asked
        return asked
    if calibrated.samples_per_sec > 0 and calibrated.num_workers == workers:
        return calibrated.threads_per_worker
    return max(1, math.floor(share))


def figure_threads(training_cpus: float) -> int:
    """Threads for the final figures: the whole CPUs training held, at most this node's."""
    return max(1, min(os.cpu_count() or 1, math.floor(training_cpus)))


def run(job: JobRequest, args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings()
    # Relative paths are the project's (HANDAI_HOME), not those of Ray's copy of it.
    data_root = anchored(args.data_root) if args.data_root else settings.app.data_root / "mnist"
    artifacts: Place = settings.storage.artifacts
    if args.artifacts is not None:
        artifacts = anchored(args.artifacts) if isinstance(args.artifacts, Path) else args.artifacts
    # Preprocessed MNIST and the loader calibration: a cache, kept on this node.
    cache_dir = local_or(artifacts, Path(tempfile.gettempdir()) / "handai") / "cache"
    run_id = args.run_name or job.model_id
    events = Events(
        request_id=job.request_id,
        user_id=job.user_id,
        model_id=job.model_id,
        run_id=run_id,
        terminal_file=args.terminal_file,
    )
    started = time.time()
    try:
        # Preprocess once here so workers read the cache instead of each redoing it.
        full = load_split(data_root, "train", cache_dir, job.train_limit)
        rendered = 0
        if job.wild_renders:
            source = train_val(full, job.seed)[0]
            rendered = len(load_wild(source, job.wild_renders, job.seed, cache_dir).labels)
        calibrated = loader_settings(args.calibrate, data_root, cache_dir)
        loader = calibrated.override(
            num_workers=job.num_workers,
            loader_workers=args.loader_workers,
            batch_size=job.batch_size,  # the job's own: its learning rate was chosen for it
        )
        cpus = cpu_share(loader.num_workers, args.cpus_per_worker)
        threads = worker_threads(calibrated, loader.num_workers, cpus, args.threads_per_worker)
        loader = loader.override(threads_per_worker=threads)  # what runs, in the log and summary
        cfg = TrainConfig(
            model_id=job.model_id,
            run_id=run_id,
            request_id=job.request_id,
            user_id=job.user_id,
            epochs=job.epochs,
            batch_size=job.batch_size,
            lr=job.lr,
            seed=job.seed,
            augment=job.augment,
            optimizer=args.optimizer,
            schedule=args.schedule,
            data_root=data_root,
            cache_dir=cache_dir,
            train_limit=job.train_limit,
            wild_renders=job.wild_renders,
            threads_per_worker=threads,
            loader_workers=loader.loader_workers,
            memory_limit_mb=default_memory_limit_mb(loader.num_workers),
            progress_file=str(args.progress_file) if args.progress_file else None,
            init_from=_weights(args.init_from),
        )
        log.info(
            "training %s: %d worker(s) x %.2f CPU, %d thread(s) each, loader %s",
            job.model_id,
            loader.num_workers,
            cpus,
            threads,
            loader.model_dump(),
        )
        trainer = TorchTrainer(
            train_loop,
            train_loop_config=cfg.model_dump(mode="json"),
            scaling_config=ray.train.ScalingConfig(
                num_workers=loader.num_workers,
                use_gpu=torch.cuda.is_available(),
                resources_per_worker={"CPU": cpus},
            ),
            run_config=ray.train.RunConfig(
                name=run_id,
                storage_path=str(artifacts / "runs"),  # = settings.storage.runs by default
                # A worker that dies (killed, its node lost) restarts the group, which
                # resumes from the last checkpoint: the loop reads get_checkpoint().
                failure_config=ray.train.FailureConfig(max_failures=args.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(
                    num_to_keep=2,
                    checkpoint_score_attribute="val_acc",
                    checkpoint_score_order="max",
                ),
            ),
        )
        result = trainer.fit()
        best = result.get_best_checkpoint(metric="val_acc", mode="max")
        if best is None:
            raise RuntimeError("training reported no checkpoint")
        model = load_checkpoint_model(best)
        # The figures run here, in the driver, which Ray starts with one thread at normal
        # priority: give them the CPUs training held (free now) and yield to serving as the
        # workers did.
        torch.set_num_threads(figure_threads(loader.num_workers * cpus))
        yield_to_serving()
        summary = _calibrate_and_save(
            model,
            job,
            full,
            data_root,
            cache_dir,
            artifacts,
            loader,
            samples_per_sec=float((result.metrics or {}).get("samples_per_sec", 0.0)),
            duration_s=time.time() - started,
            rendered=rendered,
        )
        events.publish("artifact", path=str(artifacts / job.model_id), **summary)
        if job.promote:
            from train.promote import promote  # needs the serving side only when asked

            summary["promotion"] = promote(artifacts / job.model_id, settings)
        events.publish("completed", **summary)
        return summary
    except (Exception, JobStopped) as exc:
        # Every end reaches the bot: a stopped job is a failed one with code "stopped".
        code = (
            "stopped"
            if isinstance(exc, JobStopped)
            else "memory_pressure"
            if "memory_pressure" in str(exc)
            else "training_failed"
        )
        events.publish("failed", code=code, error=str(exc)[:2000])
        raise


def _stop(signum: int, _frame: object) -> None:
    # Once: Ray signals the shell and the driver, and train.orphan may signal again when the
    # shell goes; a second JobStopped inside the first one's handling would cut its event.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise JobStopped(f"the job was stopped (signal {signum})")


def _weights(path: Path | None) -> Path | None:
    if path is None:
        return None
    path = path.resolve()
    return path / "model.pt" if path.is_dir() else path


def _calibrate_and_save(
    model: torch.nn.Module,
    job: JobRequest,
    full: Any,
    data_root: Path,
    cache_dir: Path,
    artifacts: Place,
    loader: LoaderSettings,
    *,
    samples_per_sec: float,
    duration_s: float,
    rendered: int,
) -> dict[str, Any]:
    fit = fit_on_validation(model, full, job.seed, cache_dir, job.wild_renders)
    temperature, val_acc = fit.temperature, fit.val_acc
    # A quick job (train_limit) is scored on as many test digits: the full 10,000 cost a
    # slow CPU minutes, longer than such a job trains.
    test_images = min(job.train_limit or TEST_SIZE, TEST_SIZE)
    test_acc, test_ece = test_figures(model, temperature, data_root, cache_dir, test_images)
    summary: dict[str, Any] = {
        "val_acc": val_acc,
        "test_acc": test_acc,
        "temperature": temperature,
        "ece_val_before": fit.ece_before,
        "ece_val_after": fit.ece_after,
        "temperature_fitted_on": {"validation_digits": fit.clean, "rendered_uploads": fit.rendered},
        "ece": test_ece,
        "test_images": test_images,
        "epochs": job.epochs,
        "batch_size": job.batch_size,
        "lr": job.lr,
        "seed": job.seed,
        "augment": job.augment.model_dump(),
        "notes": job.notes,
        "num_workers": loader.num_workers,
        "samples_per_sec": samples_per_sec,
        "duration_s": duration_s,
        "loader": loader.model_dump(),
        "train_images": len(full.labels) - fit.clean + rendered,
        "wild_renders": job.wild_renders,  # per style; `rendered` of them were read
    }
    fields = {k: v for k, v in summary.items() if k not in ("val_acc", "temperature")}
    save(
        artifacts / job.model_id,
        model,
        model_id=job.model_id,
        val_acc=val_acc,
        temperature=temperature,
        **fields,
    )
    log.info("artifact %s: %s", job.model_id, json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    job, args = parse_args(sys.argv[1:] if argv is None else argv)
    # Ray Train gives workers 60 s to start; two workers importing torch on a busy 2-core
    # machine took longer. Train propagates this from the driver to its controller.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    signal.signal(signal.SIGTERM, _stop)
    stop_when_orphaned()
    ray.init(namespace="handai", ignore_reinit_error=True)
    summary = {"model_id": job.model_id, **run(job, args)}
    if args.result_file:
        args.result_file.parent.mkdir(parents=True, exist_ok=True)
        args.result_file.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))  # the job's log ends with its result
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
