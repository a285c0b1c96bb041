"""prune on a model whose layers all sit inside If branches: each branch pruned as a graph of its own."""

import numpy as np
import onnx
import pytest

from models.builders import rate_branch_convs
from onnxslim import PruneConfig, prune
from onnxslim.errors import NothingToDoError
from onnxslim.ir.scopes import all_nodes
from onnxslim.ir.tensors import initializer_map, subgraphs
from tests.conftest import run_model

CONFIG = PruneConfig(ratio=0.5, latency_runs=0)


def batches(rates, count=12, steps=20, seed=0, features=8):
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal((1, features, steps)).astype(np.float32), "sr": np.array(rates[i % len(rates)], np.int64)} for i in range(count)]


def branch_weight_elements(model: onnx.ModelProto) -> dict[str, int]:
    """Elements of the weights each branch holds or reads (its own initializers and Constant nodes, and the main graph's it reads)."""
    main = initializer_map(model.graph)
    if_node = next(n for n in model.graph.node if n.op_type == "If")
    sizes = {}
    for attr in if_node.attribute:
        graph = attr.g
        own = sum(int(np.prod(t.dims)) for t in graph.initializer)
        own += sum(int(np.prod(a.t.dims)) for n in graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value")
        read = sum(int(np.prod(main[i].dims)) for n in graph.node for i in n.input if i in main)
        sizes[attr.name] = own + read
    return sizes


def test_both_branches_pruned_with_data_that_runs_them():
    model = rate_branch_convs()
    pruned, report = prune(model, batches([16000, 8000]), config=CONFIG)
    before, after = branch_weight_elements(model), branch_weight_elements(pruned)
    assert after["then_branch"] < before["then_branch"] and after["else_branch"] < before["else_branch"]
    assert [o.name for o in pruned.graph.output] == [o.name for o in model.graph.output]
    assert any("If branches: " in w and "by_rate.then_branch" in w and "by_rate.else_branch" in w for w in report.warnings)
    onnx.checker.check_model(pruned, full_check=True)
    for feed in batches([16000, 8000], count=2, seed=1):
        speech, energy = run_model(pruned, feed)
        reference_speech, reference_energy = run_model(model, feed)
        assert speech.shape == reference_speech.shape
        # the main graph's own reader of a weight the then branch pruned still sees the original
        np.testing.assert_allclose(energy, reference_energy, rtol=1e-6)
    assert report.groups and all(g.producers for g in report.groups)


def test_refit_branch_stays_close_to_the_original():
    model = rate_branch_convs()
    _, report = prune(model, batches([16000, 8000], count=40), config=PruneConfig(ratio=0.25, latency_runs=0), eval_data=batches([16000, 8000], count=10, seed=3))
    speech = next(o for o in report.fidelity if o.name == "speech")
    # sigmoid scores near 0.4 that vary by a little: compared around their mean (0.856 without recovery)
    assert speech.centred_on is not None and 0.87 < speech.cosine < 1.0


def test_branch_the_data_never_takes_is_left_as_it_was():
    model = rate_branch_convs()
    pruned, report = prune(model, batches([16000]), config=CONFIG)
    assert branch_weight_elements(pruned)["else_branch"] == branch_weight_elements(model)["else_branch"]
    for feed in batches([8000], count=2, seed=2):
        np.testing.assert_allclose(run_model(pruned, feed)[0], run_model(model, feed)[0], rtol=1e-5, atol=1e-6)
    assert any("by_rate.else_branch never ran on the data" in w for w in report.warnings)
    assert branch_weight_elements(pruned)["then_branch"] < branch_weight_elements(model)["then_branch"]


def test_without_data_branches_are_pruned_by_weight_magnitude():
    model = rate_branch_convs()
    pruned, report = prune(model, config=PruneConfig(ratio=0.5, latency_runs=0, importance="l1"))
    assert all(after < before for before, after in zip(branch_weight_elements(model).values(), branch_weight_elements(pruned).values()))
    run_model(pruned, batches([8000], count=1)[0])


def test_layers_a_branch_cannot_prune_are_named_in_the_error():
    from models.builders import rate_branches

    with pytest.raises(NothingToDoError, match=r"nor inside its If branches \(by_rate.else_branch left as it is: no channel group can be pruned \(not selected by --only heads"):
        prune(rate_branches(), batches([16000, 8000], features=16), config=PruneConfig(ratio=0.5, latency_runs=0, only="heads"))


def test_the_convolutions_feeding_each_branchs_lstm_are_pruned():
    from models.builders import rate_branches

    model = rate_branches()
    data = batches([16000, 8000], features=16)
    pruned, report = prune(model, data, config=CONFIG)
    convs = [(g.channels_before, g.channels_after) for g in report.groups if g.producers[0].startswith("Conv")]
    assert convs == [(32, 16), (32, 16)], report.groups
    lstms = [(g.channels_before, g.channels_after) for g in report.groups if g.producers[0].startswith("LSTM")]
    assert lstms == [(32, 16), (32, 16)], report.groups  # their own hidden units too, each branch's LSTM
    assert report.fidelity[0].cosine > 0.7  # half of every layer, around the scores' mean
    for batch in data[:2]:  # both branches run
        assert run_model(pruned, batch)[0].shape == run_model(model, batch)[0].shape


def test_input_model_is_not_modified():
    model = rate_branch_convs()
    before = model.SerializeToString()
    prune(model, batches([16000, 8000]), config=CONFIG)
    assert model.SerializeToString() == before
    assert all(sub.input == [] or len(sub.input) == 0 for n in model.graph.node for sub in subgraphs(n))


def test_a_name_the_pruned_branch_defines_that_the_enclosing_graph_uses_is_renamed_inside_it():
    from onnxslim.ir.shapes import shapes_and_types
    from onnxslim.prune.branches import branch_model, branches_with_layers, put_back

    model = rate_branch_convs()
    branch = next(b for b in branches_with_layers(model) if b.attribute == "then_branch")
    body, _ = branch_model(model, branch, *shapes_and_types(model))
    clash = body.graph.initializer[-1]
    reader = next(n for n in body.graph.node if clash.name in n.input)
    reader.input[list(reader.input).index(clash.name)] = "rate_1"  # a weight named like the enclosing graph's constant
    clash.name = "rate_1"
    put_back(model, branch, body)
    then_graph = next(a.g for a in next(n for n in model.graph.node if n.op_type == "If").attribute if a.name == "then_branch")
    assert "rate_1" not in {t.name for t in then_graph.initializer}
    feed = batches([16000], count=1)[0]
    reference = run_model(rate_branch_convs(), feed)[0]
    np.testing.assert_allclose(run_model(model, feed)[0], reference, rtol=1e-5, atol=1e-6)


def test_channels_are_cut_in_the_main_graph_and_inside_the_if_branches():
    model = rate_branch_convs(front=True)
    pruned, report = prune(model, batches([16000, 8000], count=16), config=CONFIG)
    if_node = next(n for n in model.graph.node if n.op_type == "If")
    inside = {n.name for a in if_node.attribute for n in all_nodes(a.g)}
    producers = {p for g in report.pruned_groups for p in g.producers}
    assert producers - inside and producers & inside  # the front end's inner channels, and each branch's own
    assert branch_weight_elements(pruned)["then_branch"] < branch_weight_elements(model)["then_branch"]
    assert any("layers inside If branches: " in w for w in report.warnings)
    for feed in batches([16000, 8000], count=2, seed=5):
        assert run_model(pruned, feed)[0].shape == run_model(model, feed)[0].shape


def test_scripted_export_is_pruned_inside_its_if_branches():
    pytest.importorskip("torch")
    from models.builders import sample_inputs
    from models.scripted_export import scripted_branches

    model = scripted_branches(width=16, size=16)

    def both_ways(count, seed):
        data = sample_inputs(model, count, seed=seed)
        for index, batch in enumerate(data):
            batch["input"] = batch["input"] + (0.5 if index % 2 == 0 else -0.5)  # the If goes one way on even batches, the other on odd
        return data

    # the main graph's stem is read inside the If and its head reaches the output: only the branches' own channels can go
    pruned, report = prune(model, both_ways(24, 1), config=PruneConfig(ratio=0.5, latency_runs=0), eval_data=both_ways(6, 2))
    if_node = next(n for n in model.graph.node if n.op_type == "If")
    inside = {n.name for a in if_node.attribute for n in all_nodes(a.g)}
    producers = {p for g in report.pruned_groups for p in g.producers}
    assert producers and producers <= inside
    assert report.parameters.after < report.parameters.before
    for batch in both_ways(2, 3):
        assert run_model(pruned, batch)[0].shape == run_model(model, batch)[0].shape
