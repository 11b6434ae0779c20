"""Releasing a streamed model's modules frees their tensors: nothing of accelerate's dispatch
(its record of tied tensors) keeps a released resident tensor alive."""
import gc
import weakref

from memopt_core.config import ModelSpec, OffloadConfig
from memopt_core.offload import streamed as streamed_module
from memopt_core.offload.streamed import load_streamed, release_

CAP = OffloadConfig(max_memory=10**9)
EMBEDDINGS_ONLY = 12_650_000  # a resident budget: the tiny Llama's 12.58 MB tied embeddings, not a 0.15 MB block


def _released_embedding_alive() -> bool:
    streamed = load_streamed(ModelSpec("tiny-llama"), CAP, EMBEDDINGS_ONLY)
    model = streamed.loaded.model
    assert streamed.tied and model.lm_head.weight is model.model.embed_tokens.weight
    embedding = weakref.ref(model.model.embed_tokens.weight)
    for part in ("model.embed_tokens", "lm_head"):
        release_(model, part)
    gc.collect()
    return embedding() is not None


def test_a_released_tied_embedding_is_freed():
    assert not _released_embedding_alive()


def test_accelerates_record_of_tied_tensors_is_what_kept_it(monkeypatch):
    """Without clearing that record, the released embedding stays alive (why release_ clears it)."""
    monkeypatch.setattr(streamed_module, "_forget_tied_", lambda model, pointers: None)
    assert _released_embedding_alive()
