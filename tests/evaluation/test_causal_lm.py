"""Causal-LM evaluation against direct computations on a tiny random Llama."""
from __future__ import annotations

import copy
import functools
import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from memopt_core.errors import ConfigError, DataError
from memopt_core.evaluation import causal_lm
from memopt_core.evaluation.causal_lm import (SENTIMENT_PROMPT, continuation_log_probs, greedy_generate,
                                              measure_latency, zero_shot_sentiment)
from memopt_core.evaluation.progressive import evaluate_causal_lm
from memopt_core.evaluation.stats import kl_exact, kl_top_k, wilson_interval
from memopt_core.loading import bundled
from tiny_models import greedy_windows, make_tiny_llama, perturbed_copy

VOCAB = 320


def byte_tokenizer():
    """A byte-level BPE tokenizer without merges (258 ids), built offline like GPT-2's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>"] + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


@pytest.fixture(scope="module")
def model():
    return make_tiny_llama(vocab_size=VOCAB)


@pytest.fixture(scope="module")
def perturbed(model):
    return perturbed_copy(model)


@pytest.fixture(scope="module")
def windows(model):
    """5 windows of 24 tokens: 12 random, then 12 greedy ones so top-1 accuracy is far from 0."""
    return greedy_windows(model, 5, 12, vocab_size=VOCAB)


def direct_log_probs(model, windows):
    """[n * (seq - 1), V] float32 log-probs and [n * (seq - 1)] targets, one plain forward."""
    with torch.inference_mode():
        logits = model(windows).logits[:, :-1].float()
    return logits.log_softmax(-1).reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)


@pytest.mark.parametrize("batch_size", [None, 1, 2])
def test_perplexity_and_accuracy_match_direct_computation(model, windows, batch_size):
    metrics, _ = evaluate_causal_lm(model, windows, batch_size=batch_size)
    with torch.inference_mode():
        logits = model(windows).logits[:, :-1]
    targets = windows[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
    accuracy = (logits.argmax(-1) == targets).float().mean().item()
    assert metrics.tokens == 5 * 23 and metrics.windows == 5 and metrics.seq_len == 24
    assert metrics.mean_nll == pytest.approx(nll.item(), rel=1e-5)
    assert metrics.perplexity == pytest.approx(math.exp(nll.item()), rel=1e-5)
    assert metrics.top1_accuracy == pytest.approx(accuracy) and accuracy > 0.3
    assert not metrics.diverged and metrics.kl_divergence is None


def test_bf16_model_is_scored_in_float32(model, windows):
    half = copy.deepcopy(model).to(torch.bfloat16)
    metrics, _ = evaluate_causal_lm(half, windows)
    log_probs, targets = direct_log_probs(half, windows)
    nll = -log_probs.gather(-1, targets[:, None]).mean().item()
    assert metrics.perplexity == pytest.approx(math.exp(nll), rel=1e-5)


@pytest.mark.parametrize("top_k", [None, 8])
def test_model_against_itself_has_zero_kl_and_full_agreement(model, windows, top_k):
    _, reference = evaluate_causal_lm(model, windows, kl_top_k=top_k)
    metrics, _ = evaluate_causal_lm(model, windows, reference=reference)
    assert metrics.kl_divergence == pytest.approx(0.0, abs=1e-6)
    assert metrics.top1_agreement == 1.0
    assert metrics.kl_method == ("exact" if top_k is None else "top-8 + rest bucket")


def test_exact_kl_and_agreement_match_kl_div(model, perturbed, windows):
    _, reference = evaluate_causal_lm(model, windows, kl_top_k=None)
    metrics, _ = evaluate_causal_lm(perturbed, windows, reference=reference, batch_size=2)
    p_log, _ = direct_log_probs(model, windows)
    q_log, _ = direct_log_probs(perturbed, windows)
    expected = F.kl_div(q_log, p_log, log_target=True, reduction="batchmean").item()
    agreement = (p_log.argmax(-1) == q_log.argmax(-1)).float().mean().item()
    assert expected > 1e-3
    assert metrics.kl_divergence == pytest.approx(expected, rel=1e-4)
    assert metrics.top1_agreement == pytest.approx(agreement) and agreement < 1.0
    assert metrics.kl_method == "exact"


def test_top_k_bucket_kl_is_a_lower_bound_that_tightens_with_k(model, perturbed, windows):
    _, exact_ref = evaluate_causal_lm(model, windows, kl_top_k=None)
    exact = evaluate_causal_lm(perturbed, windows, reference=exact_ref)[0].kl_divergence
    bounds = []
    for k in (1, 8, 64, VOCAB):
        _, reference = evaluate_causal_lm(model, windows, kl_top_k=k)
        bounds.append(evaluate_causal_lm(perturbed, windows, reference=reference)[0].kl_divergence)
    assert all(b <= exact * (1 + 1e-5) for b in bounds)
    assert all(a <= b * (1 + 1e-5) for a, b in zip(bounds, bounds[1:]))  # refining buckets raises KL
    assert bounds[0] < 0.5 * exact  # one bucket loses a lot ...
    assert bounds[-1] == pytest.approx(exact, rel=1e-4)  # ... and an empty rest bucket nothing


def test_kl_helpers_against_hand_values():
    p = torch.tensor([[0.5, 0.3, 0.2]]).log()
    q = torch.tensor([[0.2, 0.5, 0.3]]).log()
    exact = 0.5 * math.log(0.5 / 0.2) + 0.3 * math.log(0.3 / 0.5) + 0.2 * math.log(0.2 / 0.3)
    bucket = 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8)  # top-1 {0}, rest {1, 2}
    assert kl_exact(p, q).item() == pytest.approx(exact, rel=1e-6)
    top = kl_top_k(torch.tensor([[0]]), p[:, :1], torch.tensor([0.5]).log(), q)
    assert top.item() == pytest.approx(bucket, rel=1e-6)
    zero_mass = torch.tensor([[1.0, 0.0, 0.0]]).log()  # 0 * log 0 counts as 0
    assert kl_exact(zero_mass, q).item() == pytest.approx(math.log(1 / 0.2), rel=1e-6)


def test_nan_weights_report_divergence_instead_of_raising(model, windows):
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.model.layers[0].self_attn.q_proj.weight.fill_(float("nan"))
    _, reference = evaluate_causal_lm(model, windows)
    metrics, broken_ref = evaluate_causal_lm(broken, windows, reference=reference, batch_size=2)
    assert metrics.diverged and metrics.perplexity == float("inf")
    assert "NaN" in metrics.reason and metrics.kl_divergence == float("inf")
    assert math.isnan(metrics.top1_accuracy) and metrics.tokens == 5 * 23
    with pytest.raises(DataError, match="diverged"):
        evaluate_causal_lm(model, windows, reference=broken_ref)


def test_reference_from_other_windows_is_refused(model, windows):
    _, reference = evaluate_causal_lm(model, windows[:2])
    with pytest.raises(DataError, match="same windows"):
        evaluate_causal_lm(model, windows[2:4], reference=reference)
    with pytest.raises(DataError, match="seq_len"):
        evaluate_causal_lm(model, windows[0])
    with pytest.raises(ConfigError, match="kl_top_k 0"):
        evaluate_causal_lm(model, windows, kl_top_k=0)


def unpadded_score(model, tokenizer, prompt, continuation):
    """Sum of the continuation's token log-probs, one unpadded sequence at a time."""
    p = tokenizer(prompt)["input_ids"]
    c = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    with torch.inference_mode():
        log_probs = model(ids).logits[0, :-1].float().log_softmax(-1)
    return sum(log_probs[len(p) - 1 + i, tok].item() for i, tok in enumerate(c))


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_continuation_scores_match_unpadded_sums(model, padding_side):
    tokenizer = byte_tokenizer()
    tokenizer.padding_side = padding_side
    prompts = ["Hi", "A much longer prompt, with more tokens.", "Mid length text"]
    continuations = [" yes", " no way"]  # 4 and 7 tokens: multi-token, unequal lengths
    scores = continuation_log_probs(model, tokenizer, prompts, continuations, batch_size=4)
    expected = torch.tensor([[unpadded_score(model, tokenizer, p, c) for c in continuations] for p in prompts])
    assert scores.shape == (3, 2)
    torch.testing.assert_close(scores.float(), expected, rtol=0, atol=1e-4)


