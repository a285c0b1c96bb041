"""How close a candidate's outputs are to the reference's: streaming statistics per output.

State is a handful of sums, so any number of batches costs the same memory,
and two comparisons of disjoint data merge exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from onnxslim.errors import DataError

UNIT_NORM_TOLERANCE = 1e-3
MIN_EMBEDDING_WIDTH = 8


def looks_like_embeddings(array: np.ndarray) -> bool:
    """(batch, features) floats, at least MIN_EMBEDDING_WIDTH of them, every row of length 1: an L2-normalized embedding
    (a sentence's, a speaker's, a face's). Its users compare rows by their cosine; an argmax over its features means nothing.

    Rows that are distributions are class probabilities, not embeddings: a confident classifier's softmax is nearly one-hot,
    and so of length 1 too.
    """
    if array.dtype.kind != "f" or array.ndim != 2 or array.shape[-1] < MIN_EMBEDDING_WIDTH or not array.size:
        return False
    norms = np.linalg.norm(array.astype(np.float64), axis=-1)
    return bool(np.all(np.abs(norms - 1.0) <= UNIT_NORM_TOLERANCE)) and not _probability_rows(array)


def _as_codes(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Text outputs (a classifier's string labels) as integer codes shared by both, from 1, so that they are compared as
    integer labels are (exact agreement); numbers pass unchanged."""
    if reference.dtype.kind not in "OSU" and candidate.dtype.kind not in "OSU":
        return reference, candidate
    _, codes = np.unique(np.concatenate([reference.astype(str).ravel(), candidate.astype(str).ravel()]), return_inverse=True)
    codes = codes.astype(np.int64) + 1
    return codes[: reference.size].reshape(reference.shape), codes[reference.size :].reshape(candidate.shape)


def _probability_rows(array: np.ndarray) -> bool:
    """Whether every row (last axis) is a distribution: non-negative, summing to 1."""
    return bool(np.all(array >= 0) and np.allclose(array.sum(axis=-1, dtype=np.float64), 1.0, atol=1e-3))


def looks_like_class_scores(array: np.ndarray) -> bool:
    """Where top-1 agreement means something: (batch, classes) floats that are not unit-length embeddings, or
    (batch, steps, classes) probabilities.

    A 3-D output must sum to 1 over its last axis: otherwise that axis may hold
    anchors or positions (a detector's (1, 84, 8400)), where an argmax means nothing.
    """
    if array.dtype.kind != "f" or array.ndim not in (2, 3) or array.shape[-1] < 2:
        return False
    if array.ndim == 2:
        return not looks_like_embeddings(array)
    return _probability_rows(array)


MASK_THRESHOLD = 0.5
# A (batch, channels, n) or (batch, n, channels) output where a few channels dwarf the rest is compared with every
# channel brought to the same scale: a detector's decoded boxes (hundreds of pixels) next to its class scores (at
# most 1) would otherwise hide the scores from the cosine entirely. "A few dwarf the rest": the largest channel's
# RMS is SCALE_SPREAD times the smallest's, and at most DOMINANT_SHARE of the channels hold 99% of the energy.
SCALE_SPREAD = 1000.0
DOMINANT_SHARE = 0.25
MAX_BALANCED_CHANNELS = 1024


# float32 rounding puts a sigmoid's or softmax's largest values a few units in the last place above 1 (onnxruntime's
# Sigmoid gives 1.0000001): a probability stays one within this slack
UNIT_SLACK = 1e-6


def in_unit_interval(low, high):
    """Whether values whose least is ``low`` and largest ``high`` lie in [0, 1], up to float rounding (UNIT_SLACK);
    elementwise for arrays of minima and maxima."""
    inside = (np.asarray(low) >= -UNIT_SLACK) & (np.asarray(high) <= 1.0 + UNIT_SLACK)
    return bool(inside) if inside.ndim == 0 else inside


def looks_like_probability_scores(array: np.ndarray) -> bool:
    """Where the decision at 0.5 means something: one probability per sample or step in [0, 1], shaped (n,) or (n, 1)
    (a binary classifier's sigmoid, a voice-activity model's speech probability per window)."""
    if array.dtype.kind != "f" or not array.size or not (array.ndim == 1 or array.ndim == 2 and array.shape[-1] == 1):
        return False
    return in_unit_interval(array.min(), array.max())


# A (batch, items, k) output with fewer columns than this is k values per item (a table cell's 8 corner coordinates
# in [0, 1], 10 landmark coordinates), not an image: its "pixels" above 0.5 mean nothing.
MIN_MAP_WIDTH_3D = 16


def looks_like_probability_map(array: np.ndarray) -> bool:
    """Where mask IoU means something: per-pixel probabilities, (batch, channels, H, W) in [0, 1] with H, W >= 8, or
    (batch, H, W) with W >= MIN_MAP_WIDTH_3D too.

    A segmentation or text-detection head; a map whose last axis sums to 1 is class scores per position instead.
    """
    if array.dtype.kind != "f" or array.ndim not in (3, 4) or min(array.shape[-2:]) < 8 or looks_like_class_scores(array):
        return False
    if array.ndim == 3 and array.shape[-1] < MIN_MAP_WIDTH_3D:
        return False
    return bool(array.size) and in_unit_interval(array.min(), array.max())


MAX_LABELS = 1024  # an integer map holding values in [0, MAX_LABELS) can be class labels; larger ones are indices or counts


def looks_like_label_map(array: np.ndarray) -> bool:
    """Where per-class IoU means something: a segmentation model's argmax, integer (or boolean) labels over an image,
    (batch, [1,] H, W) with H, W >= 8 and every value in [0, MAX_LABELS). A label per sample, a sequence of token ids or
    a list of indices has fewer than two such axes."""
    if array.dtype.kind not in "iub" or array.ndim not in (3, 4) or min(array.shape[-2:]) < 8 or not array.size:
        return False
    if array.ndim == 4 and array.shape[1] != 1:
        return False
    return bool(array.min() >= 0 and array.max() < MAX_LABELS)


# A detector's (batch, anchors, 4 + scores [+ extras]) or (batch, 4 + scores [+ extras], anchors) output: box columns
# first (some value outside [0, 1]: pixels, offsets, log sizes), then a run of score columns in [0, 1] (objectness, class
# scores), then anything per detection (mask coefficients). Its boxes mean something only where a score says an object
# is there, and most anchors are background: compared over every anchor, the background's unread box values set the
# cosine. So scores are compared on every anchor and the other columns on the anchors where either model finds an
# object, and the cosine is the lowest of those. An object is found where the best score reaches DETECTION_SCORE
# (YOLOv8's class scores), or where the first score times the best of the others does (YOLOv5's and YOLOX's
# objectness times class: their class scores are high on background too, and those anchors would outnumber the
# objects); the output does not say which layout it has, so both are compared and the lower counts.
BOX_COLUMNS = 4
DETECTION_SCORE = 0.1
MIN_ANCHORS = 64
# fewer anchors than this with an object, over every compared batch, and a detector's comparison is mostly of background
# scores: each object lights up a handful of neighbouring anchors, so this is two or three objects
FEW_OBJECTS = 16


def detection_layout(array: np.ndarray) -> tuple[int, int, int] | None:
    """(axis of the columns, first score column, end of the score columns) when ``array`` looks like a detector's output, else None.

    Class probabilities per step have every column in [0, 1], so no box column: they are never taken for detections."""
    if array.dtype.kind != "f" or array.ndim != 3:
        return None
    for axis in (2, 1):
        columns, anchors = array.shape[axis], array.shape[3 - axis]
        if not BOX_COLUMNS + 1 <= columns <= MAX_BALANCED_CHANNELS or anchors < max(MIN_ANCHORS, 4 * columns):
            continue
        rows = np.moveaxis(array, axis, -1).reshape(-1, columns)
        in_unit = in_unit_interval(rows.min(axis=0), rows.max(axis=0))
        if in_unit[:BOX_COLUMNS].all() or not in_unit[BOX_COLUMNS]:
            continue
        end = BOX_COLUMNS
        while end < columns and in_unit[end]:
            end += 1
        return axis, BOX_COLUMNS, end
    return None


def finite_pairs(ref: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """The positions where both flat arrays are finite, and how many are not: (only the candidate's, only the reference's,
    both but different values: NaN vs Inf, +Inf vs -Inf). Statistics cover the finite pairs; the counts fail every gate."""
    ref_finite, cand_finite = np.isfinite(ref), np.isfinite(cand)
    if ref_finite.all() and cand_finite.all():
        return ref, cand, (0, 0, 0)
    both = ~ref_finite & ~cand_finite
    same = (np.isnan(ref) & np.isnan(cand)) | (ref == cand)
    counts = (int((ref_finite & ~cand_finite).sum()), int((~ref_finite & cand_finite).sum()), int((both & ~same).sum()))
    keep = ref_finite & cand_finite
    return ref[keep], cand[keep], counts


def _all_finite(array: np.ndarray) -> bool:
    return array.dtype.kind not in "fc" or bool(np.isfinite(array).all())


def zero_padded(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays zero-padded at the end of every axis to the larger length: how outputs whose length depends on the
    data (a decoder that stops at its end token, detections kept by a threshold) are compared. A step one model wrote
    and the other did not is compared with zeros, so it counts against the candidate in full."""
    shape = tuple(max(a, b) for a, b in zip(reference.shape, candidate.shape))

    def padded(array: np.ndarray) -> np.ndarray:
        return np.pad(array, [(0, n - m) for n, m in zip(shape, array.shape)]) if array.shape != shape else array

    return padded(reference), padded(candidate)


def _comparable(reference, candidate, what: str, source: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """The two arrays as compared (zero-padded where only their lengths differ), and whether they were padded; a
    different rank is a :class:`DataError` naming ``what`` (the tensor or output) and ``source`` (the batch)."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if reference.shape == candidate.shape:
        return reference, candidate, False
    if reference.ndim != candidate.ndim:
        raise DataError(f"{source}: {what} has shape {tuple(candidate.shape)} in the candidate, {tuple(reference.shape)} in the reference")
    return (*zero_padded(reference, candidate), True)


def _top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> tuple[int, int]:
    """Positions (every axis but the classes) where both arrays pick the same class, and positions either array has:
    a step only one model decoded is a disagreement, not a match against padding."""
    positions = math.prod(max(a, b) for a, b in zip(reference.shape[:-1], candidate.shape[:-1]))
    if reference.shape[-1] != candidate.shape[-1]:
        return 0, positions
    common = tuple(slice(0, min(a, b)) for a, b in zip(reference.shape[:-1], candidate.shape[:-1]))
    matches = int((np.argmax(reference[common], axis=-1) == np.argmax(candidate[common], axis=-1)).sum())
    return matches, positions


# An output whose values sit far from zero next to their spread (a quality score near 3 that varies by a point, a
# probability that rarely leaves 0.9): the cosine over raw values is mostly the agreement of the offset, and an error
# that moves every score by a third of its spread still reads 0.99. Where the reference's mean is OFFSET_RATIO times its
# standard deviation or more (the raw cosine's loss then is at most 1 / (1 + OFFSET_RATIO^2) of the loss measured on the
# variation), both are compared around the reference's mean: what is left is what tells one input from another.
OFFSET_RATIO = 2.0

RESAMPLED_BATCHES = 5  # fewer batches say too little about their spread to resample
# one batch holding more of an output's energy than this, among RESAMPLED_BATCHES or more, sets its cosine by itself
DOMINANT_BATCH_SHARE = 0.5
RESAMPLES = 2000
RANGE_CONFIDENCE = 0.9  # cosine_range: the central 90% of the resampled cosines
CHUNK = 1 << 15  # elements converted to float64 at a time: the buffers stay in cache and no large temporary is allocated


@dataclass
class TensorNoise:
    """Running error and signal power of one intermediate tensor: all a noise ranking reads, at a fraction of
    :class:`OutputComparison`'s cost (float32 sums: a ranking needs ratios, not the last digits)."""

    name: str
    err_sq: float = 0.0
    ref_sq: float = 0.0
    nonfinite_mismatches: int = 0

    def add(self, reference: np.ndarray, candidate: np.ndarray, source: str = "") -> None:
        reference, candidate, _ = _comparable(reference, candidate, f"tensor '{self.name}'", source)  # as OutputComparison compares them
        ref = np.asarray(reference, dtype=np.float32).ravel()
        cand = np.asarray(candidate, dtype=np.float32).ravel()
        if not (_all_finite(ref) and _all_finite(cand)):
            ref, cand, counts = finite_pairs(ref, cand)
            self.nonfinite_mismatches += sum(counts)
        diff = np.empty(min(ref.size, CHUNK), np.float32)
        for start in range(0, ref.size, CHUNK):  # see OutputComparison._add_sums
            r, c = ref[start : start + CHUNK], cand[start : start + CHUNK]
            d = np.subtract(r, c, out=diff[: r.size])
            self.err_sq += float(np.einsum("i,i->", d, d))
            self.ref_sq += float(np.einsum("i,i->", r, r))


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
    cand_sum: float = 0.0
    exact: int = 0
    integer_values: bool = False  # the reference gave integers or booleans (class labels, indices, counts, flags)
    top1_match: int = 0
    top1_total: int = 0
    # batches of (batch, k) scores that are not probabilities (rows not summing to 1): logits, or k regression scores
    unnormalized_score_rows: int = 0
    mask_intersection: int = 0  # pixels above MASK_THRESHOLD in both, on probability maps
    mask_union: int = 0
    mask_batches: int = 0
    # on integer label maps, per label value: pixels holding it in both, and in either
    label_intersections: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    label_unions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    label_batches: int = 0
    decisions_agreed: int = 0  # on probabilities per sample: values on the same side of MASK_THRESHOLD in both
    decision_batches: int = 0
    row_cosine_sum: float = 0.0  # on unit-length embeddings: the cosine of each row with the reference's, summed
    embedding_rows: int = 0
    embedding_batches: int = 0
    min_batch_cosine: float = 1.0
    padding_left_out: str = ""  # the input whose zeros marked the token rows left out of the comparison
    lengths_differed: int = 0  # batches whose two outputs differed in length along some axis (compared zero-padded)
    nonfinite_candidate: int = 0  # NaN/Inf in the candidate where the reference is finite
    nonfinite_reference: int = 0  # NaN/Inf in the reference where the candidate is finite
    nonfinite_disagreeing: int = 0  # both non-finite, but not the same value (NaN vs Inf, +Inf vs -Inf)
    # axis -> (3, channels) float64: per channel of that axis, the sums of ref * cand, ref^2 and cand^2
    channel_sums: dict[int, np.ndarray] = field(default_factory=dict)
    min_batch_balanced: dict[int, float] = field(default_factory=dict)  # axis -> the lowest balanced cosine of one batch
    # per batch: sums of ref * cand, ref^2, cand^2, ref and cand, and the count (for cosine_range, and around the mean)
    batch_sums: list[tuple[float, float, float, float, float, int]] = field(default_factory=list)
    batch_labels: list[str] = field(default_factory=list)  # where each batch came from (a file name), in order
    # a detector's output (detection_layout, the same in every batch): rows (scores on every anchor; the other columns
    # where the best score finds an object; where objectness times class does) x (ref * cand, ref^2, cand^2), and the counts
    detection: tuple[int, int, int] | None = None
    detection_sums: np.ndarray | None = None
    detection_batches: int = 0
    scored_anchors: int = 0
    object_anchors: int = 0
    min_batch_detection: float = 1.0
    # per gate (best score; objectness times class): anchors where both models find an object, and where either does
    found_both: list[int] = field(default_factory=lambda: [0, 0])
    found_either: list[int] = field(default_factory=lambda: [0, 0])

    def add(self, reference: np.ndarray, candidate: np.ndarray, source: str = "") -> None:
        reference, candidate = _as_codes(np.asarray(reference), np.asarray(candidate))
        unpadded = np.asarray(reference), np.asarray(candidate)
        self.integer_values = self.integer_values or unpadded[0].dtype.kind in "iub"
        reference, candidate, padded = _comparable(reference, candidate, f"output '{self.name}'", source)
        self.lengths_differed += padded
        ref, cand = np.asarray(reference).ravel(), np.asarray(candidate).ravel()
        if not (_all_finite(ref) and _all_finite(cand)):
            ref, cand, counts = finite_pairs(ref.astype(np.float64), cand.astype(np.float64))
            self.nonfinite_candidate += counts[0]
            self.nonfinite_reference += counts[1]
            self.nonfinite_disagreeing += counts[2]
        sums = self._add_sums(ref, cand)
        self.batch_sums.append((*sums, ref.size))
        self.batch_labels.append(source)
        dot, ref_sq, cand_sq = sums[:3]
        self.elements += ref.size
        self.batches += 1
        self.min_batch_cosine = min(self.min_batch_cosine, _cosine(dot, ref_sq, cand_sq))
        class_scores = looks_like_class_scores(unpadded[0])  # padding rows of zeros would no longer sum to 1
        if not self.nonfinite_mismatches:
            self._add_channel_sums(np.asarray(reference), np.asarray(candidate), class_scores)
            self._add_detection_sums(np.asarray(reference), np.asarray(candidate))
        if class_scores:
            matches, positions = _top1_agreement(*unpadded)
            self.top1_match += matches
            self.top1_total += positions
            if np.ndim(unpadded[0]) == 2 and not _probability_rows(np.asarray(unpadded[0])):
                self.unnormalized_score_rows += 1
        elif not padded and looks_like_embeddings(unpadded[0]) and np.asarray(unpadded[1]).dtype.kind == "f":
            a, b = (np.asarray(x, np.float64) for x in unpadded)
            norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
            self.row_cosine_sum += float(np.sum(np.einsum("ij,ij->i", a, b) / np.maximum(norms, 1e-30)))
            self.embedding_rows += a.shape[0]
            self.embedding_batches += 1
        elif looks_like_label_map(np.asarray(reference)) and looks_like_label_map(np.asarray(candidate)):
            self._add_label_counts(np.asarray(reference).ravel(), np.asarray(candidate).ravel())
        elif looks_like_probability_map(reference):
            ref_mask, cand_mask = reference > MASK_THRESHOLD, candidate > MASK_THRESHOLD
            self.mask_intersection += int((ref_mask & cand_mask).sum())
            self.mask_union += int((ref_mask | cand_mask).sum())
            self.mask_batches += 1
        elif looks_like_probability_scores(reference) and np.shape(reference) == np.shape(candidate):
            self.decisions_agreed += int(np.count_nonzero((reference > MASK_THRESHOLD) == (candidate > MASK_THRESHOLD)))
            self.decision_batches += 1

    def _add_label_counts(self, ref: np.ndarray, cand: np.ndarray) -> None:
        size = int(max(ref.max(), cand.max())) + 1
        both = np.bincount(ref[ref == cand].astype(np.int64), minlength=size)
        either = np.bincount(ref.astype(np.int64), minlength=size) + np.bincount(cand.astype(np.int64), minlength=size) - both
        grown = max(size, self.label_unions.size)
        self.label_intersections = np.pad(self.label_intersections, (0, grown - self.label_intersections.size)) + np.pad(both, (0, grown - size))
        self.label_unions = np.pad(self.label_unions, (0, grown - self.label_unions.size)) + np.pad(either, (0, grown - size))
        self.label_batches += 1

    def _add_sums(self, ref: np.ndarray, cand: np.ndarray) -> tuple[float, float, float, float, float]:
        """Fold two flat arrays into the running sums in float64, a chunk at a time (a model's outputs are often megabytes:
        whole-array float64 copies and differences cost more in fresh memory than the arithmetic); returns this batch's
        dot product, squared norms and sums."""
        dot = ref_sq = cand_sq = ref_sum = cand_sum = 0.0
        r, c, d = (np.empty(min(ref.size, CHUNK), np.float64) for _ in range(3))
        for start in range(0, ref.size, CHUNK):
            n = min(CHUNK, ref.size - start)
            rc, cc, dc = r[:n], c[:n], d[:n]
            np.copyto(rc, ref[start : start + n], casting="unsafe")
            np.copyto(cc, cand[start : start + n], casting="unsafe")
            dot += float(np.einsum("i,i->", rc, cc))  # numpy's own loop: BLAS would start threads that fight onnxruntime's
            ref_sq += float(np.einsum("i,i->", rc, rc))
            cand_sq += float(np.einsum("i,i->", cc, cc))
            ref_sum += float(rc.sum())
            cand_sum += float(cc.sum())
            self.exact += int(np.count_nonzero(rc == cc))
            np.subtract(rc, cc, out=dc)
            self.err_sq += float(np.einsum("i,i->", dc, dc))
            np.abs(dc, out=dc)
            self.err_abs += float(dc.sum())
            self.max_abs = max(self.max_abs, float(dc.max()))
        self.dot += dot
        self.ref_sq += ref_sq
        self.cand_sq += cand_sq
        self.ref_sum += ref_sum
        self.cand_sum += cand_sum
        return dot, ref_sq, cand_sq, ref_sum, cand_sum

    def _add_channel_sums(self, reference: np.ndarray, candidate: np.ndarray, class_scores: bool) -> None:
        """Per-channel sums along axis 1 and axis 2 of (batch, channels, n) / (batch, n, channels) outputs."""
        if reference.ndim != 3 or reference.dtype.kind != "f" or class_scores:
            return  # probabilities over classes per step: their scales differing is what they mean
        for axis in (1, 2):
            channels = reference.shape[axis]
            if not 2 <= channels <= MAX_BALANCED_CHANNELS:
                continue
            ref = np.moveaxis(reference, axis, 0).reshape(channels, -1).astype(np.float64)
            cand = np.moveaxis(candidate, axis, 0).reshape(channels, -1).astype(np.float64)
            sums = np.stack([np.einsum("ij,ij->i", ref, cand), np.einsum("ij,ij->i", ref, ref), np.einsum("ij,ij->i", cand, cand)])
            if axis in self.channel_sums and self.channel_sums[axis].shape != sums.shape:
                self.channel_sums.pop(axis)  # batches disagree on the channel count: no balanced view of this axis
                self.min_batch_balanced.pop(axis, None)
                continue
            self.channel_sums[axis] = self.channel_sums.get(axis, 0) + sums
            self.min_batch_balanced[axis] = min(self.min_batch_balanced.get(axis, 1.0), _balanced_cosine(sums))

    def _add_detection_sums(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        layout = detection_layout(reference)
        if layout is None or (self.detection is not None and layout != self.detection) or self.detection_batches != self.batches - 1:
            self.detection, self.detection_sums = None, None  # one batch that does not look like it ends the detection view
            return
        axis, first, end = layout
        columns = reference.shape[axis]
        ref = np.moveaxis(reference, axis, -1).reshape(-1, columns).astype(np.float64)
        cand = np.moveaxis(candidate, axis, -1).reshape(-1, columns).astype(np.float64)
        found = []
        for gate, score in enumerate((_best_score, _object_score)):
            in_ref, in_cand = score(ref, first, end) >= DETECTION_SCORE, score(cand, first, end) >= DETECTION_SCORE
            self.found_both[gate] += int((in_ref & in_cand).sum())
            self.found_either[gate] += int((in_ref | in_cand).sum())
            found.append(in_ref | in_cand)
        others = np.r_[0:first, end:columns]
        sums = np.array([_sums(ref[:, first:end], cand[:, first:end])] + [_sums(ref[rows][:, others], cand[rows][:, others]) for rows in found])
        self.detection = layout
        self.detection_sums = sums if self.detection_sums is None else self.detection_sums + sums
        self.detection_batches += 1
        self.scored_anchors += int(found[0].sum())
        self.object_anchors += int(found[1].sum())
        self.min_batch_detection = min(self.min_batch_detection, _detection_cosine(sums))

    @property
    def detection_view(self) -> tuple[int, int, int] | None:
        """The detection layout every batch had (see ``detection_layout``), or None."""
        if self.detection is None or self.detection_sums is None or self.detection_batches != self.batches or self.nonfinite_mismatches:
            return None
        return self.detection

    @property
    def anchor_iou(self) -> float | None:
        """For a detector's output: IoU of the anchors where each model finds an object (the lower of the two gates'; 1 where
        neither finds any); else None."""
        if self.detection_view is None:
            return None
        return min(both / either if either else 1.0 for both, either in zip(self.found_both, self.found_either))

    @property
    def objects_found(self) -> int | None:
        """For a detector's output: the anchors where either model finds an object, by the gate that finds more; else None."""
        if self.detection_view is None:
            return None
        return max(self.found_either)

    @property
    def balanced_axis(self) -> int | None:
        """The axis whose channels' scales spread over more than SCALE_SPREAD (the widest spread), or None."""
        best, widest = None, SCALE_SPREAD
        for axis, sums in self.channel_sums.items():
            spread = _spread(sums)
            if spread >= widest:
                best, widest = axis, spread
        return best

    @property
    def scale_spread(self) -> float | None:
        axis = self.balanced_axis
        return None if axis is None else _spread(self.channel_sums[axis])

    @property
    def plain_cosine(self) -> float:
        """Cosine over every value as it is, whatever the channels' scales."""
        if self.nonfinite_mismatches:
            return math.nan
        return _cosine(self.dot, self.ref_sq, self.cand_sq)

    @property
    def nonfinite_mismatches(self) -> int:
        """Positions where one model gave NaN/Inf and the other did not (or a different one)."""
        return self.nonfinite_candidate + self.nonfinite_reference + self.nonfinite_disagreeing

    @property
    def cosine(self) -> float:
        """Cosine similarity over all batches: for a detector's output, the lower of its scores' and its scored anchors' other
        columns' (``detection_view``); else with every channel at the same scale where their scales spread over
        SCALE_SPREAD (``balanced_axis``); NaN when the models disagree on non-finite values, so no gate passes."""
        if self.nonfinite_mismatches:
            return math.nan
        if self.detection_view is not None:
            return _detection_cosine(self.detection_sums)
        axis = self.balanced_axis
        if axis is not None:
            return _balanced_cosine(self.channel_sums[axis])
        mean = self.centred_on
        if mean is not None:
            return _cosine(*_centred((self.dot, self.ref_sq, self.cand_sq, self.ref_sum, self.cand_sum, self.elements), mean))
        return _cosine(self.dot, self.ref_sq, self.cand_sq)

    @property
    def centred_on(self) -> float | None:
        """The reference's mean, where it is OFFSET_RATIO times the reference's standard deviation or more: the cosine then
        compares both outputs around it. None for one value, a reference that does not vary, or NaN/Inf disagreement."""
        if self.elements < 2 or self.nonfinite_mismatches or self.degenerate:
            return None
        mean = self.ref_sum / self.elements
        return mean if abs(mean) >= OFFSET_RATIO * self.reference_std else None

    def _per_batch_sums(self) -> list[tuple[float, float, float]] | None:
        """Each batch's (ref * cand, ref^2, cand^2), around ``centred_on`` where it applies; None when some batch's are not kept."""
        if len(self.batch_sums) != self.batches:
            return None
        mean = self.centred_on
        return [_centred(sums, mean) if mean is not None else sums[:3] for sums in self.batch_sums]

    def _pooled_batch_sums(self) -> list[tuple[float, float, float]] | None:
        """:meth:`_per_batch_sums` where the cosine pools the values as they are over RESAMPLED_BATCHES or more batches;
        None with fewer, with NaN/Inf disagreement, and where it compares detections or channels at one scale."""
        if self.batches < RESAMPLED_BATCHES or self.nonfinite_mismatches or self.balanced_axis is not None or self.detection_view is not None:
            return None
        return self._per_batch_sums()

    @property
    def dominant_batch(self) -> tuple[str, float] | None:
        """(where it came from, its share) of the one batch holding over DOMINANT_BATCH_SHARE of the reference's energy as
        ``cosine`` weighs it (its squared values, around ``centred_on`` where that applies), among RESAMPLED_BATCHES or
        more: the cosine is then mostly that batch's. None otherwise, and where the cosine is not taken over the values as
        they are (detections, channels at one scale)."""
        per_batch = self._pooled_batch_sums()
        if per_batch is None:
            return None
        energy = np.asarray([sums[1] for sums in per_batch], np.float64)
        total, position = float(energy.sum()), int(energy.argmax())
        if total <= 0.0 or energy[position] <= DOMINANT_BATCH_SHARE * total:
            return None
        label = self.batch_labels[position] if position < len(self.batch_labels) and self.batch_labels[position] else f"batch {position + 1}"
        return label, float(energy[position] / total)

    @property
    def cosine_range(self) -> tuple[float, float] | None:
        """Where the cosine of as many other batches like these would fall: the central RANGE_CONFIDENCE of the pooled
        cosines of RESAMPLES draws (with replacement, a fixed seed) of the batches compared. None below RESAMPLED_BATCHES
        batches, with NaN/Inf disagreement, or where channels are compared at one scale (``balanced_axis``)."""
        per_batch = self._pooled_batch_sums()
        if per_batch is None:
            return None
        sums = np.asarray(per_batch, np.float64)  # sums around a fixed mean add up over batches like the plain ones
        draws = np.random.default_rng(0).integers(0, len(sums), size=(RESAMPLES, len(sums)))
        drawn = sums[draws].sum(axis=1)  # (RESAMPLES, 3): each draw's pooled sums
        cosines = [_cosine(dot, ref_sq, cand_sq) for dot, ref_sq, cand_sq in drawn.tolist()]
        tail = (1.0 - RANGE_CONFIDENCE) / 2.0 * 100.0
        low, high = np.percentile(cosines, [tail, 100.0 - tail])
        return float(low), float(high)

    @property
    def worst_batch_cosine(self) -> float:
        """The lowest cosine of one batch, by the measure ``cosine`` uses."""
        if self.detection_view is not None:
            return self.min_batch_detection
        axis = self.balanced_axis
        if axis is not None:
            return self.min_batch_balanced[axis]
        per_batch = self._per_batch_sums() if self.centred_on is not None else None
        return min(_cosine(*sums) for sums in per_batch) if per_batch else self.min_batch_cosine

    @property
    def mean_abs(self) -> float:
        return self.err_abs / self.elements if self.elements else 0.0

    @property
    def snr_db(self) -> float:
        if self.nonfinite_mismatches:
            return math.nan
        if self.err_sq == 0.0:
            return math.inf
        if self.ref_sq == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.ref_sq / self.err_sq)

    @property
    def top1(self) -> float | None:
        """Top-1 agreement of class scores; None elsewhere, and for (batch, k) values that are not probabilities yet sit far
        from zero next to their spread (``centred_on``): a few regression scores (quality on three scales), whose largest
        means nothing, rather than logits, which a classifier leaves near zero."""
        if not self.top1_total or (self.unnormalized_score_rows and self.centred_on is not None):
            return None
        return self.top1_match / self.top1_total

    @property
    def mask_iou(self) -> float | None:
        """IoU of the pixels above MASK_THRESHOLD in candidate and reference, for probability maps (every batch one); else None."""
        if not self.mask_batches or self.mask_batches != self.batches:
            return None
        return self.mask_intersection / self.mask_union if self.mask_union else 1.0

    @property
    def class_iou(self) -> float | None:
        """For integer label maps (every batch, :func:`looks_like_label_map`): the mean over the labels either model gave of
        the pixels labelled so by both over those labelled so by either, summed over the batches; else None. Unlike the
        share of equal pixels, a class covering little of the image counts as much as the background."""
        if not self.label_batches or self.label_batches != self.batches:
            return None
        seen = self.label_unions > 0
        return float(np.mean(self.label_intersections[seen] / self.label_unions[seen])) if seen.any() else 1.0

    @property
    def decision_agreement(self) -> float | None:
        """For probabilities per sample (every batch, :func:`looks_like_probability_scores`): the share of values on the same
        side of MASK_THRESHOLD in candidate and reference, the decisions their users take; else None."""
        if not self.decision_batches or self.decision_batches != self.batches:
            return None
        return self.decisions_agreed / self.elements

    @property
    def embedding_cosine(self) -> float | None:
        """For unit-length embeddings (every batch): the mean over rows of each row's cosine with the reference's; else None."""
        if not self.embedding_batches or self.embedding_batches != self.batches or self.nonfinite_mismatches:
            return None
        return self.row_cosine_sum / self.embedding_rows

    @property
    def task_metric(self) -> tuple[str, float] | None:
        """The decision-shaped score this output's shape calls for: top-1 agreement for class scores, mask IoU for probability
        maps, for a detector's output the IoU of the anchors where each model finds an object, for unit-length embeddings
        the mean cosine of each row with the reference's (the comparison their users make), for a probability per sample the
        share of decisions at 0.5 that agree, and for integer or boolean outputs (class labels, indices, flags) the share of
        values that are exactly the reference's, or for integer label maps their mean IoU per class."""
        if self.integer_values and self.elements:
            class_iou = self.class_iou
            return ("class IoU", class_iou) if class_iou is not None else ("exact", self.exact / self.elements)
        if self.top1 is not None:
            return "top-1", self.top1
        if self.embedding_cosine is not None:
            return "row cosine", self.embedding_cosine
        if self.mask_iou is not None:
            return "mask IoU", self.mask_iou
        if self.anchor_iou is not None:
            return "anchor IoU", self.anchor_iou
        if self.decision_agreement is not None:
            return "decisions", self.decision_agreement
        return None

    @property
    def reference_std(self) -> float:
        if not self.elements:
            return 0.0
        mean = self.ref_sum / self.elements
        return math.sqrt(max(self.ref_sq / self.elements - mean * mean, 0.0))

    @property
    def single_value(self) -> bool:
        """One value in all: its cosine is 1 whenever the signs agree (a score per input, one held-out sample)."""
        return self.elements == 1

    @property
    def degenerate(self) -> bool:
        """The reference output barely varies, so closeness to it proves little (one value does not vary: see ``single_value``)."""
        if not self.elements:
            return True
        if self.single_value:
            return False
        mean = abs(self.ref_sum / self.elements)
        return self.reference_std <= 1e-6 * max(1.0, mean)

    def to_dict(self) -> dict:
        spread = self.cosine_range
        return {
            "name": self.name,
            "elements": self.elements,
            "batches": self.batches,
            "max_abs_error": math.inf if self.nonfinite_mismatches else self.max_abs,
            "mean_abs_error": self.mean_abs,
            "cosine": self.cosine,
            "min_batch_cosine": self.worst_batch_cosine,
            "cosine_range_90": list(spread) if spread else None,
            "compared_as_detections": self._detection_dict(),
            "channels_balanced_on_axis": self.balanced_axis,
            "channel_scale_spread": self.scale_spread,
            "centred_on_reference_mean": self.centred_on,
            "plain_cosine": self.plain_cosine,
            "snr_db": _json_float(self.snr_db),
            "exact_match": self.exact / self.elements if self.elements else None,
            "top1_agreement": self.top1,
            "mask_iou": self.mask_iou,
            "class_iou": self.class_iou,
            "decision_agreement": self.decision_agreement,
            "mean_row_cosine": self.embedding_cosine,
            "padding_left_out": self.padding_left_out or None,
            "batches_of_differing_length": self.lengths_differed,
            "reference_std": self.reference_std,
            "degenerate_reference": self.degenerate,
            "nonfinite_candidate_values": self.nonfinite_candidate,
            "nonfinite_reference_values": self.nonfinite_reference,
            "nonfinite_disagreeing_values": self.nonfinite_disagreeing,
        }

    def _detection_dict(self) -> dict | None:
        layout = self.detection_view
        if layout is None:
            return None
        axis, first, end = layout
        return {"columns_axis": axis, "score_columns": [first, end], "score_threshold": DETECTION_SCORE, "scores_cosine": _cosine(*map(float, self.detection_sums[0])),
                "scored_anchors": self.scored_anchors, "scored_anchors_other_columns_cosine": _cosine(*map(float, self.detection_sums[1])),
                "object_anchors": self.object_anchors, "object_anchors_other_columns_cosine": _cosine(*map(float, self.detection_sums[2])),
                "anchor_iou": self.anchor_iou, "objects_found": self.objects_found}


def _sums(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float, float]:
    return float(np.einsum("ij,ij->", ref, cand)), float(np.einsum("ij,ij->", ref, ref)), float(np.einsum("ij,ij->", cand, cand))


def _best_score(rows: np.ndarray, first: int, end: int) -> np.ndarray:
    return rows[:, first:end].max(axis=1)


def _object_score(rows: np.ndarray, first: int, end: int) -> np.ndarray:
    """The first score times the best of the others (the first alone when it is the only one)."""
    return rows[:, first] * (rows[:, first + 1 : end].max(axis=1) if end - first > 1 else 1.0)


def _detection_cosine(sums: np.ndarray) -> float:
    """The lowest of the scores' cosine and the found objects' other columns' (1 where no object was found: nothing to place)."""
    return min(_cosine(*map(float, row)) for row in sums)


def _spread(sums: np.ndarray) -> float:
    """Largest over smallest RMS of the reference's channels that are not all zero; 1 unless a few channels hold
    99% of the energy (at most DOMINANT_SHARE of them): a feature or two near zero among many is not mixed scales."""
    energy = np.sort(sums[1])[::-1]
    live = energy[energy > 0]
    if live.size < 2:
        return 1.0
    holding = int(np.searchsorted(np.cumsum(live), 0.99 * live.sum())) + 1
    if holding > DOMINANT_SHARE * energy.size:
        return 1.0
    return float(np.sqrt(live[0] / live[-1]))


def _balanced_cosine(sums: np.ndarray) -> float:
    """The cosine once each channel is divided by the reference's RMS on it; a channel the reference leaves at 0
    counts at the channels' mean scale, so a candidate that is not 0 there still loses."""
    live = sums[1] > 0
    if not live.any():
        return _cosine(float(sums[0].sum()), 0.0, float(sums[2].sum()))
    scale = np.where(live, sums[1], sums[1][live].mean())
    weighted = sums / scale
    return _cosine(float(weighted[0].sum()), float(weighted[1].sum()), float(weighted[2].sum()))


def _centred(sums: tuple, mean: float) -> tuple[float, float, float]:
    """(ref * cand, ref^2, cand^2) summed with ``mean`` taken from every value of both, from the plain sums
    (ref * cand, ref^2, cand^2, ref, cand, count); float64 keeps the digits for means up to about 10^6 standard deviations."""
    dot, ref_sq, cand_sq, ref_sum, cand_sum, count = sums
    offset = count * mean * mean
    return (dot - mean * (ref_sum + cand_sum) + offset, max(ref_sq - 2.0 * mean * ref_sum + offset, 0.0),
            max(cand_sq - 2.0 * mean * cand_sum + offset, 0.0))


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
