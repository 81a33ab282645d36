#!/usr/bin/env python
"""Export a trained run's encoders as pretrained checkpoints (pretrain, then transfer).

    python scripts/export_encoders.py RUN_DIR [--out DIR] [--checkpoint best|last] [--overwrite]

Writes one folder per modality (default RUN_DIR/export/<modality>) in the layout that encoder
loads from (LoRA adapters merged into the base weights), and prints them. A later run starts
from one with, e.g.:

    python scripts/train.py encoders.image.source=RUN_DIR/export/image

The last stdout line is a JSON summary: {modality: folder}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: RUN_DIR/export)")
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"])
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export's folders")
    args = parser.parse_args(argv)

    from mm.backbone_export import export_run

    try:
        folders = export_run(args.run_dir, args.out, args.checkpoint, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for m, folder in folders.items():
        print(f"{m}: {folder}  (use: encoders.{m}.source={folder})")
    print(json.dumps({m: str(f) for m, f in folders.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
