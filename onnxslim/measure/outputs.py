"""How close a candidate's outputs are to the reference's: streaming statistics per output.

State is a handful of sums, so any number of batches costs the same memory,
and two comparisons of disjoint data merge exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from onnxslim.errors import DataError


def looks_like_class_scores(array: np.ndarray) -> bool:
    """(batch, classes) or (batch, steps, classes) floats: where top-1 agreement means something."""
    return array.dtype.kind == "f" and array.ndim in (2, 3) and array.shape[-1] >= 2


@dataclass
class OutputComparison:
    """Running sums comparing one output of a candidate with the reference's, batch by batch; ``add`` folds a batch in."""

    name: str
    elements: int = 0
    batches: int = 0
    dot: float = 0.0
    ref_sq: float = 0.0
    cand_sq: float = 0.0
    err_sq: float = 0.0
    err_abs: float = 0.0
    max_abs: float = 0.0
    ref_sum: float = 0.0
    exact: int = 0
    top1_match: int = 0
    top1_total: int = 0
    min_batch_cosine: float = 1.0
    nonfinite_candidate: int = 0

    def add(self, reference: np.ndarray, candidate: np.ndarray, source: str = "") -> None:
        if reference.shape != candidate.shape:
            raise DataError(
                f"{source}: output '{self.name}' has shape {tuple(candidate.shape)} in the candidate, "
                f"{tuple(reference.shape)} in the reference"
            )
        ref = np.asarray(reference, dtype=np.float64).ravel()
        cand = np.asarray(candidate, dtype=np.float64).ravel()
        finite = np.isfinite(cand)
        self.nonfinite_candidate += int(cand.size - finite.sum())
        cand = np.where(finite, cand, 0.0)
        diff = ref - cand
        dot = float(ref @ cand)
        ref_sq = float(ref @ ref)
        cand_sq = float(cand @ cand)
        self.elements += ref.size
        self.batches += 1
        self.dot += dot
        self.ref_sq += ref_sq
        self.cand_sq += cand_sq
        self.err_sq += float(diff @ diff)
        self.err_abs += float(np.abs(diff).sum())
        self.max_abs = max(self.max_abs, float(np.abs(diff).max()) if diff.size else 0.0)
        self.ref_sum += float(ref.sum())
        self.exact += int((np.asarray(reference) == np.asarray(candidate)).sum())
        self.min_batch_cosine = min(self.min_batch_cosine, _cosine(dot, ref_sq, cand_sq))
        if looks_like_class_scores(reference):
            ref_top = np.argmax(reference, axis=-1)
            cand_top = np.argmax(candidate, axis=-1)
            self.top1_match += int((ref_top == cand_top).sum())
            self.top1_total += int(ref_top.size)

    @property
    def cosine(self) -> float:
        return _cosine(self.dot, self.ref_sq, self.cand_sq)

    @property
    def mean_abs(self) -> float:
        return self.err_abs / self.elements if self.elements else 0.0

    @property
    def snr_db(self) -> float:
        if self.err_sq == 0.0:
            return math.inf
        if self.ref_sq == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.ref_sq / self.err_sq)

    @property
    def top1(self) -> float | None:
        return self.top1_match / self.top1_total if self.top1_total else None

    @property
    def reference_std(self) -> float:
        if not self.elements:
            return 0.0
        mean = self.ref_sum / self.elements
        return math.sqrt(max(self.ref_sq / self.elements - mean * mean, 0.0))

    @property
    def degenerate(self) -> bool:
        """The reference output barely varies, so closeness to it proves little."""
        if not self.elements:
            return True
        mean = abs(self.ref_sum / self.elements)
        return self.reference_std <= 1e-6 * max(1.0, mean)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "elements": self.elements,
            "batches": self.batches,
            "max_abs_error": self.max_abs,
            "mean_abs_error": self.mean_abs,
            "cosine": self.cosine,
            "min_batch_cosine": self.min_batch_cosine,
            "snr_db": _json_float(self.snr_db),
            "exact_match": self.exact / self.elements if self.elements else None,
            "top1_agreement": self.top1,
            "reference_std": self.reference_std,
            "degenerate_reference": self.degenerate,
            "nonfinite_candidate_values": self.nonfinite_candidate,
        }


def _cosine(dot: float, a: float, b: float) -> float:
    if a == 0.0 and b == 0.0:
        return 1.0
    if a == 0.0 or b == 0.0:
        return 0.0
    return max(-1.0, min(1.0, dot / math.sqrt(a * b)))


def _json_float(value: float) -> float | str:
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value
