"""Ablation grids: expansion, results.csv and summary.md, resuming, failures, sweeps, the shipped grids."""

from __future__ import annotations

import csv
import itertools
import json
import statistics
import sys
from pathlib import Path

import ablate
import pytest
import train as train_script
import yaml

import mm.train as mm_train
from mm.config import ConfigError, load_config
from mm.data.synthetic import ceiling
from mm.experiments import grids
from mm.experiments.spec import MAX_NAME, cell_name
from mm.fusion import FUSIONS
from mm.wandb_offline import read_offline_history, read_offline_run

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "encoders.text.source=tiny-bert", "data.modalities=[text]", "data.synthetic.n_train=96",
    "data.synthetic.n_val=32", "data.synthetic.n_test=32", "train.batch_size=16", "train.max_steps=2",
    "wandb.mode=offline",
]
NAMES = ["fusion.hidden_dim=16__seed=0", "fusion.hidden_dim=16__seed=1",
         "fusion.hidden_dim=32__seed=0", "fusion.hidden_dim=32__seed=1"]
REAL_TRAIN = mm_train.train
TIMING = {"wall_time_s", "throughput_samples_per_s", "peak_memory_mb", "peak_memory_kind"}


@pytest.fixture(scope="module", autouse=True)
def offline_wandb(tmp_path_factory):
    """No API key, and every W&B folder inside a temporary directory."""
    root = tmp_path_factory.mktemp("wandb_env")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
            mp.delenv(name, raising=False)
        for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
            mp.setenv(name, str(root / name.lower()))
        mp.setenv("NETRC", str(root / "netrc"))
        yield


def write_grid(path: Path, **fields) -> Path:
    spec = {"overrides": TINY, "grid": {"fusion.hidden_dim": [16, 32]}, "seeds": [0, 1], "ceilings": True, **fields}
    path.write_text("# python scripts/ablate.py tiny.yaml\n" + yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory) -> Path:
    return write_grid(tmp_path_factory.mktemp("grid") / "tiny.yaml")


