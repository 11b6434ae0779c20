"""Runs in an engine process give the same figures as in this process, stop when cancelled,
raise memopt's own errors again here, and fail waiting callers in one line when the child dies."""
from __future__ import annotations

import os
import signal
import threading

import pytest

from memopt_core.config import EvalConfig, ModelSpec, QuantConfig, RunConfig
from memopt_core.errors import ModelLoadError
from memopt_core.evaluation.reference_store import ReferenceStore
from memopt_core.loading.models import load_model
from memopt_core.runs.engine_process import EngineProcess, EngineStopped
from memopt_core.runs.progressive_run import step_message
from memopt_core.runs.workbench import Workbench

pytestmark = pytest.mark.slow  # each test starts Python processes that import torch

SPEC = ModelSpec("tiny-llama")
CONFIG = RunConfig(SPEC, quant=QuantConfig(bits=4), eval=EvalConfig(seq_len=32, max_tokens=128, gen_tokens=4,
                                                                     zero_shot=False))


@pytest.fixture(scope="module")
def engine():
    started = EngineProcess(SPEC)
    yield started
    started.close()


def test_the_same_messages_as_run_steps_in_this_process(engine, tmp_path):
    remote = list(engine.steps(CONFIG))
    local = [("loaded", {})] + [step_message(step) for step in
                                Workbench(load_model(SPEC), ReferenceStore(tmp_path)).run_steps(CONFIG)]
    assert [kind for kind, _ in remote] == [kind for kind, _ in local] == \
        ["loaded", "compressed", "estimate", "estimate", "estimate", "estimate", "result"]
    assert engine.loaded
    for (_, there), (_, here) in zip(remote[2:-1], local[2:-1]):  # every estimate, figure for figure
        assert there["perplexity"] == here["perplexity"] and there["kl_divergence"] == here["kl_divergence"]
    there, here = remote[-1][1], local[-1][1]
    for key in ("perplexity", "kl_divergence", "top1_agreement", "generation"):
        assert there["compressed"][key] == here["compressed"][key]
    stored = {key: value for key, value in there["memory"].items() if key != "measured_bytes"}  # RSS: varies
    assert stored == {key: value for key, value in here["memory"].items() if key != "measured_bytes"}
    assert there["layers"] == here["layers"]


def test_a_cancelled_run_stops_between_windows_without_a_result(engine):
    cancel = threading.Event()
    kinds = []
    for kind, payload in engine.steps(CONFIG, cancel):
        kinds.append(kind)
        if kind == "estimate":
            cancel.set()  # forwarded to the child, which stops before its next window
    assert kinds[:3] == ["loaded", "compressed", "estimate"] and "result" not in kinds and len(kinds) < 7
    assert [kind for kind, _ in engine.steps(CONFIG)][-1] == "result"  # the engine serves the next one


def test_a_call_reads_the_weights_of_a_layer_in_the_child(engine):
    data = engine.call("memopt_core.compression.weight_view:layer_weights", CONFIG, "model.layers.0.self_attn.q_proj")
    assert data.layer == "model.layers.0.self_attn.q_proj" and len(data.before) == len(data.after) > 0
    assert len(data.grid) == 16  # 4 bits: every level of the first group's grid


def test_a_memopt_error_in_the_child_is_raised_here_as_itself():
    missing = EngineProcess(ModelSpec("/nonexistent/folder/of/a/model"))
    try:
        with pytest.raises(ModelLoadError):
            list(missing.steps(RunConfig(missing.spec)))
        assert missing.alive  # one failed request does not end the engine
    finally:
        missing.close()


def test_a_child_that_dies_fails_the_waiting_caller_in_one_line():
    doomed = EngineProcess(SPEC)
    steps = doomed.steps(CONFIG)
    assert next(steps)[0] == "loaded"
    os.kill(doomed._process.pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
    with pytest.raises(EngineStopped, match=r"exit code -9 \(killed: out of memory\?\)"):
        list(steps)
    assert not doomed.alive
    with pytest.raises(EngineStopped, match="has stopped"):
        list(doomed.steps(CONFIG))


class _TwoArgumentError(Exception):
    def __init__(self, what, why):
        super().__init__(f"{what} failed: {why}")


def test_errors_that_cannot_cross_the_pipe_become_one_line_runtime_errors():
    from memopt_core.runs.engine_process import portable_error

    own = ModelLoadError("no such model")
    assert portable_error(own) is own
    summarised = portable_error(_TwoArgumentError("load", "disk on fire\nsecond line"))
    assert type(summarised) is RuntimeError and str(summarised) == "_TwoArgumentError: load failed: disk on fire"
