#!/usr/bin/env python
"""Predict with a trained run.

    python scripts/predict.py RUN_DIR --input manifest.jsonl --output predictions.jsonl
    python scripts/predict.py RUN_DIR --text "a kitten and a red ring" --image pic.png [--audio clip.wav]

Batch mode reads a JSONL manifest (rows with text / image / audio, media paths relative to the
manifest's folder; labels are not needed) and writes one JSON line per row: its id, the
prediction decoded to class names and the class probabilities. Single-example mode prints one line.

RUN_DIR may instead name a W&B model artifact, logged by a run with ``wandb.log_model=true``:
``artifact:[entity/]project/model-<run id>:best`` (or ``:last``, ``:v3``) is downloaded into
``$MM_ARTIFACT_CACHE`` (default ``~/.cache/mm/artifacts``) and read from there (``mm.artifacts``).

A token-tagging run (``head.name=token``) tags the words of ``--text`` split at whitespace (manifest
rows hold them under ``tokens``) and prints ``{"id", "tokens", "prediction"}``, one tag per word:

    python scripts/predict.py RUN_DIR --text "Peter Blackburn flew to Paris ."
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from mm.artifacts import run_argument

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=run_argument, help="run folder or artifact:[entity/]project/name:alias")
    parser.add_argument("--input", type=Path, help="JSONL manifest to predict")
    parser.add_argument("--output", type=Path, help="where to write predictions (default: stdout)")
    parser.add_argument("--text", help="single example: the text")
    parser.add_argument("--image", type=Path, help="single example: an image file")
    parser.add_argument("--audio", type=Path, help="single example: an audio file")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    single = {k: v for k, v in (("text", args.text), ("image", args.image), ("audio", args.audio)) if v is not None}
    if bool(args.input) == bool(single):
        parser.error("give either --input FILE or a single example (--text/--image/--audio)")

    from mm.data.manifest import read_manifest
    from mm.predict import predict_rows

    if args.input:
        rows, root = read_manifest(args.input), args.input.parent
    else:
        rows = [{k: str(v.resolve()) if isinstance(v, Path) else v for k, v in single.items()}]
        if args.text is not None:
            rows[0]["tokens"] = args.text.split()  # the words a token-tagging run tags; other heads ignore them
        rows[0]["_where"] = "command line"
        root = Path.cwd()
    out = args.output.open("w") if args.output else sys.stdout
    n = 0
    for pred in predict_rows(args.run_dir, rows, root, args.batch_size):
        out.write(json.dumps(pred) + "\n")
        n += 1
    if args.output:
        out.close()
        print(f"wrote {n} predictions to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
