"""Sweeps on a local Ray cluster (2 CPUs, as CI has): the same results as this process computes,
stored as they finish, and a killed worker's setting run again. Few tests: Ray starts in seconds."""
import os
import signal

import pytest

from memopt_core.config import ClusterConfig, EvalConfig, ModelSpec
from memopt_core.runs.ray_executor import RayExecutor, connect
from memopt_core.runs.store import ResultStore
from memopt_core.runs.sweep import SweepGrid, run_sweep

SMALL_EVAL = EvalConfig(seq_len=32, max_tokens=128, gen_tokens=2, zero_shot=False)
GRID = SweepGrid(prune_ratios=(0.0, 0.5), bits=(8, 4))
TWO_WORKERS = ClusterConfig(workers=2, cpus_per_worker=1)
COMPARED = ("perplexity", "kl_divergence", "top1_agreement", "stored_bytes", "bits_per_weight", "sparsity")


@pytest.fixture(scope="module")
def cluster():
    connect(ClusterConfig(), num_cpus=2)  # the CLI's local cluster (127.0.0.1 only, no dashboard), 2 CPUs as CI
    import ray  # after connect(): Ray reads its loopback-only setting when first imported

    assert ray.util.get_node_ip_address() == "127.0.0.1"
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_table(tmp_path_factory):
    store = ResultStore(tmp_path_factory.mktemp("local") / "runs.db")
    return run_sweep(ModelSpec("tiny-llama"), GRID, SMALL_EVAL, store=store).table


def _same_rows(ray_table, local_table):
    assert ray_table["setting"].tolist() == local_table["setting"].tolist()  # grid order, whatever finished first
    # One thread per worker there, two in this process: sums may round apart. The KL of an 8-bit copy is
    # ~1e-7 nats, a difference of nearly equal log-probs, so its rounding is absolute (abs=1e-7), not relative.
    for column in COMPARED:
        assert ray_table[column].tolist() == pytest.approx(local_table[column].tolist(), rel=1e-5, abs=1e-7), column


@pytest.mark.slow
def test_ray_sweep_equals_the_local_one_and_stores_every_result(cluster, local_table, tmp_path):
    store = ResultStore(tmp_path / "runs.db")
    seen = []
    executor = RayExecutor(TWO_WORKERS)
    result = run_sweep(ModelSpec("tiny-llama"), GRID, SMALL_EVAL, store=store, executor=executor,
                       progress=lambda done, total, label, eta: seen.append((done, total, label)))
    _same_rows(result.table, local_table)
    assert result.computed == 4 and store.count() == 4 and executor.workers == 2
    assert {row["result"]["execution"]["threads"] for row in store.rows()} == {1}  # one CPU each: one thread
    assert seen[-1] == (4, 4, "done") and [done for done, _, _ in seen] == sorted(done for done, _, _ in seen)
    assert any("," in label for _, _, label in seen)  # two settings ran at once
    again = run_sweep(ModelSpec("tiny-llama"), GRID, SMALL_EVAL, store=store, executor=RayExecutor(TWO_WORKERS))
    assert again.from_store == 4 and again.computed == 0  # answered by the store, no worker started


@pytest.mark.slow
def test_a_killed_workers_setting_is_run_again(cluster, local_table, tmp_path):
    store = ResultStore(tmp_path / "runs.db")
    executor = RayExecutor(TWO_WORKERS)
    killed = []

    def kill_the_newest(done, total, label, eta):
        running = executor.running_pids()
        if done >= 1 and not killed and running and list(running.values())[-1] in label:
            pid, setting = list(running.items())[-1]  # just sent: it cannot have finished yet
            os.kill(pid, signal.SIGKILL)
            killed.append(setting)
    result = run_sweep(ModelSpec("tiny-llama"), GRID, SMALL_EVAL, store=store, executor=executor,
                       progress=kill_the_newest)
    assert killed and executor.reruns == killed
    _same_rows(result.table, local_table)
    keys = [row["key"] for row in store.rows()]
    assert len(keys) == len(set(keys)) == 4  # the rerun setting stored once
