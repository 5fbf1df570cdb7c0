"""A model converted to OpenVINO's IR, in a low-priority process of its own.

torch.export and OpenVINO's converter hold the GIL for seconds at a time. Run inside a serving
replica during a model swap they starved its reads (on a slow CPU, 503s and a swap past the
HTTP timeout); a child process at nice 10 converts while the replica keeps answering, then the
replica reads the result from the cache folder. The same process quantizes it to int8
(handai.int8) where the int8 copy reads as the float model does.

    python -m handai.openvino_ir WEIGHTS.pt FOLDER   # what convert_apart runs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from handai import int8
from handai.model import build_model

XML = "model.xml"
INT8_XML = "int8.xml"  # absent where NNCF is missing or the int8 copy failed its check
INT8_RECORD = "int8.json"  # why: handai.int8's check of it
CONVERT_TIMEOUT_S = 900.0


def convert(module: nn.Module) -> Any:
    """The module as an OpenVINO model with a free batch axis (an openvino.Model)."""
    import openvino as ov  # optional: only callers that found it get here

    # torch.export (not the deprecated tracing), with the batch axis left free.
    batch = torch.export.Dim("batch", min=1, max=4096)
    exported = torch.export.export(
        module.eval(), (torch.zeros(2, 1, 28, 28),), dynamic_shapes=({0: batch},)
    )
    model = ov.convert_model(exported)
    model.reshape([-1, 1, 28, 28])
    return model


def save(models: dict[str, Any], folder: Path, records: dict[str, Any] | None = None) -> None:
    """Each model (and JSON record) under its file name, written beside the folder and renamed
    into place: readers never see half a folder."""
    import openvino as ov

    tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        for name, model in models.items():
            ov.save_model(model, tmp / name, compress_to_fp16=False)
        for name, record in (records or {}).items():
            (tmp / name).write_text(json.dumps(record, indent=2))
        with contextlib.suppress(OSError):  # another replica got there first
            tmp.rename(folder)
    finally:
        if tmp.exists():
            for part in tmp.iterdir():
                part.unlink()
            tmp.rmdir()


def convert_apart(module: nn.Module, folder: Path, timeout_s: float = CONVERT_TIMEOUT_S) -> None:
    """Convert in a child process into folder; raises RuntimeError with its output if it fails."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as work:
        weights = Path(work) / "weights.pt"
        torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, weights)
        try:
            done = subprocess.run(
                [sys.executable, "-m", __name__, str(weights), str(folder)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"conversion process failed: {exc}") from None
    if done.returncode != 0 or not (folder / XML).is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"conversion process exited {done.returncode}: {' | '.join(tail)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path, help="a state dict written by convert_apart")
    parser.add_argument("folder", type=Path, help="where model.xml and model.bin go")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # to the parent's log on failure
    os.nice(10)  # the serving process that waits on this keeps the CPU first
    state = torch.load(args.weights, map_location="cpu", weights_only=True)
    module = build_model(int(state["fc.weight"].shape[0]))
    module.load_state_dict(state, strict=True)
    model = convert(module)
    int8_model, record = int8.quantized_or_none(model)
    models = {XML: model} | ({INT8_XML: int8_model} if int8_model is not None else {})
    save(models, args.folder, {INT8_RECORD: record})


if __name__ == "__main__":
    main()
