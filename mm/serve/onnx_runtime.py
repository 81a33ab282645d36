"""The runtime under a bundle: an ONNX Runtime session (or a TorchScript module) behind one call.

``make_runner(graph_file, kind, names, threads)`` returns ``run(feeds) -> logits``: ``feeds`` maps
the graph's input names to numpy arrays; the result is the float32 logits array.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np


def onnx_session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session with every graph optimisation on (``threads`` intra-op threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def make_runner(path: Path, kind: str, names: list[str], threads: int | None = None) -> Callable[[dict], np.ndarray]:
    """``run(feeds) -> logits`` over the graph at ``path`` (``kind`` ``onnx`` or ``torchscript``)."""
    if kind == "onnx":
        session = onnx_session(path, threads)
        wanted = {i.name for i in session.get_inputs()}  # the exporter may drop an input the graph never reads

        def run_onnx(feeds: dict[str, np.ndarray]) -> np.ndarray:
            return session.run(["logits"], {k: v for k, v in feeds.items() if k in wanted})[0]

        return run_onnx
    if kind == "torchscript":
        import torch

        if threads:
            torch.set_num_threads(threads)
        module = torch.jit.load(str(path)).eval()

        def run_torchscript(feeds: dict[str, np.ndarray]) -> np.ndarray:
            with torch.inference_mode():
                return module(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names)).float().numpy()

        return run_torchscript
    raise ValueError(f"unknown graph format {kind!r}; valid: onnx, torchscript")
