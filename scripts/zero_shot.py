#!/usr/bin/env python
"""Zero-shot text classification: cosine similarity to class-name prompts, no training.

    python scripts/zero_shot.py [CONFIG.yaml | --config CONFIG.yaml] [key=value ...] [--modalities text]
        [--template "this is about {}." ...] [--name LABEL=WORDS ...]

Embeds every val and test text with the config's text encoder (frozen, mean-pooled: for
``minilm`` all-MiniLM-L6-v2's sentence embedding) and each class as its name put into the
templates (default: ``mm.lowdata.zero_shot.TEMPLATES``, averaged); a text goes to the most similar class.
``--name 1=one`` puts other words than the label into the templates. Writes a run folder as
``scripts/train.py`` does (``--out-dir``/``name``, default ``zero_shot-<data>-text``):
config.yaml, classes.json, results.json (val and test metrics of the classification head) and
report/ (per-class report, confusion matrix, predictions, calibration). The last stdout line is a
JSON summary. Image and audio need a joint embedding model (CLIP / CLAP); asking for them exits 2.

Example:
    python scripts/zero_shot.py data.task=shape data.modalities=[text] wandb.mode=disabled
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mm.cli import add_config_arguments, fail, load_config_args
from mm.config import ConfigError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_arguments(parser, modalities_help="sets data.modalities (zero-shot takes text only)")
    parser.add_argument("--template", action="append", dest="templates", metavar="TEXT",
                        help="a prompt template with one {} (repeat for several; default: mm.lowdata.zero_shot.TEMPLATES)")
    parser.add_argument("--out-dir", default="runs", help="where the run folder goes (default: runs)")
    parser.add_argument("--no-plots", action="store_true", help="no confusion-matrix picture")
    parser.add_argument("--name", action="append", dest="names", default=[], metavar="LABEL=WORDS",
                        help="the words that stand for a class label in the templates (repeatable)")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config_args(args)
        if any("=" not in n for n in args.names):
            raise ConfigError(f"--name takes LABEL=WORDS, got {args.names}")
        names = dict(n.split("=", 1) for n in args.names)
        from mm.lowdata import zero_shot

        zero_shot.check_modalities(cfg.data.modalities)
        templates = zero_shot.check_templates(args.templates or zero_shot.TEMPLATES)
    except (ConfigError, ValueError) as err:
        return fail(err)

    from mm.run.folder import new_folder

    data = cfg.data.task if cfg.data.dataset == "synthetic" else Path(cfg.data.dataset).name
    cfg.name = cfg.name or f"zero_shot-{data}-text"
    results = zero_shot.run(cfg, new_folder(Path(args.out_dir) / cfg.name), templates, names, plots=not args.no_plots)
    for split in ("val", "test"):
        print(f"{split}: " + "  ".join(f"{k}={v:.4f}" for k, v in results[split].items()), file=sys.stderr)
    print(json.dumps({"run_dir": results["run_dir"], "val": results["val"], "test": results["test"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
