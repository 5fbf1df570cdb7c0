"""Training's memory layout: measured on this machine, and one choice for every DDP worker."""

from __future__ import annotations

import multiprocessing
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from handai.backends import native_bf16
from train import layout
from train.layout import LAYOUTS, fastest_layout


def test_the_probe_picks_one_of_the_layouts_and_leaves_the_seeded_draws_alone() -> None:
    cpu = torch.device("cpu")
    torch.manual_seed(7)
    assert fastest_layout(cpu, native_bf16(cpu), batch_size=16) in LAYOUTS
    after = torch.rand(4)
    torch.manual_seed(7)
    assert torch.equal(after, torch.rand(4))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, port: int, favoured: list[str], chosen: Any) -> None:
    """One DDP worker whose own timings favour favoured[rank] (as two machines' might)."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(favoured)
    )
    try:
        mine = LAYOUTS[favoured[rank]]
        layout._step_seconds = lambda fmt, *_: 1.0 if fmt == mine else 2.0
        chosen[rank] = fastest_layout(torch.device("cpu"), False, 64)
    finally:
        dist.destroy_process_group()


def test_ddp_workers_all_take_the_first_workers_layout() -> None:
    for favoured in (["channels_last", "contiguous"], ["contiguous", "channels_last"]):
        spawn = multiprocessing.get_context("spawn")  # a fresh interpreter per worker, as Ray's
        with spawn.Manager() as manager:
            chosen = manager.dict()
            port = _free_port()
            workers = [
                spawn.Process(target=_worker, args=(rank, port, favoured, chosen))
                for rank in range(2)
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(timeout=120)
            assert [w.exitcode for w in workers] == [0, 0]
            assert dict(chosen) == {0: favoured[0], 1: favoured[0]}


def test_the_choice_is_timed_once_per_machine_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    timed: list[torch.memory_format] = []

    def step_seconds(fmt: torch.memory_format, *_: object) -> float:
        timed.append(fmt)
        return 1.0 if fmt == torch.channels_last else 2.0

    monkeypatch.setattr(layout, "_step_seconds", step_seconds)
    cpu = torch.device("cpu")
    assert fastest_layout(cpu, False, 16, tmp_path) == "channels_last" and len(timed) == 2
    (kept,) = tmp_path.glob("layout-*.json")
    assert fastest_layout(cpu, False, 16, tmp_path) == "channels_last" and len(timed) == 2
    assert fastest_layout(cpu, True, 16, tmp_path) == "channels_last" and len(timed) == 4
    kept.write_text("{not json")  # damaged: timed again
    assert fastest_layout(cpu, False, 16, tmp_path) == "channels_last" and len(timed) == 6
