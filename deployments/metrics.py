"""The one per-read stage histogram, shared by every deployment so stages add up.

Each deployment observes, once per read, the time that read spent in its stages:
Ingress `handler` (whole route), `queue` (waiting for a batch slot), `graph` (its batch's
Preprocess and Model calls); Preprocess `preprocess` (its batch's decode-to-tensor time);
Model `forward` (its batch's forward pass). What `graph` holds beyond `preprocess` and
`forward` is the cost of the hops and queues between deployments.
"""

from __future__ import annotations

from ray.serve.metrics import Histogram

# Fine everywhere a read can land: Ray exports histogram sums as bucket midpoints.
STAGE_BOUNDARIES = [
    0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 18, 20, 23, 26, 30,
    35, 40, 45, 50, 60, 70, 80, 90, 100, 125, 150, 175, 200, 250, 300, 350, 400, 450, 500,
    600, 700, 800, 900, 1000, 1200, 1400, 1600, 1800, 2000, 2500, 3000, 4000, 5000, 7500,
    10000, 20000, 30000,
]  # fmt: skip


def stage_histogram() -> Histogram:
    return Histogram(
        "handai_read_stage_ms",
        description="Time one read spent in a stage (ms); see deployments/metrics.py.",
        boundaries=STAGE_BOUNDARIES,
        tag_keys=("stage",),
    )
