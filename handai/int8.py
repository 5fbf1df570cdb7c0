"""The model quantized to int8 (NNCF post-training quantization), kept only where it reads as
the float model does.

On CPUs without native bf16 (AVX2 only) the OpenVINO int8 forward ran 2.1-2.3x OpenVINO f32
at batch 1, 9 and 32; on the seed model it gave the digit of fp32 torch on 99.98 % of MNIST test.
Quantization is calibrated on int8_sample.npz: MNIST *training* digits put through the serving
preprocessing (written by `python -m train.int8_sample`), never the sets the model is judged
on. Each model is checked before its int8 copy is kept: on the sample's check part, its digits
must be the float model's and its calibrated confidence close to it; a model that quantizes
badly serves in float.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from handai.openvino_forward import OpenVINOForward
from handai.preprocess import normalize

SAMPLE = Path(__file__).with_name("int8_sample.npz")
CALIBRATION = 300  # images the ranges are taken from; the rest of the sample checks
BATCH = 50  # images per calibration step
# The int8 copy is kept when, on the check images, at most this share of digits differ from
# the float model's (1 of 1,000) and its top probability moves by at most MAX_SHIFT on average.
MAX_DISAGREEMENT = 0.001
MAX_SHIFT = 0.01
# Layers left in float run in f32 (a bf16 CPU's default is bf16): what was checked is served.
COMPILE = {"INFERENCE_PRECISION_HINT": "f32"}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    images: int
    disagreement: float  # share of images whose digit differs from the float model's
    mean_shift: float  # mean |top probability - the float model's| at temperature 1

    @property
    def passed(self) -> bool:
        return self.disagreement <= MAX_DISAGREEMENT and self.mean_shift <= MAX_SHIFT


def sample_pixels(path: Path = SAMPLE) -> NDArray[np.float32]:
    """(N,1,28,28) normalized inputs, as the Model deployment receives them."""
    with np.load(path) as sample:
        ink = sample["images"].astype(np.float32) / 255.0
    return normalize(ink)[:, None]


def quantize(model: Any, pixels: NDArray[np.float32]) -> Any:
    """An openvino.Model quantized on the first CALIBRATION images."""
    import nncf  # optional, and slow to import: only the conversion process gets here

    items = [pixels[i : i + BATCH] for i in range(0, CALIBRATION, BATCH)]
    with contextlib.redirect_stdout(io.StringIO()):  # its progress bars
        return nncf.quantize(
            model,
            nncf.Dataset(items),
            preset=nncf.QuantizationPreset.PERFORMANCE,
            subset_size=len(items),
        )


def check(float_model: Any, int8_model: Any, pixels: NDArray[np.float32]) -> Check:
    """Compare the two on the images after the calibration ones."""
    import openvino as ov

    core = ov.Core()
    held = pixels[CALIBRATION:]
    reference, quantized = (
        _softmax(_logits(OpenVINOForward(core.compile_model(m, "CPU", COMPILE), name), held))
        for m, name in ((float_model, "f32"), (int8_model, "int8"))
    )
    top = reference.argmax(axis=1)
    rows = np.arange(len(held))
    return Check(
        images=len(held),
        disagreement=float(np.mean(quantized.argmax(axis=1) != top)),
        mean_shift=float(np.mean(np.abs(quantized[rows, top] - reference[rows, top]))),
    )


def quantized_or_none(float_model: Any) -> tuple[Any, dict[str, Any]]:
    """The int8 model where NNCF is installed and the copy passes its check (else None), and
    what was found, for the record kept beside it."""
    try:
        pixels = sample_pixels()
        int8_model = quantize(float_model, pixels)
        result = check(float_model, int8_model, pixels)
    except ImportError:
        log.warning("NNCF not installed: serving without int8")
        return None, {"kept": False, "why": "NNCF not installed"}
    except Exception as exc:  # NNCF refusing a model must not cost it its float conversion
        log.warning("int8 quantization failed, serving in float: %s", exc)
        return None, {"kept": False, "why": f"quantization failed: {exc}"}
    record = {"kept": result.passed, **dataclasses.asdict(result)}
    if not result.passed:
        log.warning("int8 copy refused: %s", result)
        return None, record
    return int8_model, record


def _logits(forward: OpenVINOForward, pixels: NDArray[np.float32]) -> NDArray[np.float32]:
    chunks = (torch.from_numpy(pixels[i : i + BATCH]) for i in range(0, len(pixels), BATCH))
    return np.concatenate([forward(chunk).numpy() for chunk in chunks])


def _softmax(logits: NDArray[np.float32]) -> NDArray[np.float32]:
    shifted: NDArray[np.float32] = np.exp(logits - logits.max(axis=1, keepdims=True))
    total: NDArray[np.float32] = shifted.sum(axis=1, keepdims=True)
    return shifted / total
