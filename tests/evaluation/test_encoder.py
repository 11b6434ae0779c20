"""Encoder and sequence-classifier evaluation, and the Wilson interval, against hand computations."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from memopt_core.errors import DataError
from memopt_core.evaluation.encoder import (classifier_accuracy, classifier_predictions, encoder_metrics, fit_probe,
                                            sentence_embeddings, sentiment_classes)
from memopt_core.evaluation.stats import AccuracyResult, wilson_interval
from tiny_models import make_tiny_bert

WORDS = "the a film movie was is great awful good bad fun dull plot acting loved hated it not very slow".split()
SENTENCES = ["the film was great", "awful", "the plot was very slow and dull", "loved it",
             "not good", "the acting is fun", "a very bad movie", "great fun"]
LABELS = [1, 0, 0, 1, 0, 1, 0, 1]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import BertTokenizerFast

    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    return BertTokenizerFast(vocab_file=str(path))


@pytest.fixture(scope="module")
def bert():
    return make_tiny_bert()


def perturb(model, scale=0.05, seed=1):
    other = copy.deepcopy(model)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in other.named_parameters():
            if "encoder.layer" in name and param.dim() == 2:
                param.add_(scale * torch.randn_like(param))
    return other


def tiny_classifier(id2label):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(3)
    config = BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        vocab_size=256, max_position_embeddings=128, num_labels=len(id2label), id2label=id2label,
                        label2id={v: k for k, v in id2label.items()})
    return BertForSequenceClassification(config).eval()


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_embeddings_are_masked_means_normalised(bert, tokenizer, padding_side):
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.padding_side = padding_side  # BERT's absolute positions need right padding whatever is set
    embeddings = sentence_embeddings(bert, tokenizer, SENTENCES, batch_size=3)
    assert embeddings.shape == (len(SENTENCES), 64)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(len(SENTENCES)))
    lengths = {len(tokenizer(s)["input_ids"]) for s in SENTENCES}
    assert len(lengths) > 2  # batches really were padded
    for row, sentence in enumerate(SENTENCES):  # one sentence alone: no padding at all
        ids = tokenizer(sentence, return_tensors="pt")
        with torch.inference_mode():
            hidden = bert(**ids).last_hidden_state[0]  # [S, H]
        expected = hidden.mean(0) / hidden.mean(0).norm()
        torch.testing.assert_close(embeddings[row], expected, atol=1e-5, rtol=1e-4)


def test_cosine_is_one_for_the_model_and_lower_for_a_perturbed_copy(bert, tokenizer):
    reference = sentence_embeddings(bert, tokenizer, SENTENCES)
    probe = fit_probe(reference, LABELS)
    own = encoder_metrics(reference, sentence_embeddings(bert, tokenizer, SENTENCES), LABELS, probe)
    assert own.cosine_similarity == pytest.approx(1.0, abs=1e-6)
    other = sentence_embeddings(perturb(bert, scale=0.2), tokenizer, SENTENCES)
    metrics = encoder_metrics(reference, other, LABELS, probe)
    expected = F.cosine_similarity(reference, other).mean().item()
    assert metrics.cosine_similarity == pytest.approx(expected, rel=1e-6) and expected < 0.999
    assert metrics.n_test == 4


def test_wilson_interval_against_the_closed_formula():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    z = 1.959963984540054
    for correct, n in [(0, 10), (5, 10), (10, 10), (150, 200), (3, 7)]:
        # the textbook form: (x + z²/2 ± z sqrt(x(n-x)/n + z²/4)) / (n + z²)
        half = z * math.sqrt(correct * (n - correct) / n + z * z / 4)
        expected = ((correct + z * z / 2 - half) / (n + z * z), (correct + z * z / 2 + half) / (n + z * z))
        assert wilson_interval(correct, n) == pytest.approx(expected, abs=1e-12)
    assert wilson_interval(150, 200) == pytest.approx((0.68566, 0.80492), abs=1e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    result = AccuracyResult.from_counts(150, 200, "test")
    assert (result.accuracy, result.ci_low) == (0.75, pytest.approx(0.68566, abs=1e-5))


def test_probe_separates_linearly_separable_embeddings():
    generator = torch.Generator().manual_seed(0)
    labels = [i % 2 for i in range(60)]
    direction = F.normalize(torch.randn(32, generator=generator), dim=0)
    points = 0.3 * torch.randn(60, 32, generator=generator)
    points += torch.tensor([1.0 if y else -1.0 for y in labels])[:, None] * direction
    embeddings = F.normalize(points, dim=-1)
    assert torch.equal((embeddings @ direction > 0).long(), torch.tensor(labels))  # separable by construction
    probe = fit_probe(embeddings, labels, seed=0)
    metrics = encoder_metrics(embeddings, embeddings, labels, probe)
    assert metrics.accuracy == 1.0 and metrics.n_test == 30 and metrics.correct == 30
    assert sorted(np.concatenate([probe.train_index, probe.test_index]).tolist()) == list(range(60))
    assert np.asarray(labels)[probe.test_index].sum() == 15  # stratified
    assert np.array_equal(fit_probe(embeddings, labels, seed=0).test_index, probe.test_index)
    with pytest.raises(DataError):
        fit_probe(embeddings[:3], [0, 1, 1])


def head_along(model, tokenizer, angle=0.0):
    """Point a random classifier's head along a principal direction of its pooled outputs on
    SENTENCES (rotated by ``angle`` towards the second one), so its predictions split the
    sentences rather than all landing in one class; a third class, if any, wins every raw argmax."""
    encoded = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = model.bert(**encoded).pooler_output  # [n, H]
        mean = pooled.mean(0)
        vh = torch.linalg.svd(pooled - mean).Vh
        direction = math.cos(angle) * vh[0] + math.sin(angle) * vh[1]
        weight = torch.zeros_like(model.classifier.weight)
        weight[0], weight[-1] = -10 * direction, 10 * direction
        model.classifier.weight.copy_(weight)
        bias = -(weight @ mean)
        if len(bias) == 3:
            bias[1] = 100.0  # the neutral class
        model.classifier.bias.copy_(bias)
    return model


def direct_logits(model, tokenizer, texts):
    with torch.inference_mode():
        return torch.stack([model(**tokenizer(text, return_tensors="pt")).logits[0] for text in texts])


def test_classifier_accuracy_maps_named_labels(tokenizer):
    model = head_along(tiny_classifier({0: "NEGATIVE", 1: "POSITIVE"}), tokenizer)
    result = classifier_accuracy(model, tokenizer, list(zip(SENTENCES, LABELS)), batch_size=3)
    predictions = direct_logits(model, tokenizer, SENTENCES).argmax(-1).tolist()
    correct = sum(int(p == y) for p, y in zip(predictions, LABELS))
    assert len(set(predictions)) == 2 and 0 < correct < len(LABELS)
    assert (result.correct, result.n) == (correct, len(SENTENCES))
    assert "against the labels" in result.method


def test_classifier_accuracy_ignores_classes_without_polarity(tokenizer):
    model = head_along(tiny_classifier({0: "negative", 1: "neutral", 2: "positive"}), tokenizer)
    logits = direct_logits(model, tokenizer, SENTENCES)
    assert logits.argmax(-1).tolist() == [1] * len(SENTENCES)  # neutral wins every raw argmax
    predictions = (logits[:, 2] > logits[:, 0]).long().tolist()
    correct = sum(int(p == y) for p, y in zip(predictions, LABELS))
    result = classifier_accuracy(model, tokenizer, list(zip(SENTENCES, LABELS)))
    assert result.correct == correct and 0 < correct


def test_classifier_without_sentiment_names_reports_agreement(tokenizer):
    original = head_along(tiny_classifier({0: "LABEL_0", 1: "LABEL_1"}), tokenizer)
    pairs = list(zip(SENTENCES, LABELS))
    reference = classifier_predictions(original, tokenizer, SENTENCES, batch_size=3)
    assert reference.tolist() == direct_logits(original, tokenizer, SENTENCES).argmax(-1).tolist()
    itself = classifier_accuracy(original, tokenizer, pairs)
    assert itself.accuracy == 1.0 and "this is the original" in itself.method
    other = head_along(copy.deepcopy(original), tokenizer, angle=1.0)
    result = classifier_accuracy(other, tokenizer, pairs, reference_predictions=reference)
    other_predictions = direct_logits(other, tokenizer, SENTENCES).argmax(-1)
    agree = int((other_predictions == reference).sum())
    assert result.correct == agree and 0 < agree < len(SENTENCES)
    assert "agreement with the original" in result.method
    with pytest.raises(DataError, match="pair up"):
        classifier_accuracy(other, tokenizer, pairs, reference_predictions=reference[:3])


def test_sentiment_classes_reads_names_case_insensitively():
    assert sentiment_classes({0: "neg", 1: "Neutral", 2: "Positive"}) == {0: 0, 2: 1}
    assert sentiment_classes({0: "LABEL_0", 1: "LABEL_1"}) is None
    assert sentiment_classes({0: "positive"}) is None
