#!/usr/bin/env python
"""Export a trained run's whole model (encoders, fusion, head) as one self-describing folder.

    python scripts/export_model.py RUN_OR_ARTIFACT --out DIR [--format onnx|torchscript]
                                   [--checkpoint best|last] [--tolerance 1e-4] [--overwrite]

RUN_OR_ARTIFACT is a run folder or a W&B model artifact (``artifact:mm/model-1a2b3c4d:best``).
DIR receives the graph (``model.onnx``: ONNX through torch.onnx's dynamo exporter, or its
TorchScript-based exporter where dynamo fails; or ``model.pt``: torch.jit.trace), ``bundle.json``
(labels, head, modalities, inputs, preprocessing, model id, tolerance) and the tokenizer / filter
bank files. The export is checked against the PyTorch model on sample inputs for every modality
subset and refused above the tolerance. Run it with ``mm.serve.bundle.Bundle.open(DIR)``.

Exit status: 0 exported (the last stdout line is a JSON summary), 2 refused or bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run folder or W&B model artifact reference")
    parser.add_argument("--out", type=Path, required=True, help="the export folder to write")
    parser.add_argument("--format", default="onnx", choices=["onnx", "torchscript"])
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"])
    parser.add_argument("--tolerance", type=float, default=None,
                        help="largest |logit difference| accepted against PyTorch (default 1e-4)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    args = parser.parse_args(argv)

    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        print(f"error: {args.out} exists and is not empty (pass --overwrite to replace it)", file=sys.stderr)
        return 2
    from mm.serve.export import TOLERANCE, ExportRefused, export_model

    try:
        bundle = export_model(args.run, args.out, args.format, args.checkpoint,
                              TOLERANCE if args.tolerance is None else args.tolerance, overwrite=args.overwrite)
    except ExportRefused as err:
        print(f"error: export refused: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, ValueError, ConnectionError, LookupError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    check = bundle["check"]
    print(f"exported {bundle['model_id']} to {args.out} ({bundle['graph']['format']}, exporter "
          f"{bundle['graph']['exporter']}); max |logit difference| vs PyTorch {check['max_abs_diff']:.2e} "
          f"over {len(check['per_batch'])} batches (tolerance {check['tolerance']:g})")
    print(json.dumps({"out": str(args.out), "model_id": bundle["model_id"], "format": bundle["graph"]["format"],
                      "exporter": bundle["graph"]["exporter"], "max_abs_diff": check["max_abs_diff"],
                      "tolerance": check["tolerance"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
