"""Sweeps: one row per setting, a correct Pareto column, resumable after a killed process."""
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from memopt_core.config import EvalConfig, ModelSpec
from memopt_core.errors import ConfigError
from memopt_core.runs.pareto import pareto_mask
from memopt_core.runs.store import ResultStore
from memopt_core.runs.sweep import SweepGrid, run_sweep

ROOT = Path(__file__).resolve().parents[2]
SMALL_EVAL = EvalConfig(seq_len=32, max_tokens=128, gen_tokens=0, zero_shot=False)


def brute_force_front(costs, losses):
    """Definition: a point is on the front if no other point is <= on both axes and < on one."""
    front = []
    for i, (c, l) in enumerate(zip(costs, losses)):
        dominated = any(c2 <= c and l2 <= l and (c2 < c or l2 < l) for j, (c2, l2) in enumerate(zip(costs, losses))
                        if j != i)
        front.append(not dominated)
    return front


@pytest.mark.parametrize("seed", range(20))
def test_pareto_mask_matches_brute_force(seed):
    import random

    rng = random.Random(seed)
    costs = [rng.choice([1, 2, 3, 4, 5, 6]) for _ in range(15)]
    losses = [rng.choice([1.0, 2.0, 3.0, 4.0, float("inf")]) for _ in range(15)]
    assert pareto_mask(costs, losses) == brute_force_front(costs, losses)


def test_grid_settings_dedupe_and_validate():
    grid = SweepGrid(prune_methods=("magnitude", "magnitude-global"), prune_ratios=(0.0, 0.5), bits=(16, 4))
    labels = [(p.label if p else None, q.label if q else None) for p, q in grid.settings()]
    assert len(labels) == 6  # ratio 0 is one "unpruned" setting whatever the method
    assert len(set(labels)) == 6
    with pytest.raises(ConfigError, match="bits 7"):
        SweepGrid(bits=(4, 7))
    with pytest.raises(ConfigError, match="empty"):
        SweepGrid(bits=())


def test_quantizers_are_an_axis_and_casts_run_once():
    grid = SweepGrid(bits=(16, "fp16", 4, 3), quant_methods=("rtn", "gptq"), group_sizes=(None, 64))
    quants = [q for _, q in grid.settings()]
    assert quants.count(None) == 1 and sum(q is not None and q.method == "fp16" for q in quants) == 1
    integer = {(q.method, q.bits, q.group_size if q.granularity == "group" else None) for q in quants
               if q is not None and not q.is_cast}
    assert integer == set(itertools.product(("rtn", "gptq"), (4, 3), (None, 64)))
    with pytest.raises(ConfigError, match="quant_methods"):
        SweepGrid(bits=(4,), quant_options={"method": "gptq"})
    with pytest.raises(ConfigError, match="awq"):
        SweepGrid(bits=(4,), quant_methods=("awq",))


@pytest.mark.slow
def test_cli_sweep_runs_rtn_and_gptq_side_by_side(tmp_path, capsys):
    from memopt_core import charts
    from memopt_core.cli import main

    code = main(["sweep", "--model", "tiny-llama", "--bits", "16,4", "--quant-method", "rtn,gptq",
                 "--prune-method", "wanda", "--prune-ratios", "0,0.5", "--calib-samples", "2", "--calib-len", "32",
                 "--seq-len", "32", "--max-tokens", "128", "--gen-tokens", "0", "--no-zero-shot",
                 "--db", str(tmp_path / "runs.db"), "--json"])
    assert code == 0
    table = pd.DataFrame(json.loads(capsys.readouterr().out)["rows"])
    assert len(table) == 6  # {unpruned, wanda 50%} x {16 bits once, RTN 4, GPTQ 4}
    calibrated = (table["quant_method"] == "gptq") | (table["prune_method"] == "wanda")
    assert table.loc[calibrated, "calibration"].eq("both 2x32 seed 0").all()
    assert table.loc[~calibrated, "calibration"].isna().all()
    lines = {trace.name for trace in charts.tradeoff_memory(table).data} - {"Pareto front"}
    assert lines == {"not pruned", "not pruned · GPTQ", "wanda 50%", "wanda 50% · GPTQ"}