def test_zero_shot_sentiment_counts_the_higher_label(model):
    tokenizer = byte_tokenizer()
    sentences = [("great fun", 1), ("dull and slow", 0), ("a masterpiece", 1), ("awful", 0), ("fine", 1),
                 ("not good at all", 0), ("loved it", 1)]
    result = zero_shot_sentiment(model, tokenizer, sentences, batch_size=5)
    correct = 0
    for text, label in sentences:
        prompt = SENTIMENT_PROMPT.format(text=text)
        positive = unpadded_score(model, tokenizer, prompt, " positive")
        negative = unpadded_score(model, tokenizer, prompt, " negative")
        correct += int((positive > negative) == bool(label))
    assert (result.correct, result.n) == (correct, 7)
    assert result.accuracy == pytest.approx(correct / 7)
    assert (result.ci_low, result.ci_high) == pytest.approx(wilson_interval(correct, 7))
    assert "Sentiment (positive or negative):" in result.method
    with pytest.raises(DataError):
        zero_shot_sentiment(model, tokenizer, [])


def test_greedy_generate_matches_an_argmax_loop(model):
    tokenizer = byte_tokenizer()
    text = greedy_generate(model, tokenizer, "The capital of France is", 6)
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    new = []
    with torch.inference_mode():
        for _ in range(6):
            token = model(ids).logits[0, -1].argmax().item()
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    assert text == tokenizer.decode(new, skip_special_tokens=True)
    assert greedy_generate(model, tokenizer, "The capital of France is", 6) == text
    assert greedy_generate(model, tokenizer, "anything", 0) == ""


