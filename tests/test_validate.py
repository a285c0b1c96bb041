import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from models.builders import conv_bn_relu, mlp, sample_inputs
from onnxslim import Gates, validate
from onnxslim.cli import main
from onnxslim.errors import DataError, UsageError
from onnxslim.ir import load_model
from onnxslim.measure import OutputComparison, dominant_batches, few_objects, output_score
from onnxslim.measure.outputs import TensorNoise, detection_layout, looks_like_probability_map, looks_like_probability_scores
from tests.conftest import noisy_comparison, requires_cuda


def perturbed(model, scale=0.2, seed=0):
    copy = load_model(model)
    rng = np.random.default_rng(seed)
    from onnx import numpy_helper

    for index, tensor in enumerate(copy.graph.initializer):
        array = numpy_helper.to_array(tensor)
        if array.ndim >= 2:
            noisy = array + scale * np.abs(array).mean() * rng.standard_normal(array.shape).astype(array.dtype)
            copy.graph.initializer[index].CopyFrom(numpy_helper.from_array(noisy, tensor.name))
    return copy


def test_metrics_match_numpy():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 10)).astype(np.float32)
    cand = ref + 0.01 * rng.standard_normal((4, 10)).astype(np.float32)
    comparison = OutputComparison("y")
    comparison.add(ref[:2], cand[:2])
    comparison.add(ref[2:], cand[2:])
    r, c = ref.astype(np.float64).ravel(), cand.astype(np.float64).ravel()
    assert comparison.cosine == pytest.approx(r @ c / np.linalg.norm(r) / np.linalg.norm(c))
    assert comparison.snr_db == pytest.approx(10 * np.log10((r @ r) / ((r - c) @ (r - c))))
    assert comparison.max_abs == pytest.approx(np.abs(r - c).max())
    assert comparison.top1 == np.mean(ref.argmax(-1) == cand.argmax(-1))
    assert not comparison.degenerate


def test_outputs_of_differing_length_are_compared_zero_padded():
    """A decoder that stops at its end token writes as many steps as its outputs ask for: the shorter output is padded
    with zeros, so a step one model wrote and the other did not counts against the candidate in full."""
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((1, 3, 4)).astype(np.float32)
    cand = np.concatenate([ref, rng.standard_normal((1, 2, 4)).astype(np.float32)], axis=1)
    comparison = OutputComparison("steps")
    comparison.add(ref, cand, "batch 0")
    comparison.add(ref, ref, "batch 1")
    padded = np.concatenate([ref, np.zeros((1, 2, 4), np.float32)], axis=1).astype(np.float64).ravel()
    r, c = np.concatenate([padded, ref.ravel()]), np.concatenate([cand.astype(np.float64).ravel(), ref.ravel()])
    first = padded @ cand.ravel() / np.linalg.norm(padded) / np.linalg.norm(cand)
    assert comparison.cosine == pytest.approx(r @ c / np.linalg.norm(r) / np.linalg.norm(c))
    assert comparison.min_batch_cosine == pytest.approx(first) and first < 0.99  # the two extra steps cost what they hold
    assert comparison.lengths_differed == 1 and comparison.to_dict()["batches_of_differing_length"] == 1
    noise = TensorNoise("steps")  # what a layer ranking reads: the same padding
    noise.add(ref, cand)
    assert noise.err_sq == pytest.approx(((padded - cand.ravel()) ** 2).sum(), rel=1e-5) and noise.ref_sq == pytest.approx((ref**2).sum(), rel=1e-5)
    with pytest.raises(DataError, match="output 'steps' has shape \\(3, 4\\) in the candidate, \\(1, 3, 4\\) in the reference"):
        comparison.add(ref, ref[0], "batch 2")  # a different rank is not a length


def test_top1_of_decoded_steps_counts_a_step_only_one_model_wrote_as_a_disagreement():
    rng = np.random.default_rng(4)
    ref = rng.dirichlet(np.ones(6), size=(1, 5)).astype(np.float32)  # 5 steps of class probabilities
    cand = ref[:, :3].copy()  # stopped two steps early
    cand[0, 0] = np.roll(cand[0, 0], 1)  # and read the first step differently
    comparison = OutputComparison("probs")
    comparison.add(ref, cand)
    comparison.add(ref, ref)
    assert comparison.top1 == pytest.approx((2 + 5) / (5 + 5)) and comparison.lengths_differed == 1


@pytest.mark.parametrize("size", [7, 40 * 6625 + 3])  # one chunk, and many chunks with a ragged end
def test_statistics_taken_a_chunk_at_a_time_equal_whole_array_float64(size):
    rng = np.random.default_rng(1)
    ref = rng.standard_normal(size).astype(np.float32)
    cand = (ref + 0.01 * rng.standard_normal(size)).astype(np.float32)
    cand[::5] = ref[::5]
    comparison = OutputComparison("y")
    comparison.add(ref, cand)
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    assert comparison.dot == pytest.approx(r @ c, rel=1e-12) and comparison.cand_sq == pytest.approx(c @ c, rel=1e-12)
    assert comparison.err_sq == pytest.approx((r - c) @ (r - c), rel=1e-12) and comparison.err_abs == pytest.approx(np.abs(r - c).sum(), rel=1e-12)
    assert comparison.max_abs == np.abs(r - c).max() and comparison.exact == int((r == c).sum()) and comparison.ref_sum == pytest.approx(r.sum(), rel=1e-9)
    integers = OutputComparison("ids")
    integers.add(np.arange(size, dtype=np.int64), np.arange(size, dtype=np.int64))
    assert integers.cosine == pytest.approx(1.0) and integers.exact == size


