"""Scripts are thin: they import the installed package, expose main(argv), and share mm.cli's parsing."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from mm.cli import add_config_arguments, config_and_overrides, fail, load_config_args
from mm.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").rglob("*.py"))
ENTRY_POINTS = sorted(p for p in SCRIPTS if "if __name__ == \"__main__\":" in p.read_text())


def test_no_script_edits_sys_path_or_imports_tests():
    assert len(SCRIPTS) > 20
    for path in SCRIPTS:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                assert (node.value.id, node.attr) != ("sys", "path"), f"{path}: sys.path"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n.split(".")[0] in ("tests", "wandb_reader", "conftest") or n.startswith("test_")
                               for n in names), f"{path}: imports {names}"


def test_every_entry_point_has_main_taking_argv():
    """``main(argv=None)``: a test calls it as the command line does (``import ablate; ablate.main([...])``)."""
    assert len(ENTRY_POINTS) > 20
    for path in ENTRY_POINTS:
        mains = [n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef) and n.name == "main"]
        assert mains, f"{path}: no main()"
        args = mains[0].args
        assert [a.arg for a in args.args] == ["argv"] and len(args.defaults) == 1, f"{path}: main{ast.unparse(args)}"


def test_the_shared_helper_imports_neither_torch_nor_the_config():
    probe = "import sys, mm.cli; print(sorted(m for m in ('torch', 'mm.config', 'omegaconf') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout == "[]\n"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    parser.add_argument("--flag", action="store_true")
    return parser.parse_intermixed_args(argv)


def test_config_file_and_overrides_in_any_order():
    assert config_and_overrides(parse(["c.yaml", "optim.lr=1", "--flag", "seed=2"])) == ("c.yaml", ["optim.lr=1", "seed=2"])
    assert config_and_overrides(parse(["optim.lr=1", "--config", "c.yaml", "--modalities", "text,image"])) == (
        "c.yaml", ["optim.lr=1", "data.modalities=[text,image]"])
    assert config_and_overrides(parse([])) == (None, [])
    with pytest.raises(ValueError, match="two config files: --config a.yaml and b.yaml"):
        config_and_overrides(parse(["--config", "a.yaml", "b.yaml"]))
    with pytest.raises(ConfigError, match="config file not found: nothing.yaml"):
        load_config_args(parse(["nothing.yaml"]))
    assert load_config_args(parse(["seed=3", "--modalities", "text"])).data.modalities == ["text"]


def test_fail_prints_the_message_and_returns_2(capsys):
    assert fail(KeyError("no such metric 'x'")) == 2
    assert fail("bad", code=1) == 1
    assert capsys.readouterr().err == "error: no such metric 'x'\nerror: bad\n"
