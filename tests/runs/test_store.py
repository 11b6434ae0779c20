"""The results store and the identities that key it."""
import json
import sqlite3

import pytest

from memopt_core.config import CalibConfig, EvalConfig, ModelSpec, QuantConfig, RunConfig, SolverConfig, TargetConfig
from memopt_core.errors import DataError
from memopt_core.runs.identity import eval_identity, model_identity, setting_identity
from memopt_core.runs.store import ResultStore, run_key


def test_put_is_idempotent_and_rows_filter(tmp_path):
    store = ResultStore(tmp_path / "r.db")
    store.put("k1", "tiny-llama", "id", "W4", {"x": 1}, sweep="s1")
    store.put("k1", "tiny-llama", "id", "W4", {"x": 2}, sweep="s1")  # same key: the first stays
    store.put("k2", "tiny-bert", "id2", "W8", {"x": 3})
    assert store.count() == 2
    assert store.get("k1") == {"x": 1}
    assert [r["key"] for r in store.rows(model="tiny-bert")] == ["k2"]
    assert store.sweeps() == ["s1"] and store.models() == ["tiny-bert", "tiny-llama"]
    mode = sqlite3.connect(tmp_path / "r.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DataError, match="cannot be opened"):
        ResultStore(bad)


def test_run_key_changes_with_every_input():
    spec = ModelSpec("tiny-llama")
    evaluation = eval_identity(spec, EvalConfig(max_tokens=1024), TargetConfig())
    base = run_key(model_identity(spec), setting_identity(None, QuantConfig(bits=4)), evaluation)
    assert base == run_key(model_identity(spec), setting_identity(None, QuantConfig(bits=4)), evaluation)
    assert base != run_key(model_identity(spec), setting_identity(None, QuantConfig(bits=3)), evaluation)
    other_eval = eval_identity(spec, EvalConfig(max_tokens=2048), TargetConfig())
    assert base != run_key(model_identity(spec), setting_identity(None, QuantConfig(bits=4)), other_eval)
    news = eval_identity(spec, EvalConfig(text="news"), TargetConfig())
    assert news["text"] != eval_identity(spec, EvalConfig(), TargetConfig())["text"]


def test_local_model_identity_follows_file_contents(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"a" * 64)
    first = model_identity(ModelSpec(str(tmp_path)))
    (tmp_path / "model.safetensors").write_bytes(b"b" * 65)
    assert model_identity(ModelSpec(str(tmp_path))) != first
    assert model_identity(ModelSpec("org/name")) == "hub:org/name@main"


def test_solver_settings_are_keyed_and_default_keys_are_those_of_earlier_versions():
    gptq = QuantConfig(method="gptq", bits=4)
    default = setting_identity(None, gptq, CalibConfig())
    # Results stored before the solver settings joined the config were keyed by these four fields.
    assert default["calib"] == {"text": "both", "samples": 64, "seq_len": 512, "seed": 0}
    no_act_order = setting_identity(None, gptq, CalibConfig(solver=SolverConfig(act_order=False)))
    assert no_act_order["calib"]["solver"]["act_order"] is False
    damped = setting_identity(None, gptq, CalibConfig(solver=SolverConfig(damp=0.1)))
    assert len({str(default), str(no_act_order), str(damped)}) == 3


def test_a_stored_config_with_solver_settings_round_trips():
    config = RunConfig(ModelSpec("tiny-llama"), quant=QuantConfig(method="gptq", bits=3),
                       calib=CalibConfig(samples=8, solver=SolverConfig(act_order=False, block_size=32)))
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_rollback_journal_for_a_database_shared_across_machines(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMOPT_STORE_JOURNAL", "delete")
    store = ResultStore(tmp_path / "shared.db")
    store.put("k", "m", "id", "setting", {"x": 1})
    assert store.get("k") == {"x": 1}
    assert sqlite3.connect(tmp_path / "shared.db").execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    monkeypatch.setenv("MEMOPT_STORE_JOURNAL", "memory")
    with pytest.raises(DataError, match="MEMOPT_STORE_JOURNAL='memory' is not supported"):
        ResultStore(tmp_path / "other.db")