def test_probability_maps_report_mask_iou_and_class_scores_top1():
    rng = np.random.default_rng(1)
    ref = rng.uniform(size=(2, 1, 16, 16)).astype(np.float32)
    cand = ref.copy()
    cand[0, 0, :4] = 1.0 - cand[0, 0, :4]  # four rows flip sides of 0.5
    comparison = OutputComparison("maps")
    comparison.add(ref, cand)
    a, b = ref > 0.5, cand > 0.5
    assert comparison.mask_iou == pytest.approx((a & b).sum() / (a | b).sum()) and comparison.mask_iou < 1
    assert comparison.task_metric == ("mask IoU", comparison.mask_iou) and comparison.top1 is None
    assert comparison.to_dict()["mask_iou"] == comparison.mask_iou
    logits = OutputComparison("logits")
    logits.add(rng.standard_normal((4, 10)).astype(np.float32) * 5, rng.standard_normal((4, 10)).astype(np.float32) * 5)  # unbounded: not a map
    unbounded = OutputComparison("features")
    unbounded.add(rng.standard_normal((2, 8, 16, 16)).astype(np.float32), rng.standard_normal((2, 8, 16, 16)).astype(np.float32))
    assert logits.task_metric[0] == "top-1" and logits.mask_iou is None and unbounded.task_metric is None
    corners = OutputComparison("loc_preds")  # a table recognizer's 8 cell-corner coordinates in [0, 1] per decoded step
    corners.add(rng.uniform(size=(1, 40, 8)).astype(np.float32), rng.uniform(size=(1, 40, 8)).astype(np.float32))
    assert corners.mask_iou is None and corners.task_metric is None
    wide = OutputComparison("mask")  # (batch, H, W) maps still count
    wide.add(ref[:, 0], cand[:, 0])
    assert wide.task_metric == ("mask IoU", comparison.mask_iou)


def test_probabilities_rounded_a_hair_above_one_are_still_probabilities():
    """onnxruntime's float32 Sigmoid returns 1.0000001 for some inputs (17.844 on this project's CPUs): one such pixel in
    one batch used to turn a text detector's probability map into a plain tensor, with no mask IoU for the whole output."""
    rng = np.random.default_rng(3)
    probabilities = rng.uniform(size=(1, 1, 16, 16)).astype(np.float32)
    probabilities[0, 0, 0, 0] = np.nextafter(np.float32(1), np.float32(2))
    probabilities[0, 0, 0, 1] = 0.0
    assert probabilities.max() > 1.0
    assert looks_like_probability_map(probabilities)
    comparison = OutputComparison("maps")
    comparison.add(probabilities, np.clip(probabilities, 0, 1))
    assert comparison.task_metric == ("mask IoU", 1.0)
    assert looks_like_probability_scores(probabilities.reshape(-1, 1))
    assert not looks_like_probability_map(probabilities + 1e-3) and not looks_like_probability_scores(probabilities.reshape(-1, 1) - 1e-3)
    scores = rng.uniform(size=(1, 2, 400)).astype(np.float32)
    scores[0, 0, 0] = probabilities.max()
    detections = np.concatenate([rng.uniform(0, 320, size=(1, 4, 400)).astype(np.float32), scores], axis=1)
    assert detection_layout(detections) == (1, 4, 6)  # both score columns, the rounded one included


def test_a_detector_output_whose_boxes_dwarf_its_scores_is_compared_as_detections():
    """YOLOv8's (1, 84, anchors): 4 box channels in pixels beside 80 class scores in (0, 1). The plain cosine is the
    boxes' alone; compared as detections, scores that lost their information show."""
    rng = np.random.default_rng(2)
    anchors = 2100
    boxes = rng.uniform(0, 320, size=(1, 4, anchors))
    scores = rng.uniform(0, 0.05, size=(1, 80, anchors))
    ref = np.concatenate([boxes, scores], axis=1).astype(np.float32)
    cand = ref.copy()
    cand[:, 4:] = rng.permutation(scores.ravel()).reshape(scores.shape)  # the same scores, shuffled: no information left
    comparison = OutputComparison("output0")
    comparison.add(ref, cand)
    assert comparison.plain_cosine > 0.9999
    assert comparison.balanced_axis == 1 and comparison.scale_spread > 1000  # still reported
    assert comparison.detection_view == (1, 4, 84)
    r, c = ref[0, 4:].astype(np.float64), cand[0, 4:].astype(np.float64)
    scores_cosine = (r * c).sum() / np.sqrt((r * r).sum() * (c * c).sum())
    assert comparison.cosine == pytest.approx(scores_cosine) and comparison.cosine < 0.8  # no anchor scored: no box to place
    assert type(comparison.cosine) is float and type(comparison.worst_batch_cosine) is float
    assert comparison.worst_batch_cosine == pytest.approx(comparison.cosine)
    report = comparison.to_dict()
    assert report["compared_as_detections"]["scored_anchors"] == 0 and report["plain_cosine"] == comparison.plain_cosine
    assert comparison.anchor_iou == 1.0  # neither model finds an object anywhere: the scores' cosine is what shows the damage
    # channel-last (YOLOv5's (1, anchors, 85)) is found the same way
    last = OutputComparison("output")
    last.add(np.moveaxis(ref, 1, 2), np.moveaxis(cand, 1, 2))
    assert last.detection_view == (2, 4, 84) and last.cosine == pytest.approx(comparison.cosine)


