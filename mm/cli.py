"""What the command-line scripts share: a config file plus dotted overrides, and errors as exit codes.

The scripts under ``scripts/`` are thin: each parses its arguments, calls the library and returns
an exit status from ``main(argv=None)`` (0 done, 2 bad input). They import the installed package
(``pip install -e .``), never ``sys.path``. An experiment is named the same way everywhere:

    python scripts/zero_shot.py [CONFIG.yaml | --config CONFIG.yaml] [--modalities text] [key=value ...]

This module sits low in the import order: it imports neither torch nor the config schema at
module level, so ``--help`` and a bad argument answer at once.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mm.config import Config

MODALITIES_HELP = "comma-separated subset of text,image,audio (sets data.modalities)"


def add_config_arguments(parser: argparse.ArgumentParser, modalities_help: str = MODALITIES_HELP) -> None:
    """``[CONFIG.yaml] [key=value ...]`` (positional), ``--config FILE`` and ``--modalities a,b``.

    Parse with ``parser.parse_intermixed_args`` so overrides may stand before or after the options.
    """
    parser.add_argument("--config", metavar="FILE", help="YAML experiment file (defaults apply to missing keys)")
    parser.add_argument("--modalities", help=modalities_help)
    parser.add_argument("overrides", nargs="*", metavar="[CONFIG.yaml] key=value",
                        help="an optional YAML file (or --config), then dotted overrides, e.g. optim.lr=3e-4")


def config_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """The config file and the overrides that ``add_config_arguments``' options name.

    The first positional word without ``=`` is the config file (unless ``--config`` names one);
    ``--modalities a,b`` adds ``data.modalities=[a,b]`` after the other overrides.

    Raises:
        ValueError: two config files (``--config`` and a positional one).
    """
    items = list(args.overrides)
    config = getattr(args, "config", None)
    if items and "=" not in items[0]:
        if config is not None:
            raise ValueError(f"two config files: --config {config} and {items[0]}")
        config = items.pop(0)
    modalities = getattr(args, "modalities", None)
    if modalities:
        items.append(f"data.modalities=[{modalities}]")
    return config, items


def load_config_args(args: argparse.Namespace) -> Config:
    """``mm.config.load_config`` of the file and overrides the parsed arguments name.

    Raises:
        ConfigError: a missing file, unknown key, wrong type or invalid value (``fail`` prints it).
    """
    from mm.config import ConfigError, load_config

    try:
        config, overrides = config_and_overrides(args)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return load_config(config, overrides)


def fail(err: BaseException | str, code: int = 2) -> int:
    """Print ``error: <message>`` on stderr; return the exit status (2: bad input)."""
    message = err if isinstance(err, str) else (err.args[0] if len(err.args) == 1 else str(err))
    print(f"error: {message}", file=sys.stderr)
    return code
