"""A run cancelled after its last window ends without a result and without generating: the
dashboard's next setting never waits for the one it replaced to finish generating."""
from __future__ import annotations

import threading

from memopt_core.config import EvalConfig, ModelSpec, QuantConfig, RunConfig
from memopt_core.evaluation.lm_records import Estimate
from memopt_core.evaluation.reference_store import ReferenceStore
from memopt_core.loading.models import load_model
from memopt_core.runs import progressive_run
from memopt_core.runs.progressive_run import Compressed
from memopt_core.runs.result import RunResult
from memopt_core.runs.workbench import Workbench

EVAL = EvalConfig(seq_len=64, max_tokens=256, gen_tokens=8, zero_shot=False)


def test_cancel_after_the_last_window_stops_generation_and_gives_no_result(tmp_path, monkeypatch):
    bench = Workbench(load_model(ModelSpec("tiny-llama")), references=ReferenceStore(tmp_path))
    config = RunConfig(ModelSpec("tiny-llama"), quant=QuantConfig(bits=4), eval=EVAL)
    generated: list[str] = []

    def recorded(*args, **kwargs):
        generated.append(original_generate(*args, **kwargs))
        return generated[-1]

    original_generate = progressive_run.greedy_generate
    monkeypatch.setattr(progressive_run, "greedy_generate", recorded)
    finished = list(bench.run_steps(config))
    assert isinstance(finished[-1], RunResult) and finished[-1].compressed["generation"]["text"] == generated[0]
    tokenizer = bench.loaded.tokenizer
    assert len(tokenizer(generated[0], add_special_tokens=False)["input_ids"]) > 1

    cancel, steps = threading.Event(), []
    for step in bench.run_steps(config, cancel=cancel):
        steps.append(step)
        if isinstance(step, Estimate) and step.exact:
            cancel.set()  # as a newer setting does, with generation still to come
    assert isinstance(steps[0], Compressed) and isinstance(steps[-1], Estimate) and steps[-1].exact
    assert not any(isinstance(step, RunResult) for step in steps)
    assert len(generated) == 1  # the cancelled run never started generating (mid-way: test_dequantize_once.py)