def yolox_like(rng, anchors=3549, objects=20):
    """(1, anchors, 6) as a YOLOX head writes it: offsets and log sizes, then objectness and a class score; few anchors hold objects."""
    out = np.empty((1, anchors, 6), np.float32)
    out[0, :, :2] = rng.uniform(-0.5, 1.5, size=(anchors, 2))
    out[0, :, 2:4] = rng.normal(0.5, 0.8, size=(anchors, 2))
    out[0, :, 4] = rng.uniform(0, 0.02, size=anchors)
    out[0, :, 5] = rng.uniform(0, 0.2, size=anchors)
    held = rng.choice(anchors, objects, replace=False)
    out[0, held, 4] = rng.uniform(0.6, 0.95, size=objects)
    out[0, held, 5] = rng.uniform(0.5, 0.95, size=objects)
    return out, held


def test_background_anchors_boxes_do_not_set_a_detectors_cosine():
    rng = np.random.default_rng(5)
    ref, held = yolox_like(rng)
    noisy = ref.copy()
    noisy[0, :, 5] = np.clip(noisy[0, :, 5] + 0.005, 0, 1)
    # objects, and anchors whose class score alone reaches 0.1 in either model
    scored = np.maximum(ref[0, :, 4:].max(axis=1), noisy[0, :, 4:].max(axis=1)) >= 0.1
    noisy[0, ~scored, :4] += 0.5 * rng.standard_normal((int((~scored).sum()), 4)).astype(np.float32)  # unread box values move a lot ...
    noisy[0, scored, :4] += 0.01  # ... read ones barely
    comparison = OutputComparison("output")
    comparison.add(ref, noisy)
    assert comparison.detection_view == (2, 4, 6)
    assert comparison.plain_cosine < 0.98 < 0.999 < comparison.cosine
    found = comparison.to_dict()["compared_as_detections"]
    assert found["scored_anchors"] == scored.sum() > found["object_anchors"] == len(held)
    # a box that moves where an object is, or scores that move anywhere, do show
    moved = ref.copy()
    moved[0, held, :4] += 1.0
    wrong_place = OutputComparison("output")
    wrong_place.add(ref, moved)
    assert wrong_place.cosine < 0.9
    missed = ref.copy()
    missed[0, held, 4] = 0.01
    lost = OutputComparison("output")
    lost.add(ref, missed)
    assert lost.cosine < 0.95 and lost.plain_cosine > 0.99
    # the task metric: the anchors where each model finds an object, as an IoU (objectness times class finds none here)
    assert lost.task_metric == ("anchor IoU", 0.0) and lost.to_dict()["compared_as_detections"]["anchor_iou"] == 0.0
    assert comparison.task_metric[0] == "anchor IoU" and 0.9 < comparison.anchor_iou < 1.0


def yolov8_like(rng, anchors=2100, objects=0):
    """(1, 84, anchors): boxes in pixels, then 80 class scores, near 0 on background; ``objects`` anchors score 0.5-0.9."""
    out = np.concatenate([rng.uniform(0, 320, size=(1, 4, anchors)), rng.uniform(0, 0.05, size=(1, 80, anchors))], axis=1).astype(np.float32)
    held = rng.choice(anchors, objects, replace=False)
    out[0, 4 + rng.integers(0, 80, size=objects), held] = rng.uniform(0.5, 0.9, size=objects)
    return out


def test_a_detector_compared_on_data_with_few_objects_is_flagged():
    rng = np.random.default_rng(8)
    empty = yolov8_like(rng)  # photographs of nothing the detector knows: every score is background
    quiet = OutputComparison("output0")
    quiet.add(empty, empty * 1.01)
    assert quiet.objects_found == 0
    (warning,) = few_objects([quiet], "3 held-out batch(es)")
    assert "'output0'" in warning and "only 0 anchor(s)" in warning and "--eval-data" in warning
    busy = OutputComparison("output0")
    for _ in range(2):
        scene = yolov8_like(rng, objects=12)
        busy.add(scene, scene * 1.01)
    assert busy.objects_found == 24 and few_objects([busy], "2 batches") == []
    assert quiet.to_dict()["compared_as_detections"]["objects_found"] == 0
    tokens = OutputComparison("y")  # not a detector's output: nothing to say
    tokens.add(rng.standard_normal((1, 32, 384)).astype(np.float32), rng.standard_normal((1, 32, 384)).astype(np.float32))
    assert tokens.objects_found is None and few_objects([tokens], "x") == []


def test_validate_says_when_a_detectors_data_shows_few_objects(save, npz_folder):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 84, 2100])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 84, 2100])
    node = onnx.helper.make_node("Identity", ["x"], ["y"], name="pass_through")
    model = save(onnx.helper.make_model(onnx.helper.make_graph([node], "detector", [x], [y]), opset_imports=[onnx.helper.make_opsetid("", 17)]))
    rng = np.random.default_rng(9)
    empty = validate(model, model, npz_folder([{"x": yolov8_like(rng)} for _ in range(3)]), runs=0)
    assert any("output 'y' is compared as a detector's" in w and "only 0 anchor(s)" in w for w in empty.warnings)
    scenes = validate(model, model, npz_folder([{"x": yolov8_like(rng, objects=20)} for _ in range(3)], "scenes"), runs=0)
    assert not any("detector's" in w for w in scenes.warnings)


