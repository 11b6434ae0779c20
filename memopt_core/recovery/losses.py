"""Distillation losses (pure tensor functions; inputs are not changed)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def kl_to_teacher(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean over positions of KL(teacher || student) of the next-token distributions.

    ``student_logits``, ``teacher_logits``: ``[..., vocab]`` (any float dtype; softmax in float32).
    The teacher's side carries no gradient. Returns a scalar."""
    student = student_logits.float().log_softmax(-1).flatten(0, -2)  # [N, V]
    teacher = teacher_logits.detach().float().log_softmax(-1).flatten(0, -2)  # [N, V]
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean")


def next_token_loss(logits: Tensor, ids: Tensor) -> Tensor:
    """Mean NLL of ``ids [B, S]``'s next tokens under ``logits [B, S, V]`` (the last position predicts nothing)."""
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].reshape(-1))


def pooled_embeddings(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean over the attention mask of ``hidden [B, S, H]``, L2-normalised -> ``[B, H]`` float32
    (the all-MiniLM-L6-v2 recipe, as ``evaluation.encoder.sentence_embeddings``), differentiable."""
    mask = attention_mask[..., None].float()  # [B, S, 1]
    mean = (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return F.normalize(mean, dim=-1)


def cosine_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """1 - mean cosine similarity of embeddings ``[B, H]`` (teacher side detached)."""
    return 1.0 - F.cosine_similarity(student.float(), teacher.detach().float(), dim=-1).mean()
