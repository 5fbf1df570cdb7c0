"""What a read answers, and the views test-time augmentation reads an image through.

Apart from handai.inference, which runs them with torch: the Ingress and the Serve app's
build step import these, and neither needs torch.
"""

from __future__ import annotations

from dataclasses import dataclass

# Identity, four one-pixel shifts (dx, dy), four small rotations (degrees).
SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))
ROTATIONS = (-6.0, -3.0, 3.0, 6.0)
N_VIEWS = len(SHIFTS) + len(ROTATIONS)
TOP_K = 3


@dataclass(frozen=True)
class Prediction:
    digit: int
    confidence: float
    probs: list[float]
    top_k: list[tuple[int, float]]
    uncertain: bool