def test_an_output_whose_cosine_is_one_batchs_is_flagged():
    """A face detector's score logit sat within +-560 on 199 crops of photographs and at -14,671 on one: that crop held
    97% of the output's energy, and every cosine over the set was its own. Said, naming the batch; an even spread, or
    too few batches to tell, says nothing."""
    rng = np.random.default_rng(10)
    logits = [rng.normal(-40.0, 30.0, size=(1, 896, 1)).astype(np.float32) for _ in range(19)]
    logits.insert(7, np.full((1, 896, 1), -9000.0, np.float32))
    comparison = OutputComparison("classificators")
    for index, batch in enumerate(logits):
        comparison.add(batch, batch * 1.01, f"crop_{index:02d}.npz")
    label, share = comparison.dominant_batch
    assert label == "crop_07.npz" and share > 0.9
    (warning,) = dominant_batches([comparison], "20 held-out batch(es)")
    assert "'classificators'" in warning and "crop_07.npz" in warning and f"{share:.0%}" in warning
    even = OutputComparison("classificators")
    for index, batch in enumerate(logits[:7] + logits[8:]):
        even.add(batch, batch * 1.01, f"crop_{index:02d}.npz")
    assert even.dominant_batch is None and dominant_batches([even], "x") == []
    few = OutputComparison("classificators")
    for batch in logits[6:9]:
        few.add(batch, batch * 1.01)
    assert few.dominant_batch is None


def test_validate_names_the_batch_that_decides_the_cosine(save, npz_folder):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    node = onnx.helper.make_node("Identity", ["x"], ["y"], name="pass_through")
    model = save(onnx.helper.make_model(onnx.helper.make_graph([node], "scores", [x], [y]), opset_imports=[onnx.helper.make_opsetid("", 17)]))
    rng = np.random.default_rng(11)
    batches = [{"x": rng.normal(size=(1, 4)).astype(np.float32)} for _ in range(9)] + [{"x": np.full((1, 4), 500.0, np.float32)}]
    report = validate(model, model, npz_folder(batches), runs=0)
    assert any("output 'y'" in w and "batch_009.npz" in w and "mostly that one batch's" in w for w in report.warnings), report.warnings


def test_outputs_that_do_not_look_like_detections_keep_their_cosine():
    rng = np.random.default_rng(6)
    tokens = rng.standard_normal((1, 32, 384)).astype(np.float32)  # token states: no column in [0, 1]
    probabilities = rng.dirichlet(np.ones(10), size=(1, 200)).astype(np.float32)  # per-step class probabilities
    unit = rng.uniform(size=(1, 500, 6)).astype(np.float32)  # every column in [0, 1]: nothing says which are boxes
    few = np.concatenate([rng.normal(size=(1, 40, 4)), rng.uniform(size=(1, 40, 2))], axis=2).astype(np.float32)  # 40 rows: too few anchors
    for array in (tokens, probabilities, unit, few):
        comparison = OutputComparison("y")
        comparison.add(array, array * 1.01)
        assert comparison.detection_view is None
    flips = OutputComparison("y")  # a batch that does not look like detections ends the view for every batch
    ref, _ = yolox_like(rng)
    flips.add(ref, ref)
    flips.add(unit, unit * 0.5)
    assert flips.detection_view is None and flips.cosine == flips.plain_cosine


def test_features_of_similar_scale_and_maps_keep_the_plain_cosine():
    """Token states with one nearly dead feature, and a probability map with empty columns: nothing dwarfs the rest."""
    rng = np.random.default_rng(3)
    tokens = rng.standard_normal((1, 32, 384)).astype(np.float32)
    tokens[..., 7] *= 1e-5
    noisy = tokens + 0.05 * rng.standard_normal(tokens.shape).astype(np.float32)
    states = OutputComparison("last_hidden_state")
    states.add(tokens, noisy)
    assert states.balanced_axis is None and states.cosine == states.plain_cosine
    probability = np.zeros((1, 1, 64, 64), np.float32)
    probability[..., 10:20, 30:34] = 0.9
    maps = OutputComparison("map")
    maps.add(probability, probability * 0.98)
    assert maps.balanced_axis is None and maps.cosine == maps.plain_cosine


def test_scores_far_from_zero_are_compared_around_the_reference_mean():
    """Quality scores near 3 that vary by half a point: an error of a third of that spread still reads 0.99 over the raw
    values; around the reference's mean it reads what it costs, and a constant shift counts against the candidate."""
    rng = np.random.default_rng(4)
    scores = (3.0 + 0.5 * rng.standard_normal((40, 1, 3))).astype(np.float32)
    noisy = scores + 0.17 * rng.standard_normal(scores.shape).astype(np.float32)
    comparison = OutputComparison("mos")
    for ref, cand in zip(scores, noisy):
        comparison.add(ref, cand)
    r, c = scores.astype(np.float64).ravel(), noisy.astype(np.float64).ravel()
    mean = r.mean()
    assert comparison.centred_on == pytest.approx(mean)
    assert comparison.plain_cosine > 0.99 > 0.95 > comparison.cosine
    assert comparison.cosine == pytest.approx((r - mean) @ (c - mean) / np.linalg.norm(r - mean) / np.linalg.norm(c - mean))
    per_batch = [(a - mean) @ (b - mean) / np.linalg.norm(a - mean) / np.linalg.norm(b - mean)
                 for a, b in zip(scores.astype(np.float64).reshape(40, -1), noisy.astype(np.float64).reshape(40, -1))]
    assert comparison.worst_batch_cosine == pytest.approx(min(per_batch))
    low, high = comparison.cosine_range
    assert low < comparison.cosine < high < 0.99
    assert comparison.to_dict()["centred_on_reference_mean"] == pytest.approx(mean)
    shifted = OutputComparison("mos")
    shifted.add(scores, scores + 0.25)
    assert shifted.plain_cosine > 0.999 and shifted.cosine < 0.9
    # three scores per input: which is largest decides nothing, so no top-1 is reported for them
    per_input = OutputComparison("mos")
    for ref, cand in zip(scores, noisy):
        per_input.add(ref, cand)
    assert per_input.top1_total and per_input.top1 is None and per_input.task_metric is None
    # probabilities near uniform sit far from zero too, and keep their top-1
    probabilities = np.full((8, 4), 0.25, np.float32) + np.linspace(-0.01, 0.01, 4, dtype=np.float32)
    near_uniform = OutputComparison("probs")
    near_uniform.add(probabilities, probabilities[:, ::-1])
    assert near_uniform.centred_on is not None and near_uniform.top1 == 0.0


