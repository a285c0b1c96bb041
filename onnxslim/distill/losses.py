"""What the student is trained to match, shaped by each output: distributions by KL, everything else by cosine and scaled MSE.

The kind of an output is read off the teacher's values once: probabilities
(non-negative, summing to 1 over the last axis) are matched by KL divergence;
class scores of shape (batch, classes) that are not probabilities are logits,
matched by KL at a temperature; maps, embeddings and features by 1 - cosine
plus the mean squared error over the teacher's variance. Every term is divided
by its value on the first batch, so each starts at 1 and none dominates.

Where the batch has a padding mask (``attention_mask``) and a tensor starts with
its (batch, tokens) shape, only the rows of real tokens are compared, token by
token: what a transformer computes at padding positions is read by nothing (a
pooled embedding masks it out), and the held-out score leaves it out as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onnxslim.measure.fidelity import per_token

PROBABILITIES, LOGITS, VALUES = "probabilities", "logits", "values"


def output_kind(teacher_values: Sequence[np.ndarray]) -> str:
    """How to compare one output, from the teacher's values on a few batches."""
    array = np.concatenate([np.asarray(v, np.float64).reshape(-1, v.shape[-1]) for v in teacher_values if v.ndim >= 1 and v.size])
    if array.shape[-1] >= 2 and array.min() >= 0.0 and np.allclose(array.sum(axis=-1), 1.0, atol=1e-3):
        return PROBABILITIES
    if all(v.ndim == 2 for v in teacher_values) and array.shape[-1] >= 2:
        return LOGITS
    return VALUES


@dataclass
class Term:
    """One output or feature the loss compares, its kind and its scale (the first batch's value)."""

    name: str
    kind: str
    feature: bool = False
    scale: float | None = None


def term_loss(term: Term, student, teacher, temperature: float, real_tokens=None):
    """The unscaled loss of one term (torch tensors); ``real_tokens``: a (batch, tokens) bool tensor, or None."""
    import torch

    student, teacher = student.float(), teacher.float()
    if real_tokens is not None and per_token(student, real_tokens):
        student, teacher = student[real_tokens], teacher[real_tokens]  # (real tokens, ...): each token a row
    if term.kind == PROBABILITIES:
        target = teacher.clamp_min(1e-8)
        return (target * (target.log() - student.clamp_min(1e-8).log())).sum(-1).mean()
    if term.kind == LOGITS:
        target = torch.softmax(teacher / temperature, -1)
        return torch.nn.functional.kl_div(torch.log_softmax(student / temperature, -1), target, reduction="batchmean") * temperature**2
    flat_s, flat_t = student.reshape(student.shape[0], -1), teacher.reshape(teacher.shape[0], -1)
    cosine = torch.nn.functional.cosine_similarity(flat_s, flat_t, dim=1, eps=1e-8).mean()
    return (1.0 - cosine) + ((flat_s - flat_t) ** 2).mean() / (flat_t.var() + 1e-8)


def total_loss(terms: list[Term], students: list, teachers: list, temperature: float, real_tokens=None):
    """The mean of the output terms plus the mean of the feature terms, each scaled to start at 1 (``real_tokens``: see
    :func:`term_loss`)."""
    outputs, features = [], []
    for term, student, teacher in zip(terms, students, teachers):
        value = term_loss(term, student, teacher, temperature, real_tokens)
        if term.scale is None:
            term.scale = max(float(value.detach()), 1e-4)  # a student that starts equal to the teacher is not blown up
        (features if term.feature else outputs).append(value / term.scale)
    loss = sum(outputs) / max(1, len(outputs))
    if features:
        loss = loss + sum(features) / len(features)
    return loss
