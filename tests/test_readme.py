"""The README's train commands parse: every option and dotted override they use exists."""

import shlex
from pathlib import Path

import pytest
from train import parse_args

from mm.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def train_commands() -> list[str]:
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip().startswith("python scripts/train.py")]


def test_readme_has_train_commands():
    assert len(train_commands()) >= 5


@pytest.mark.parametrize("command", train_commands())
def test_readme_train_command_parses(command):
    args = parse_args(shlex.split(command, comments=True)[2:])
    overrides = [o for o in args.overrides if "=" in o and "/data/" not in o]
    config = str(ROOT / args.config) if args.config else None
    if isinstance(args.resume, str):
        return  # names a run folder that exists only after training
    after_training = [o for o in overrides if "=runs/" in o]  # e.g. a source exported by an earlier run
    if after_training:
        overrides = [o for o in overrides if o not in after_training]
    load_config(config, overrides + ([f"data.modalities=[{args.modalities}]"] if args.modalities else []))