def test_unit_length_embeddings_are_scored_by_the_cosine_of_each_row_not_by_an_argmax():
    """A speaker or sentence embedding scaled to length 1 is compared row by row, as its users compare embeddings; logits
    of the same shape stay class scores."""
    rng = np.random.default_rng(6)
    rows = rng.standard_normal((6, 64))
    reference = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    moved = reference + 0.05 * rng.standard_normal(reference.shape).astype(np.float32)
    candidate = moved / np.linalg.norm(moved, axis=1, keepdims=True)
    comparison = OutputComparison("embedding")
    comparison.add(reference[:3], candidate[:3])
    comparison.add(reference[3:], candidate[3:])
    expected = np.mean(np.sum(reference.astype(np.float64) * candidate, axis=1))
    assert comparison.top1 is None and comparison.task_metric == ("row cosine", pytest.approx(expected))
    assert comparison.to_dict()["mean_row_cosine"] == pytest.approx(expected)
    logits = OutputComparison("logits")
    logits.add(rows.astype(np.float32), rows.astype(np.float32))
    assert logits.task_metric == ("top-1", 1.0) and logits.embedding_cosine is None


def test_a_confident_softmax_is_class_scores_in_every_batch_and_integer_labels_are_matched_exactly():
    """A classifier sure of its answer gives a nearly one-hot softmax row, of length 1 like an embedding: it stays class
    scores, so top-1 counts every sample (not only the unsure ones). Integer outputs (a label per sample, as scikit-learn
    exports write beside the probabilities) are scored by the share of equal values."""
    confident = np.full((1, 10), 1e-6, np.float32)
    confident[0, 3] = 1.0 - 9e-6
    unsure = np.full((1, 10), 0.05, np.float32)
    unsure[0, 2], unsure[0, 7] = 0.30, 0.25
    comparison = OutputComparison("probabilities")
    for reference, candidate in ((confident, confident), (unsure, unsure[:, ::-1]), (confident, confident)):
        comparison.add(reference, candidate)
    assert comparison.task_metric == ("top-1", pytest.approx(2 / 3)) and comparison.embedding_cosine is None
    labels = OutputComparison("label")
    for reference, candidate in ((3, 3), (2, 7), (3, 3), (5, 5)):
        labels.add(np.array([reference], np.int64), np.array([candidate], np.int64))
    assert labels.task_metric == ("exact", 0.75)
    names = OutputComparison("label names")  # string labels (a classifier trained on class names): compared the same way
    for reference, candidate in (("three", "three"), ("two", "seven"), ("three", "three"), ("five", "five")):
        names.add(np.array([reference]), np.array([candidate], dtype=object))
    assert names.task_metric == ("exact", 0.75) and names.nonfinite_mismatches == 0


def test_an_integer_label_map_is_scored_by_its_mean_iou_per_class():
    """A segmentation model's argmax (a table-line detector's background / horizontal / vertical labels per pixel): the
    share of equal pixels is set by the background; the mean IoU per label, summed over batches, weighs the thin lines
    as much. Token ids in a sequence and labels per sample stay compared exactly."""
    reference = np.zeros((1, 1, 16, 16), np.int64)
    reference[0, 0, 4, :] = 1  # a horizontal line: 16 pixels
    reference[0, 0, :, 9] = 2  # a vertical line: 16 pixels, one of them over the horizontal one
    candidate = reference.copy()
    candidate[0, 0, 4, :4] = 0  # four line pixels missed
    comparison = OutputComparison("output")
    comparison.add(reference, candidate)
    comparison.add(reference[:, 0], reference[:, 0])  # (batch, H, W) too, and a batch in full agreement
    both = np.array([225 + 225, 11 + 15, 16 + 16])  # per label, summed over the two batches
    either = np.array([229 + 225, 15 + 15, 16 + 16])
    assert comparison.task_metric == ("class IoU", pytest.approx(np.mean(both / either)))
    assert comparison.to_dict()["class_iou"] == pytest.approx(np.mean(both / either))
    assert comparison.to_dict()["exact_match"] == pytest.approx(1 - 4 / 512)
    # what --accuracy-metric auto bounds: the same class IoU; the default bounds the cosine, as its label says
    assert output_score(comparison, "auto") == comparison.task_metric[1] and output_score(comparison, "cosine") == comparison.cosine
    tokens = OutputComparison("token ids")
    tokens.add(np.arange(40, dtype=np.int64)[None], np.arange(40, dtype=np.int64)[None])
    assert tokens.task_metric == ("exact", 1.0) and tokens.class_iou is None and output_score(tokens, "auto") == 1.0
    mixed = OutputComparison("indices")  # values past the label range in one batch: not labels
    mixed.add(reference, candidate)
    mixed.add(reference + 5000, reference + 5000)
    assert mixed.task_metric == ("exact", pytest.approx(1 - 4 / 512))