def test_measure_latency_reports_per_window_figures(model, windows):
    result = measure_latency(model, windows[:2], repeats=1)
    assert set(result) == {"mean_ms", "std_ms", "device"}
    assert result["device"] == "cpu" and result["mean_ms"] > 0 and result["std_ms"] == 0.0


def test_measure_latency_is_mean_and_sample_spread_of_the_timed_repeats(model, windows, monkeypatch):
    # A clock that advances 10, 20 then 60 ms across the three timed repeats of two windows each.
    ticks = iter([0.0, 0.010, 1.0, 1.020, 2.0, 2.060])
    monkeypatch.setattr(causal_lm.time, "perf_counter", lambda: next(ticks))
    result = measure_latency(model, windows[:2], repeats=3)
    per_window = [5.0, 10.0, 30.0]  # ms: each repeat's time over its two windows
    assert result["mean_ms"] == pytest.approx(15.0)
    assert result["std_ms"] == pytest.approx(statistics.stdev(per_window))


def test_single_token_labels_score_each_sentence_in_one_sequence(monkeypatch):
    """SmolLM2's tokenizer has ' negative' and ' positive' as one token each: one forward row per
    sentence (not one per label), logits kept at one position, the same scores as unpadded sums."""
    tokenizer = AutoTokenizer.from_pretrained(bundled.smollm2_tokenizer_folder())
    model = make_tiny_llama(vocab_size=len(tokenizer))
    sentences = [("a gripping, funny film", 1), ("tedious", 0), ("I would not watch it again, ever", 0)]
    rows, kept = [], []
    forward = model.forward

    @functools.wraps(forward)  # keeps the signature, so the scorer still sees ``logits_to_keep``
    def spy(*args, **kwargs):
        rows.append(kwargs["input_ids"].shape[0])
        kept.append(tuple(kwargs["logits_to_keep"].shape))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    scores = causal_lm.zero_shot_scores(model, tokenizer, sentences, batch_size=2)
    monkeypatch.setattr(model, "forward", forward)
    assert rows == [2, 1] and kept == [(2, 1), (1, 1)]
    prompts = [SENTIMENT_PROMPT.format(text=text) for text, _ in sentences]
    expected = torch.tensor([[unpadded_score(model, tokenizer, p, c) for c in (" negative", " positive")]
                             for p in prompts])
    torch.testing.assert_close(scores.float(), expected, rtol=0, atol=1e-4)
