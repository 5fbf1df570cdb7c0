"""How a training job sizes its workers on the CPUs the nodes have free (pure arithmetic; the
jobs in test_training.py and test_multinode.py run it against real clusters), and what its
command line takes."""

import os

import pytest
from pydantic import ValidationError

from train.calibrate import LoaderSettings
from train.job import figure_threads, parse_args, worker_threads
from train.placement import MIN_CPU_SHARE, widest_share, workers_that_fit
from train.request import JobRequest


@pytest.mark.parametrize(
    ("free", "workers", "share"),
    [
        ([1.0], 1, 1.0),
        ([1.0], 2, 0.5),  # one node: split it
        ([2.0, 1.0], 2, 1.0),  # not 1.5 each: no node has 1.5 left beside another 1.5
        ([2.0, 2.0], 2, 2.0),
        ([1.0, 0.2], 2, 0.5),  # both on the larger node beats 0.2 each
        ([0.5, 0.5, 0.5], 3, 0.5),
        ([0.25, 0.25], 2, 0.25),
    ],
)
def test_the_widest_share_that_fits_every_worker(
    free: list[float], workers: int, share: float
) -> None:
    assert widest_share(free, workers) == pytest.approx(share)
    assert workers_that_fit(free, widest_share(free, workers)) >= workers


def test_no_share_when_nothing_is_free() -> None:
    assert widest_share([], 2) == 0.0
    assert widest_share([0.0, 0.0], 1) == 0.0
    assert workers_that_fit([1.0], 0.0) == 0
    assert widest_share([0.15], 2) < MIN_CPU_SHARE  # refused by cpu_share as "no room"


def test_an_asked_share_fits_only_whole_workers_per_node() -> None:
    assert workers_that_fit([2.0, 1.0], 1.5) == 1
    assert workers_that_fit([2.0, 1.0], 1.0) == 3
    assert workers_that_fit([0.3 * 3], 0.3) == 3  # float rounding does not lose a worker


def test_wild_renders_come_from_the_command_line_or_the_job_body() -> None:
    job, _ = parse_args(["--model-id", "m1", "--wild-renders", "3000"])
    assert job.wild_renders == 3000
    job, _ = parse_args(["--job-json", '{"model_id": "m1", "wild_renders": 20}'])
    assert job.wild_renders == 20
    assert parse_args(["--model-id", "m1"])[0].wild_renders == 0  # off unless asked for
    with pytest.raises(ValidationError):
        JobRequest.model_validate({"model_id": "m1", "wild_renders": -1})


def test_promote_comes_from_the_command_line_or_the_job_body() -> None:
    """The CLI's --promote and the bot's `promote: true` ask for the same (the promotion
    itself runs end to end in tests/test_training.py, asked for over HTTP)."""
    assert parse_args(["--model-id", "m1", "--promote"])[0].promote is True
    assert parse_args(["--job-json", '{"model_id": "m1", "promote": true}'])[0].promote is True
    assert not parse_args(["--model-id", "m1"])[0].promote


def test_worker_threads_follow_the_calibration_for_the_split_it_measured() -> None:
    """A calibrated 1 x 2 split runs 2 threads even on a 1-CPU share (the trials were timed at
    the share free then); another worker count, or no calibration, gets one thread per whole
    CPU of its share; --threads-per-worker wins over both."""
    measured = LoaderSettings(num_workers=1, threads_per_worker=2, samples_per_sec=150.0)
    assert worker_threads(measured, 1, 1.0, None) == 2
    assert worker_threads(measured, 2, 0.5, None) == 1  # not the split it measured
    assert worker_threads(measured, 1, 1.0, 3) == 3
    default = LoaderSettings(num_workers=1, threads_per_worker=2)  # not measured
    assert worker_threads(default, 1, 1.0, None) == 1
    assert worker_threads(default, 1, 2.0, None) == 2
    assert worker_threads(default, 1, 0.25, None) == 1


def test_the_final_figures_use_the_whole_cpus_training_held_on_this_node() -> None:
    assert figure_threads(2 * 0.5) == 1  # make serve's cluster: two workers of half a CPU
    assert figure_threads(0.25) == 1  # a sliver still scores
    assert figure_threads(1.5) == 1
    assert figure_threads(1000.0) == os.cpu_count()  # workers on other nodes: this node's