def test_a_probability_per_sample_is_scored_by_the_decisions_at_one_half():
    """A voice-activity model's speech probability per window, or a binary classifier's sigmoid ((n,) or (n, 1) in [0, 1]):
    the share of values on the same side of 0.5, the decision its users take; scores outside [0, 1] get none."""
    reference = np.array([0.1, 0.45, 0.55, 0.9], np.float32)
    comparison = OutputComparison("speech")
    comparison.add(reference, np.array([0.12, 0.52, 0.56, 0.88], np.float32))  # one window crosses 0.5
    comparison.add(reference[:, None], reference[:, None])
    assert comparison.task_metric == ("decisions", pytest.approx(7 / 8)) and comparison.to_dict()["decision_agreement"] == pytest.approx(7 / 8)
    scores = OutputComparison("quality")
    scores.add(np.array([1.5, 3.0, 4.5], np.float32), np.array([1.4, 3.1, 4.4], np.float32))
    assert scores.task_metric is None


def test_outputs_near_zero_keep_the_plain_cosine():
    """Logits, embeddings and ReLU features (a mean below twice their spread) are compared as they are."""
    rng = np.random.default_rng(5)
    for values in (rng.standard_normal((4, 64)), np.maximum(rng.standard_normal((4, 64)), 0) + 0.2):
        values = values.astype(np.float32)
        comparison = OutputComparison("y")
        comparison.add(values, values + 0.05 * rng.standard_normal(values.shape).astype(np.float32))
        assert comparison.centred_on is None and comparison.cosine == comparison.plain_cosine
        assert comparison.to_dict()["centred_on_reference_mean"] is None


def test_degenerate_reference_is_flagged():
    comparison = OutputComparison("y")
    comparison.add(np.full((2, 5), 3.0, np.float32), np.full((2, 5), 3.0, np.float32))
    assert comparison.degenerate


def test_the_cosine_range_comes_from_resampling_the_batches_compared():
    assert noisy_comparison([0.1] * 4).cosine_range is None  # too few batches to say how they spread
    alike, mixed = noisy_comparison([0.1] * 12), noisy_comparison([0.02] * 10 + [0.5, 0.5])
    for comparison in (alike, mixed):
        low, high = comparison.cosine_range
        assert low <= comparison.cosine <= high and comparison.cosine_range == (low, high)  # a fixed seed: the same range every time
        assert comparison.to_dict()["cosine_range_90"] == [low, high]
    assert np.diff(mixed.cosine_range)[0] > 5 * np.diff(alike.cosine_range)[0]  # two noisy batches of twelve: the cosine depends on drawing them
    exact = noisy_comparison([0.0] * 6)
    assert exact.cosine_range == pytest.approx((1.0, 1.0))


def test_validate_identical_and_perturbed(save, npz_folder):
    model = conv_bn_relu()
    ref = save(model, "ref.onnx")
    bad = save(perturbed(model), "bad.onnx")
    data = npz_folder(sample_inputs(model, 3))
    same = validate(ref, ref, data, runs=5, warmup=1, gates=Gates(min_cosine=0.999))
    assert same.passed
    output = same.providers[0].outputs[0]
    assert output.cosine == pytest.approx(1.0) and output.max_abs == 0
    assert same.providers[0].placement["candidate"]["nodes_by_provider"]["cpu"] > 0
    assert 0.3 < same.providers[0].latency.ratio < 3
    worse = validate(ref, bad, data, runs=0, gates=Gates(min_cosine=0.9999))
    assert not worse.passed
    assert worse.gates[0].value < 0.9999


def test_cli_validate_exit_codes_and_report(save, npz_folder, tmp_path):
    model = mlp()
    ref = save(model, "ref.onnx")
    bad = save(perturbed(model, 0.5), "bad.onnx")
    data = npz_folder(sample_inputs(model, 2))
    runner = CliRunner()
    report = tmp_path / "report.json"
    ok = runner.invoke(main, ["validate", str(ref), str(ref), "--data", str(data), "--runs", "3", "--min-cosine", "0.999", "--report", str(report), "-q"])
    assert ok.exit_code == 0, ok.output
    assert "PASSED" in ok.output
    content = json.loads(report.read_text())
    assert content["passed"] and content["providers"][0]["outputs"][0]["cosine"] == pytest.approx(1.0)
    fail = runner.invoke(main, ["validate", str(ref), str(bad), "--data", str(data), "--runs", "0", "--min-cosine", "0.999", "-q"])
    assert fail.exit_code == 3, fail.output
    assert "FAILED" in fail.output
    usage = runner.invoke(main, ["validate", str(ref), str(ref), "--data", str(data), "--min-top1", "7"])
    assert usage.exit_code == 2


