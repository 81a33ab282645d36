"""One experiment runner for ablation grids and learning curves.

    spec.py      spec files: Grid, Curve and the kinds of curve; reading, cell names, expanding cells
    runner.py    state.json and the one loop: run cells resumably, in-process or as subprocesses
    cell.py      ``python -m mm.experiments.cell --config CELL.yaml``: train one cell in its own process
    summaries.py tables (results.csv, summary.csv, summary.md) and plots, and the W&B summary run
    grids.py     ablation grids (``scripts/ablate.py``): the grid file, sweeps, running and reporting
    curves.py    learning curves (``scripts/learning_curve.py``): the curve file, train error, reporting

Imports go one way: spec <- runner and summaries <- grids and curves; cell.py needs only mm.train.
"""
