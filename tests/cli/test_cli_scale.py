"""`run --max-memory` (layer by layer) and `sweep --executor ray` from the command line."""
import json

import pytest

from memopt_core.cli import main

FAST = ["--seq-len", "32", "--max-tokens", "128", "--gen-tokens", "2", "--no-zero-shot"]


@pytest.mark.parametrize("argv, fragment", [
    (["--max-memory", "300mb"], "max memory '300mb' is not a size"),
    (["--max-memory", "300"], "max memory '300' is not a size"),
    (["--max-memory", "0GiB"], "max memory '0GiB' is not a size"),
    (["--offload-dir", "/tmp"], "--offload-dir applies to the layer-by-layer route"),
    (["--max-memory", "1GB", "--prune-method", "magnitude-global", "--prune-ratio", "0.5"],
     "magnitude-global ranks every layer at once"),
])
def test_bad_layer_by_layer_settings_are_one_line(capsys, argv, fragment):
    code = main(["run", "--model", "tiny-llama", *argv, *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and fragment in err[0]


@pytest.mark.slow
def test_run_with_a_cap_reports_the_route_and_cleans_its_offload_folder(capsys, tmp_path):
    code = main(["run", "--model", "tiny-llama", "--bits", "4", "--max-memory", "5MB", "--offload-dir", str(tmp_path),
                 "--json", *FAST])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert result["execution"]["route"] == "layer-by-layer" and result["execution"]["max_memory"] == 5_000_000
    assert result["memory"]["measured_bytes"] > 0
    assert set(result["execution"]["measured_phases"]) == {"load and baseline", "compress", "evaluate"}
    assert result["compressed"]["perplexity"] > 0
    assert list(tmp_path.iterdir()) == []  # the compressed blocks lived there while the run lasted


@pytest.mark.parametrize("argv, fragment", [
    (["--address", "head:6379"], "--address, --workers and --cpus-per-worker apply to --executor ray"),
    (["--workers", "2"], "--address, --workers and --cpus-per-worker apply to --executor ray"),
    (["--executor", "ray", "--workers", "0"], "workers 0 must be at least 1"),
    (["--executor", "ray", "--cpus-per-worker", "0"], "CPUs per worker 0 must be at least 1"),
    (["--executor", "dask"], "invalid choice: 'dask'"),
])
def test_bad_cluster_settings_are_one_line_before_ray_starts(capsys, argv, fragment):
    code = main(["sweep", "--model", "tiny-llama", "--bits", "8", *argv, *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and fragment in err[0]


def test_sweep_flags_build_the_cluster_they_name():
    from memopt_core.cli import build_parser
    from memopt_core.cli.sweep import build_executor

    args = build_parser().parse_args(["sweep", "--model", "tiny-llama", "--executor", "ray", "--address", "head:6379",
                                      "--workers", "8", "--cpus-per-worker", "4"])
    executor = build_executor(args)
    assert (executor.cluster.address, executor.cluster.workers, executor.cluster.cpus_per_worker) == ("head:6379", 8, 4)
    local = build_parser().parse_args(["sweep", "--model", "tiny-llama"])
    assert build_executor(local) is None