def test_cli_validate_says_scores_were_compared_around_their_mean(save, npz_folder, tmp_path):
    """A regression head whose scores sit far from zero: the gate reads the cosine around the reference's mean, and the
    printed cosine and the report say so, with the plain cosine beside it."""
    model = mlp(d_out=3)
    bias = next(t for t in model.graph.initializer if t.name == model.graph.node[-1].input[2])
    bias.CopyFrom(onnx.numpy_helper.from_array(np.full(3, 40.0, np.float32), bias.name))
    ref, cand = save(model, "ref.onnx"), save(perturbed(model, 0.3), "cand.onnx")
    data = npz_folder(sample_inputs(model, 8))
    report = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["validate", str(ref), str(cand), "--data", str(data), "--runs", "0", "--min-cosine", "0.99", "--report", str(report)])
    output = json.loads(report.read_text())["providers"][0]["outputs"][0]
    assert output["centred_on_reference_mean"] == pytest.approx(40.0, abs=2.0)
    assert output["plain_cosine"] > 0.99 > output["cosine"], output
    assert result.exit_code == 3 and "around the reference's mean" in result.output, result.output


def test_random_data_warns_and_needs_shapes_for_dynamic_dims(save):
    # a dynamic batch axis alone is taken as 1, and the data's description says so
    batched = save(conv_bn_relu(batch="N"), "batched.onnx")
    report = validate(batched, batched, "random", runs=0)
    assert "batch axis of input taken as 1" in report.data and report.passed
    assert any("random" in w for w in report.warnings)
    # any other dynamic size has no default
    model = conv_bn_relu(batch="N")
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    path = save(model)
    with pytest.raises(UsageError, match="dynamic dimensions 'N' \\(axis 0\\), 'height' \\(axis 2\\); give --input-shapes input:N,3,N,"):
        validate(path, path, "random", runs=0)
    report = validate(path, path, "random", input_shapes={"input": (2, 3, 32, 32)}, runs=0)
    assert "taken as 1" not in report.data and any("random" in w for w in report.warnings)


@pytest.mark.parametrize(
    "batch, message",
    [
        ({"wrong": np.zeros((1, 32), np.float32)}, "no array for model input 'input'"),
        ({"input": np.zeros((1, 32), np.float64)}, "input 'input' is float64, the model expects float32"),
        ({"input": np.zeros((1, 31), np.float32)}, "has shape (1, 31)"),
        ({"input": np.full((1, 32), np.nan, np.float32)}, "contains NaN"),
        ({"input": np.zeros((1, 32), np.float32), "extra": np.zeros(1)}, "'extra' is not an input"),
    ],
)
def test_bad_data_names_file_and_input(save, npz_folder, batch, message):
    path = save(mlp())
    folder = npz_folder([batch])
    with pytest.raises(DataError) as info:
        validate(path, path, folder, runs=0)
    assert message in str(info.value)
    assert "batch_000.npz" in str(info.value)


def test_cli_bad_inputs_are_one_line_errors(tmp_path, save):
    runner = CliRunner()
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("hello")
    good = save(mlp())
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ["inspect", str(tmp_path / "missing.onnx")],
        ["inspect", str(not_onnx)],
        ["validate", str(good), str(not_onnx), "--data", "random"],
        ["validate", str(good), str(good), "--data", str(empty)],
    ]
    for args in cases:
        result = runner.invoke(main, args)
        assert result.exit_code == 1, (args, result.output)
        assert "Traceback" not in result.output
        lines = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(lines) == 1, result.output


def test_unavailable_provider_is_reported(save):
    path = save(mlp())
    report = validate(path, path, "random", providers=("cpu", "rocm"), runs=0)
    statuses = {p.provider: p.status for p in report.providers}
    assert statuses["ROCMExecutionProvider"] == "not available"
    assert not report.complete


@requires_cuda
def test_cuda_runs_nodes_on_cuda(save):
    path = save(conv_bn_relu())
    report = validate(path, path, "random", providers=("cpu", "cuda"), runs=5)
    cuda = [p for p in report.providers if p.provider == "CUDAExecutionProvider"][0]
    assert cuda.status == "ok", cuda.message
    assert cuda.placement["candidate"]["nodes_by_provider"].get("cuda", 0) > 0


def test_a_candidate_running_more_nodes_on_the_cpu_fails_on_an_accelerator_by_default():
    from onnxslim.validate.compare import Gates, ProviderResult, _check_gates, cpu_fallback_note

    result = ProviderResult("CUDAExecutionProvider", "ok")
    result.placement = {
        "reference": {"nodes_by_provider": {"cuda": 300, "cpu": 4}},
        "candidate": {"nodes_by_provider": {"cuda": 280, "cpu": 58}, "ops_by_provider": {"cpu": {"DequantizeLinear": 50, "Shape": 8}}},
    }
    [check] = _check_gates([result], Gates())
    assert check.gate == "cpu_fallback" and check.value == 54 and not check.passed
    assert "54 more node(s) on the CPU" in cpu_fallback_note(result) and "DequantizeLinear 50" in cpu_fallback_note(result)
    assert _check_gates([result], Gates(allow_cpu_nodes=True)) == []
    result.placement["candidate"]["nodes_by_provider"]["cpu"] = 4
    [check] = _check_gates([result], Gates())
    assert check.passed and cpu_fallback_note(result) is None
    on_cpu = ProviderResult("CPUExecutionProvider", "ok")
    on_cpu.placement = result.placement
    assert _check_gates([on_cpu], Gates()) == []