@pytest.mark.slow
def test_sweep_rows_pareto_and_store(tmp_path):
    store = ResultStore(tmp_path / "runs.db")
    grid = SweepGrid(prune_ratios=(0.0, 0.5), bits=(16, 8, 2))
    seen = []
    result = run_sweep(ModelSpec("tiny-llama"), grid, SMALL_EVAL, store=store,
                       progress=lambda done, total, label, eta: seen.append((done, total, label)))
    table = result.table
    assert len(table) == 6 and result.computed == 6 and store.count() == 6
    assert seen[0][:2] == (0, 6) and seen[-1] == (6, 6, "done")
    expected = brute_force_front(table["stored_bytes"].tolist(), table["perplexity"].tolist())
    assert table["pareto"].tolist() == expected
    assert table.loc[table["perplexity"].idxmin(), "pareto"]  # the best quality is never dominated
    assert table.loc[table["stored_bytes"].idxmin(), "pareto"] or \
        (table["stored_bytes"] == table["stored_bytes"].min()).sum() > 1
    again = run_sweep(ModelSpec("tiny-llama"), grid, SMALL_EVAL, store=store)
    assert again.from_store == 6 and again.computed == 0
    pd.testing.assert_frame_equal(again.table.drop(columns="key", errors="ignore"),
                                  table.drop(columns="key", errors="ignore"))


@pytest.mark.slow
def test_cancel_keeps_finished_settings(tmp_path):
    import threading

    store = ResultStore(tmp_path / "runs.db")
    cancel = threading.Event()

    def stop_after_two(done, total, label, eta):
        if done == 2:
            cancel.set()
    result = run_sweep(ModelSpec("tiny-llama"), SweepGrid(bits=(16, 8, 4, 2)), SMALL_EVAL, store=store,
                       progress=stop_after_two, cancel=cancel)
    assert result.cancelled and len(result.table) == 2 and store.count() == 2


@pytest.mark.slow
def test_killed_sweep_resumes_without_loss_or_duplicates(tmp_path):
    db = tmp_path / "runs.db"
    argv = [sys.executable, "-m", "memopt_core", "sweep", "--model", "tiny-llama", "--bits", "16,8,6,5,4,3,2",
            "--seq-len", "32", "--max-tokens", "128", "--gen-tokens", "0", "--no-zero-shot", "--db", str(db)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    stored = 0
    while time.time() < deadline and stored < 2:
        time.sleep(0.02)  # a fast machine runs a tiny setting in a fraction of a second
        if db.exists():
            try:
                stored = sqlite3.connect(db).execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            except sqlite3.OperationalError:
                stored = 0
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 2 <= stored < 7, "the sweep should have been killed midway"
    store = ResultStore(db)
    before = {row["key"] for row in store.rows()}
    result = run_sweep(ModelSpec("tiny-llama"), SweepGrid(bits=(16, 8, 6, 5, 4, 3, 2)), SMALL_EVAL, store=store)
    keys = [row["key"] for row in store.rows()]
    assert len(keys) == len(set(keys)) == 7
    assert before <= set(keys)
    assert result.from_store >= len(before) and len(result.table) == 7


@pytest.mark.slow
def test_cli_sweep_writes_csv_and_json(tmp_path, capsys):
    from memopt_core.cli import main

    out = tmp_path / "table.csv"
    code = main(["sweep", "--model", "tiny-llama", "--bits", "16,4", "--prune-ratios", "0,0.5", "--seq-len", "32",
                 "--max-tokens", "128", "--gen-tokens", "0", "--no-zero-shot", "--db", str(tmp_path / "r.db"),
                 "--out", str(out), "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["rows"]) == 4 and data["computed"] == 4
    assert len(pd.read_csv(out)) == 4