def run(grid_file: Path, out: Path) -> grids.GridRun:
    grid = grids.load_grid(grid_file)
    return grids.run_grid(grid, grids.expand(grid, out), out, log=lambda line: None)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def without_timing(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


@pytest.fixture(scope="module")
def reference(grid_file, tmp_path_factory):
    """The tiny grid run once, uninterrupted."""
    out = tmp_path_factory.mktemp("reference")
    return out, run(grid_file, out)


class CountingTrain:
    """Wraps ``mm.train.train``: records cell names; raises ``fail[name]`` for that cell."""

    def __init__(self, fail: dict[str, BaseException] | None = None):
        self.names: list[str] = []
        self.fail = fail or {}

    def __call__(self, cfg, opts):
        self.names.append(cfg.name)
        if cfg.name in self.fail:
            partial = Path(opts.out_dir) / cfg.name
            partial.mkdir(parents=True, exist_ok=True)
            (partial / "partial.txt").write_text("cut short")
            raise self.fail[cfg.name]
        return REAL_TRAIN(cfg, opts)


def wandb_run(run_dir: Path) -> tuple[str, str, str]:
    """(name, group, job type) of the offline W&B run in ``run_dir`` (of each segment: the summary run has two)."""
    (run, *more) = read_offline_run(run_dir)["runs"]
    assert all((r["run_id"], r["display_name"], r["run_group"], r["job_type"])
               == (run["run_id"], run["display_name"], run["run_group"], run["job_type"]) for r in more)
    return run["display_name"], run["run_group"], run["job_type"]


def test_expansion_order_names_and_cell_configs(grid_file, tmp_path):
    grid = grids.load_grid(grid_file)
    cells = grids.expand(grid, tmp_path)
    assert [c.name for c in cells] == NAMES
    cfg = cells[2].cfg
    assert (cfg.fusion.hidden_dim, cfg.seed, cfg.name) == (32, 0, NAMES[2])
    assert (cells[2].options.out_dir, cells[2].options.progress) == (str(tmp_path / "runs"), False)
    assert (cfg.wandb.group, cfg.wandb.job_type, cfg.encoders.text.source) == ("tiny", "ablation", "tiny-bert")

    no_modalities = [o for o in TINY if not o.startswith("data.modalities")]
    two = grids.load_grid(write_grid(tmp_path / "two.yaml", seeds=[3], overrides=no_modalities,
                                     grid={"data.modalities": [["text"], ["text", "image"]],
                                           "fusion.name": ["concat", "late"]}), ["optim.lr=0.01"])
    cells = grids.expand(two, tmp_path)
    assert [c.name for c in cells] == [
        "data.modalities=text__fusion.name=concat__seed=3", "data.modalities=text__fusion.name=late__seed=3",
        "data.modalities=text+image__fusion.name=concat__seed=3", "data.modalities=text+image__fusion.name=late__seed=3",
    ]
    assert cells[3].cfg.data.modalities == ["text", "image"] and cells[3].cfg.optim.lr == 0.01
    (tmp_path / "base.yaml").write_text("fusion: {dropout: 0.0}\noptim: {lr: 0.5}\n")
    based = grids.expand(grids.load_grid(write_grid(tmp_path / "based.yaml", base="base.yaml")), tmp_path)
    assert {(c.cfg.fusion.dropout, c.cfg.optim.lr) for c in based} == {(0.0, 0.5)}  # base beside the grid file
    clash = write_grid(tmp_path / "clash.yaml", grid={"data.modalities": [["text"]]})
    with pytest.raises(ConfigError, match=r"clash\.yaml: grid key 'data.modalities' is also an override"):
        grids.load_grid(clash)


def test_long_names_are_hashed_and_safe():
    a = cell_name({"encoders.image.source": "/data/" + "x" * 200 + "/a"}, 0)
    b = cell_name({"encoders.image.source": "/data/" + "x" * 200 + "/b"}, 0)
    assert a != b and len(a) == len(b) == MAX_NAME + len("__seed=0")
    assert a.startswith("encoders.image.source=-data-xxx") and a.endswith("__seed=0")
    assert a == cell_name({"encoders.image.source": "/data/" + "x" * 200 + "/a"}, 0)


def test_results_csv_rows_and_columns(reference):
    out, result = reference
    assert result.trained == NAMES and result.failed == []
    rows = read_csv(out / "results.csv")
    assert [r["cell"] for r in rows] == NAMES
    assert [(r["fusion.hidden_dim"], r["seed"]) for r in rows] == [("16", "0"), ("16", "1"), ("32", "0"), ("32", "1")]
    for row in rows:
        res = json.loads((out / "runs" / row["cell"] / "results.json").read_text())
        metrics = {f"{s}/{k}": v for s in ("val", "test") for k, v in res[s].items()}
        assert list(row) == ["cell", "fusion.hidden_dim", "seed", *metrics, "best_step", "steps", "params/total",
                             "params/trainable", "wall_time_s", "throughput_samples_per_s", "peak_memory_mb",
                             "peak_memory_kind"]
        assert {k: float(row[k]) for k in metrics} == metrics
        assert int(row["params/total"]) == res["params"]["params/total"]
        assert int(row["steps"]) == 2 and float(row["throughput_samples_per_s"]) > 0
        assert row["peak_memory_kind"] == "runner_peak_rss" and float(row["peak_memory_mb"]) > 0
    assert rows[0]["params/trainable"] != rows[2]["params/trainable"]  # hidden_dim changes the fusion
    state = json.loads((out / "state.json").read_text())["cells"]
    assert [(n, e["status"], e["run_dir"]) for n, e in state.items()] == [(n, "done", str(out / "runs" / n)) for n in NAMES]


def test_summary_is_mean_and_interval_over_seeds_with_a_paired_test(reference):
    from mm.analysis.stats import PREDICTIONS, Predictions, compare, format_p

    out, result = reference
    rows = read_csv(out / "results.csv")
    stats = {}
    for dim in ("16", "32"):
        for col in ("val/accuracy", "test/accuracy"):
            values = [float(r[col]) for r in rows if r["fusion.hidden_dim"] == dim]
            stats[dim, col] = (statistics.fmean(values), statistics.stdev(values))
    # the best test mean (the first on a tie) against the other, paired over both seeds' test examples
    best, other = sorted(("16", "32"), key=lambda d: stats[d, "test/accuracy"][0], reverse=True)
    runs = {d: [Predictions.load(out / "runs" / f"fusion.hidden_dim={d}__seed={s}" / PREDICTIONS) for s in (0, 1)]
            for d in ("16", "32")}
    p = compare(runs[best], runs[other], "accuracy").paired.p
    lines = (out / "summary.md").read_text().splitlines()
    assert "| fusion.hidden_dim | n | val/accuracy | test/accuracy | p vs best | ceiling |" in lines
    t = 12.706204736174698  # t_{0.975} with 1 degree of freedom: two seeds
    for dim in ("16", "32"):
        cells = []
        for col in ("val/accuracy", "test/accuracy"):
            mean, std = stats[dim, col]
            half = t * std / 2**0.5
            text = f"{mean:.4f} [{mean - half:.4f}, {mean + half:.4f}]"
            cells.append(f"**{text}**" if col == "test/accuracy" and dim == best and p < 0.05 else text)
        versus = "best" if dim == best else format_p(p)
        assert f"| {dim} | 2 | {cells[0]} | {cells[1]} | {versus} | {ceiling('color_animal', ['text']):.4f} |" in lines
    verdict = "is significantly better than" if p < 0.05 else "No significant difference between"
    assert verdict in lines[-1] and f"p {format_p(p, relation=True)}" in lines[-1]
    assert result.summary == (out / "summary.md").read_text()
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert yaml.safe_load((out / "grid.yaml").read_text())["overrides"] == TINY


def test_wandb_cells_and_summary_run(reference):
    out, _ = reference
    for name in NAMES:
        run_dir = out / "runs" / name
        assert [r["global_step"] for r in read_offline_history(run_dir) if "val/accuracy" in r] == [2]
        assert wandb_run(run_dir) == (name, "tiny", "ablation")
    assert wandb_run(out / "summary") == ("tiny-summary", "tiny", "ablation-summary")
    history = read_offline_history(out / "summary")
    assert {row.get("summary._type") for row in history} >= {"table-file"}
    assert {row.get("summary_plot._type") for row in history} >= {"image-file"}


def test_failed_and_interrupted_cells_rerun_to_the_same_results(reference, grid_file, tmp_path, monkeypatch):
    # Cell 2 fails (the grid goes on), then the runner is killed during cell 3.
    out = tmp_path / "b"
    first = CountingTrain(fail={NAMES[1]: ValueError("boom in cell 2"), NAMES[2]: KeyboardInterrupt()})
    monkeypatch.setattr(mm_train, "train", first)
    with pytest.raises(KeyboardInterrupt):
        run(grid_file, out)
    assert first.names == NAMES[:3]
    state = json.loads((out / "state.json").read_text())["cells"]
    assert [state[n]["status"] for n in NAMES] == ["done", "failed", "running", "pending"]
    assert state[NAMES[1]]["error"] == "ValueError: boom in cell 2"

    # The same command again: the done cell is kept, the others run from clean folders.
    again = CountingTrain()
    monkeypatch.setattr(mm_train, "train", again)
    result = run(grid_file, out)
    assert again.names == NAMES[1:] and result.trained == NAMES[1:] and result.failed == []
    assert not list((out / "runs").glob("*/partial.txt"))
    assert sorted(p.name for p in (out / "runs").iterdir()) == NAMES  # no "-2" folders
    assert without_timing(read_csv(out / "results.csv")) == without_timing(read_csv(reference[0] / "results.csv"))


def test_cli_exits_1_when_a_cell_failed(grid_file, tmp_path, monkeypatch):
    failing = CountingTrain(fail={n: ValueError(f"boom {i}") for i, n in enumerate(NAMES)})
    monkeypatch.setattr(mm_train, "train", failing)
    out = tmp_path / "c"
    assert ablate.main([str(grid_file), "--out", str(out)]) == 1
    assert failing.names == NAMES
    state = json.loads((out / "state.json").read_text())["cells"]
    assert [(e["status"], e["error"]) for e in state.values()] == [("failed", f"ValueError: boom {i}") for i in range(4)]
    assert read_csv(out / "results.csv") == []


def test_grid_errors_name_the_key_and_file(tmp_path, monkeypatch):
    bad_key = write_grid(tmp_path / "bad_key.yaml", grid={"fusion.hidden_dimm": [16]})
    with pytest.raises(ConfigError, match=r"bad_key\.yaml.*fusion\.hidden_dimm"):
        grids.expand(grids.load_grid(bad_key), tmp_path)
    seed = write_grid(tmp_path / "seed.yaml", grid={"seed": [0, 1]})
    with pytest.raises(ConfigError, match=r"seed\.yaml: 'seed' is set by the runner for each cell \(use 'seeds:'\)"):
        grids.load_grid(seed)
    top = write_grid(tmp_path / "top.yaml", seed=[0])
    with pytest.raises(ConfigError, match=r"top\.yaml: unknown top-level key 'seed'"):
        grids.load_grid(top)
    bad_value = write_grid(tmp_path / "bad_value.yaml", grid={"fusion.name": ["concat", "nope"]})
    monkeypatch.setattr(mm_train, "train", lambda cfg, opts: pytest.fail("a cell ran before validation"))
    with pytest.raises(ConfigError, match=r"bad_value\.yaml: cell fusion\.name=nope__seed=0: .*'fusion\.name'"):
        grids.expand(grids.load_grid(bad_value), tmp_path)
    assert ablate.main([str(bad_value), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_sweep_export_gives_the_cells_configs(grid_file, tmp_path):
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    sweep = tmp_path / "sweep.yaml"
    assert ablate.main([str(grid_file), "--sweep", str(sweep), "train.epochs=1"]) == 0
    spec = yaml.safe_load(sweep.read_text())
    assert (spec["method"], spec["program"]) == ("grid", "scripts/train.py")
    assert spec["parameters"] == {"fusion.hidden_dim": {"values": [16, 32]}, "seed": {"values": [0, 1]}}
    assert spec["command"] == ["${env}", "python", "${program}", *TINY, "train.epochs=1", "wandb.group=tiny",
                               "wandb.job_type=ablation", "${args_no_hyphens}"]
    assert not (tmp_path / "runs").exists()

    # What `wandb agent` would run for each grid point is the cell's config (run name and folder aside, and
    # the W&B tags of the cell: a sweep's runs are told apart by their sweep and parameters).
    cells = grids.expand(grids.load_grid(grid_file, ["train.epochs=1"]), tmp_path)
    keys = list(spec["parameters"])
    for cell, combo in zip(cells, itertools.product(*(spec["parameters"][k]["values"] for k in keys)), strict=True):
        args = create_sweep_command_args({"args": {k: {"value": v} for k, v in zip(keys, combo, strict=True)}})
        argv = [*spec["command"][3:-1], *args["args_no_hyphens"]]
        parsed = train_script.parse_args(argv)
        cfg = load_config(parsed.config, parsed.overrides)
        cfg.name = cell.cfg.name
        assert cfg.wandb.tags == [] and cell.cfg.wandb.tags == ["tiny", f"fusion.hidden_dim={combo[0]}"]
        cfg.wandb.tags = cell.cfg.wandb.tags
        assert cfg == cell.cfg


def test_dry_run_prints_cells(grid_file, tmp_path, capsys):
    assert ablate.main([str(grid_file), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{i}/4 {n}" for i, n in enumerate(NAMES, 1)]
    assert not (tmp_path / "o").exists()


# The study's synthetic grids (lr_synthetic.yaml is the search's known-answer grid, checked by tests/test_search.py).
SYNTHETIC_GRIDS = sorted(p for p in (ROOT / "configs" / "ablations").glob("*.yaml")
                         if not p.name.startswith("real_") and p.stem != "lr_synthetic")
REAL_GRIDS = sorted((ROOT / "configs" / "ablations").glob("real_*.yaml"))


@pytest.mark.parametrize("path", REAL_GRIDS, ids=lambda p: p.name)
def test_real_data_grids_vary_one_strategy_for_both_encoders(path, tmp_path):
    assert path.read_text().splitlines()[0] == f"# python scripts/ablate.py configs/ablations/{path.name}"
    grid = grids.load_grid(path, ["data.dataset=/elsewhere"])  # the command's own dataset wins
    cells = grids.expand(grid, tmp_path)
    assert len(cells) == len(grid.seeds) * len(grid.grid["strategy"]) * len(grid.grid["data.modalities"])
    assert {c.cfg.data.dataset for c in cells} == {"/elsewhere"}
    for c in cells:
        image, audio = c.cfg.encoders.image, c.cfg.encoders.audio
        assert (image.source, audio.source, audio.name) == ("effnet-lite0", "effnet-lite0", "spectrogram")
        strategy = c.name.split("__")[0].removeprefix("strategy=")
        if strategy == "scratch":
            assert not image.pretrained and not audio.pretrained and image.trainable == audio.trainable == "full"
        else:
            assert image.trainable == audio.trainable == strategy and image.pretrained and audio.pretrained


@pytest.mark.parametrize("path", SYNTHETIC_GRIDS, ids=lambda p: p.name)
def test_shipped_grids_load_and_every_cell_validates(path, tmp_path):
    assert path.read_text().splitlines()[0] == f"# python scripts/ablate.py configs/ablations/{path.name}"
    grid = grids.load_grid(path)
    cells = grids.expand(grid, tmp_path)
    assert len(cells) == len(grid.seeds) * len(list(itertools.product(*grid.grid.values())))
    assert grid.ceilings and grid.seeds and grid.seeds == sorted(set(grid.seeds))
    expected_tasks = {"color_animal", "match"} if path.stem == "fusion_tasks" else {"color_animal"}
    assert {c.cfg.data.task for c in cells} == expected_tasks
    assert {(c.cfg.encoders.text.source, c.cfg.encoders.text.trainable) for c in cells} == {("minilm", "frozen")}
    if path.stem == "modalities_fusion":
        assert grid.grid["data.modalities"] == [["text"], ["image"], ["text", "image"]]
        # Every pooled fusion in the registry (text_tokens is for the token head).
        assert sorted(grid.grid["fusion.name"]) == sorted(f for f in FUSIONS if f != "text_tokens")
        assert {c.cfg.train.epochs for c in cells} == {4}
    if path.stem == "transfer":  # the transfer policies, on the image backbone, alone and with text
        assert grid.grid["encoders.image.trainable"] == ["frozen", "lora", "last_n", "full"]
        assert grid.grid["data.modalities"] == [["image"], ["text", "image"]]


@pytest.mark.slow
def test_subprocess_workers_match_in_process_results(reference, grid_file, tmp_path):
    import subprocess

    out = tmp_path / "sub"
    cmd = [sys.executable, "scripts/ablate.py", str(grid_file), "--out", str(out), "--workers", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fusion.hidden_dim" in proc.stdout and (out / "configs" / f"{NAMES[0]}.yaml").is_file()
    rows = read_csv(out / "results.csv")
    assert {r["peak_memory_kind"] for r in rows} == {"process_peak_rss"}
    assert without_timing(rows) == without_timing(read_csv(reference[0] / "results.csv"))