def test_a_float16_transpose_into_matmul_opens_on_the_cpu(tmp_path):
    """onnxruntime's CPU provider crashes the process opening this graph with its NCHWc pass on (every FP16 ViT/BERT
    holds it); run in a child process so that a regression fails this test instead of killing the suite."""
    import subprocess
    import sys

    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16),
        helper.make_node("Transpose", ["xh"], ["t"], perm=[1, 0, 2]),
        helper.make_node("MatMul", ["t", "w"], ["yh"]),
        helper.make_node("Cast", ["yh"], ["y"], to=TensorProto.FLOAT),
    ]
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(32, 16)).astype(np.float16), "w")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5, 32])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    path = tmp_path / "half.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    child = (
        "import sys, numpy as np\nfrom onnxslim.runtime import Runner\nfrom onnxslim.runtime.session import optimized_ops\n"
        "runner = Runner(sys.argv[1])\nprint(runner.run({'x': np.ones((2, 5, 32), np.float32)})[0].shape, sorted(optimized_ops(sys.argv[1])))\n"
    )
    result = subprocess.run([sys.executable, "-c", child, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-1500:]}"
    assert "(5, 2, 16)" in result.stdout


def test_latency_is_timed_at_the_deploy_thread_count_and_at_1_thread(save, npz_folder):
    from onnxslim.measure.latency import also_one_thread

    model = conv_bn_relu()
    path, data = save(model), npz_folder(sample_inputs(model, 2))
    deployed = validate(path, path, str(data), threads=2, runs=3)
    (result,) = deployed.providers
    assert result.latency.threads == 2 and result.latency_1_thread.threads == 1
    alone = validate(path, path, str(data), threads=1, runs=3)
    assert alone.providers[0].latency_1_thread is None
    assert also_one_thread(4) and not also_one_thread(1) and not also_one_thread(4, "CUDAExecutionProvider")


def test_padding_positions_are_left_out_of_the_comparison(tmp_path):
    """A candidate wrong only where attention_mask is 0 matches the reference on every real token."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxslim.measure import fidelity
    from onnxslim.runtime import Runner

    def model(noisy_padding: bool):
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", 4]), helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "t"])]
        nodes = [helper.make_node("Sub", ["one", "attention_mask"], ["padding"]), helper.make_node("Cast", ["padding"], ["padding_f"], to=TensorProto.FLOAT),
                 helper.make_node("Unsqueeze", ["padding_f", "last"], ["padding_3d"]), helper.make_node("Mul", ["padding_3d", "size"], ["shift"]),
                 helper.make_node("Add", ["x", "shift"], ["y"])]
        inits = [numpy_helper.from_array(np.array(1, np.int64), "one"), numpy_helper.from_array(np.array([-1], np.int64), "last"),
                 numpy_helper.from_array(np.array(5.0 if noisy_padding else 0.0, np.float32), "size")]
        graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", 4])], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    rng = np.random.default_rng(0)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], np.int64)
    batches = [("b0", {"x": rng.standard_normal((2, 5, 4)).astype(np.float32), "attention_mask": mask})]
    reference = Runner(model(False), threads=None)
    (masked,) = fidelity(reference, model(True), batches)
    assert masked.cosine == pytest.approx(1.0) and masked.padding_left_out == "attention_mask" and masked.elements == 7 * 4
    (everything,) = fidelity(reference, model(True), batches, padding_mask=None)
    assert everything.cosine < 0.9 and not everything.padding_left_out and everything.to_dict()["padding_left_out"] is None


@pytest.mark.parametrize("weight_range", ["full", "reduced"])
def test_full_range_int8_weights_are_flagged_where_this_cpu_would_saturate_them(monkeypatch, weight_range):
    import importlib

    from onnxslim import QuantConfig, quantize

    compare = importlib.import_module("onnxslim.validate.compare")  # the package exports a function of the same name as the subpackage

    model = conv_bn_relu()
    data = sample_inputs(model, 10, seed=2)
    quantized, _ = quantize(model, data, config=QuantConfig(latency_runs=0, accuracy_budget=None, output_layers="int8", weight_range=weight_range))
    assert bool(compare.full_range_integer_layers(quantized)) == (weight_range == "full")
    for saturates in (True, False):
        monkeypatch.setattr(compare, "integer_products_saturate", lambda *a, saturates=saturates: saturates)
        report = validate(model, quantized, "random", runs=0)
        flagged = [w for w in report.warnings if "beyond +-64" in w and "--weight-range reduced" in w]
        assert bool(flagged) == (saturates and weight_range == "full")


def test_a_float16_conversion_is_validated_against_its_float32_original(tmp_path, npz_folder):
    """A float16 model with float16 inputs (how converters write one for the GPU) against the float32 original: the data,
    read as the reference's, is cast for the candidate, and the report says so."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(2)
    weight = rng.standard_normal((16, 8)).astype(np.float32)

    def matmul_model(element_type, array):
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Tanh", ["h"], ["y"], name="tanh")], "m",
            [helper.make_tensor_value_info("x", element_type, ["N", 16])], [helper.make_tensor_value_info("y", element_type, ["N", 8])],
            [onnx.numpy_helper.from_array(array, "w")],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    reference, half = tmp_path / "fp32.onnx", tmp_path / "fp16.onnx"
    onnx.save(matmul_model(TensorProto.FLOAT, weight), str(reference))
    onnx.save(matmul_model(TensorProto.FLOAT16, weight.astype(np.float16)), str(half))
    data = npz_folder([{"x": rng.standard_normal((4, 16)).astype(np.float32) * 0.3} for _ in range(6)])
    report = validate(reference, half, data, runs=3, gates=Gates(min_cosine=0.999))
    assert report.passed, report.failures
    assert any("input 'x' is float16" in w and "cast to float16" in w for w in report.warnings)
    assert report.providers[0].latency is not None
