"""Write an LSTM or GRU layer that an exporter unrolled into a Loop over the time steps as one LSTM or GRU node.

tf2onnx writes a Keras LSTM or GRU it cannot map onto ONNX's (one with recurrent dropout masks, or
``implementation=1``'s gate-by-gate weights) as a Loop whose body computes one step: each gate is a product
of the step's input and of the previous hidden state with weights sliced from the layer's kernels. onnxruntime
runs such a body node by node, step after step, and no integer kernel ever sees those weights. Where the body
is exactly one step over the rows of one tensor, the Loop becomes an LSTM or GRU node, which onnxruntime runs
with its fused kernel and quantize stores in INT8:

    Loop(body: x = Gather(X, t); i, f, g, o = affine in (x, h); c' = sigmoid(f) c + sigmoid(i) tanh(g);
         h' = sigmoid(o) tanh(c'); t' = t + 1; go on while t' < X's first dimension)
      ->  LSTM(X, W, R, B, initial_h = h0, initial_c = c0)
    Loop(body: x = Gather(X, t); z, r = affine in (x, h); n = tanh(affine in x + sigmoid(r) * affine in h);
         h' = sigmoid(z) h + (1 - sigmoid(z)) n; t' = t + 1; ...)
      ->  GRU(X, W, R, B, initial_h = h0, linear_before_reset = 1)      (Keras's reset_after=True; with
          n = tanh(affine in (x, sigmoid(r) * h)), reset_after=False, linear_before_reset = 0)

A cell is matched by its last equations, its gates' sigmoid a Sigmoid, a HardSigmoid, or Keras's hard_sigmoid
written out (Clip(x * 0.2 + 0.5, 0, 1), or Keras 3's relu6(x + 3) / 6), the same for every gate. The gates' inputs may be computed any
way that is affine in (x, h) with constant weights (split kernels, slices, masks of ones): their weights are
read off by evaluating them (onnx's reference evaluator) on unit vectors, and checked on random rows. The loop
must run once per row of X: the step counter starts at 0, goes up by one, and the condition compares it with
X's first dimension (read through Shape, of X or of a tensor of the same length). Keras's ``go_backwards``
reverses X in front of the Loop, which stays as it is. ONNX's LSTM adds a second, recurrent bias, written as
zeros (and a GRU's update and reset gates take theirs so): 4 (3) x hidden values more per layer than the Loop
read, while the Loop's slicing and splitting of its kernels goes. On credsweeper's secret classifier (three
bidirectional Keras LSTMs, 128 and 64 steps) the float model runs in 0.50x the Loops' time at one thread,
with every decision the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxslim.ir.graph import node_attr, replace_nodes
from onnxslim.ir.shapes import infer_shapes
from onnxslim.ir.tensors import all_value_names, consumers_map, from_array, initializer_map, producer_map, subgraphs, tensor_elements, to_array, unique_name
from onnxslim.passes.base import DeclineCode, NotRewritten, PassResult
from onnxslim.passes.opset import default_opset, with_axes
from onnxslim.passes.sequences import constant_value, first_dim_of, length_root, without_casts, without_identities

RANDOM_ROWS = 8  # rows on which the weights read off are checked
PROBE_ELEMENTS = 1 << 25  # rows x (input + hidden size) the probe may evaluate at once: 128 MB of float32
TOLERANCE = 1e-4  # of the gates' largest magnitude: what float32 sums of the probe's size leave


@dataclass(frozen=True)
class RecurrentStep:
    """What a Loop body that is one LSTM or GRU step holds, by role: body tensor names and carried-state positions."""

    op_type: str  # LSTM, GRU or RNN
    x: str  # the step's input row, Gather(sequence, counter)
    sequence: str  # the outer tensor the body reads a row of at each step
    hidden: str  # the previous hidden state (a body input)
    # the inputs of the gates' activations in ONNX's order: an LSTM's input, output, forget and cell gates; a GRU's update
    # and reset gates and its candidate state
    gates: tuple[str, ...]
    hidden_state: int  # positions among the carried states
    cell_state: int | None
    counter: int
    # what the condition compares the counter (or the Loop's iteration number) with: (carried position, or None for an
    # outer tensor or a constant; the tensor's name; its value where a constant), one per term of the condition
    limits: tuple[tuple[int | None, str, float | None], ...]
    passed_through: tuple[int, ...]  # carried states the body hands back unchanged
    activation: tuple = ("Sigmoid",)  # the gates' sigmoid: ("Sigmoid",) or ("HardSigmoid", alpha, beta); an RNN's activation
    reset: tuple[str, str] | None = None  # a GRU's reset gate and the recurrent term it scales

    @property
    def resets_after(self) -> bool:
        """A GRU whose reset gate scales the recurrent term (Keras's reset_after, ONNX's linear_before_reset), not the state."""
        return self.reset is not None and self.reset[1] != self.hidden


def recurrent_loops_as_layers(model: onnx.ModelProto) -> PassResult:
    """Replace each main-graph Loop whose body is one LSTM or GRU step over the rows of a float tensor by that layer."""
    result = PassResult("recurrent-loops-as-layers")
    graph = model.graph
    producers = producer_map(graph)
    consumers = consumers_map(graph)
    inits = initializer_map(graph)
    outputs = {o.name for o in graph.output}
    taken = all_value_names(graph) | {n.name for n in graph.node}
    replacements: dict[int, list[onnx.NodeProto]] = {}
    known: dict = {}  # the model's inferred shapes, once asked for
    opset = default_opset(model)
    for node in graph.node:
        if node.op_type != "Loop" or node.domain not in ("", "ai.onnx"):
            continue
        body = node_attr(node, "body")
        step = _recurrent_step(body, inits)
        if step is None:
            continue  # not a recurrent step: nothing to say
        where = node.name or node.output[0]
        try:
            _check_steps(node, step, producers, inits, lambda step=step: _static_first_dim(model, step.sequence, known))
            weights = _gate_weights(body, step, node, inits, opset)
            nodes, initializers = _as_layer(node, step, weights, consumers, outputs, taken, opset)
        except NotRewritten as exc:
            result.decline(where, exc.code, exc.text)
            continue
        replacements[id(node)] = nodes
        graph.initializer.extend(initializers)
        hidden = weights[1].shape[-1]
        result.change(f"Loop {where}: {step.op_type} step over the rows of '{step.sequence}' (hidden size {hidden}) as one {step.op_type} node")
    replace_nodes(graph, replacements)
    return result


def _made_by(name: str, producers: dict, op_type: str) -> onnx.NodeProto | None:
    node = producers.get(without_identities(name, producers))
    return node if node is not None and node.op_type == op_type else None


def _recurrent_step(body: onnx.GraphProto, outer_constants: dict) -> RecurrentStep | None:
    """The roles of a Loop body that computes one LSTM or GRU step, or None where it does not (decided by its structure
    alone)."""
    producers = producer_map(body)
    body_inits = {t.name: t for t in body.initializer}

    def constant(name: str) -> np.ndarray | None:  # a small constant of the body, or of the graph around it
        if name in producers:
            return constant_value(name, producers, {})
        tensor = body_inits.get(name) or outer_constants.get(name)
        return to_array(tensor) if tensor is not None and tensor_elements(tensor) == 1 else None

    body_inputs = [v.name for v in body.input]
    if len(body_inputs) < 4 or len(body.output) < len(body_inputs) - 1:
        return None
    carried = body_inputs[2:]
    handed_back = [without_identities(o.name, producers) for o in body.output[1:len(body_inputs) - 1]]
    for node in body.node:
        cell = _lstm_equations(node, producers, constant) or _gru_equations(node, producers, constant) or _rnn_equation(node)
        if cell is None:
            continue
        op_type, new_hidden, states, gates, activation, reset = cell
        new_states = [new_hidden] + [new for new, _ in states]
        if any(new not in handed_back for new in new_states):
            continue
        hidden_state = handed_back.index(new_hidden)
        kept = {handed_back.index(new): previous for new, previous in states}
        if any(carried[k] != previous for k, previous in kept.items()):
            continue
        cell_state = next((k for k in kept if k != hidden_state), None)
        if cell_state is None and op_type == "LSTM":
            continue
        step = _step_counter(body, producers, carried, handed_back, constant)
        if step is None:
            continue
        x, sequence, counter = step
        scans = [without_identities(o.name, producers) for o in body.output[len(body_inputs) - 1:]]
        if any(scan != new_hidden for scan in scans):
            return None
        limits = _limits(body, producers, carried, handed_back, counter, constant)
        if limits is None:
            return None
        limit_positions = {k for k, _, _ in limits if k is not None}
        roles = {hidden_state, counter} | ({cell_state} if cell_state is not None else set()) | limit_positions
        passed = tuple(k for k in range(len(carried)) if k not in roles)
        expected = 2 + (cell_state is not None) + len(limit_positions)
        if len(roles) != expected or any(handed_back[k] != carried[k] for k in (*passed, *limit_positions)):
            return None
        return RecurrentStep(op_type, x, sequence, carried[hidden_state], gates, hidden_state, cell_state, counter, limits, passed,
                             activation, reset)
    return None


def _lstm_equations(mul: onnx.NodeProto, producers: dict, constant):
    """Where ``mul`` is h' = sigmoid(o) * tanh(c') with c' = sigmoid(f) * c + sigmoid(i) * tanh(g), one sigmoid (see
    :func:`_gate`) for all three gates: ("LSTM", h', [(c', c)], the gates' inputs in ONNX's order i, o, f, g, that
    sigmoid, None); else None."""
    if mul.op_type != "Mul" or len(mul.input) != 2:
        return None
    for gate_side, tanh_side in (mul.input, reversed(mul.input)):
        output_gate, squashed = _gate(gate_side, producers, constant), _made_by(tanh_side, producers, "Tanh")
        if output_gate is None or squashed is None:
            continue
        new_cell = without_identities(squashed.input[0], producers)
        add = producers.get(new_cell)
        if add is None or add.op_type != "Add":
            continue
        kept, written = (_made_by(name, producers, "Mul") for name in add.input)
        for forget_product, input_product in ((kept, written), (written, kept)):
            if forget_product is None or input_product is None:
                continue
            forget, new = _gate_and_other(forget_product, producers, constant), _gate_and_other(input_product, producers, constant)
            if forget is None or new is None:
                continue
            ((forget_input, forget_kind), previous_cell, _), ((input_input, input_kind), candidate, _) = forget, new
            candidate_tanh = _made_by(candidate, producers, "Tanh")
            if candidate_tanh is None or previous_cell in producers or not forget_kind == input_kind == output_gate[1]:
                continue
            gates = (input_input, output_gate[0], forget_input, candidate_tanh.input[0])
            return "LSTM", mul.output[0], [(new_cell, previous_cell)], gates, output_gate[1], None
    return None


def _gru_equations(add: onnx.NodeProto, producers: dict, constant):
    """Where ``add`` is h' = z * h + (1 - z) * tanh(n) with z = sigmoid(gate) and n = a + r * b (Keras's GRU with
    reset_after=True) or n = a + (r * h) U (reset_after=False), r = sigmoid(gate) (see :func:`_gate`): ("GRU", h',
    [(h', h)], the inputs of z, r and tanh in ONNX's order, that sigmoid, (r, b or h)); else None."""
    if add.op_type != "Add" or len(add.input) != 2:
        return None
    for kept_side, new_side in (add.input, reversed(add.input)):
        kept, new = _made_by(kept_side, producers, "Mul"), _made_by(new_side, producers, "Mul")
        if kept is None or new is None:
            continue
        update = _gate_and_other(kept, producers, constant)
        if update is None or update[1] in producers:
            continue
        (update_input, kind), previous_hidden, update_gate = update
        candidate = None
        for complement_side, tanh_side in (new.input, reversed(new.input)):
            complement, squashed = _made_by(complement_side, producers, "Sub"), _made_by(tanh_side, producers, "Tanh")
            if (complement is not None and squashed is not None and _scalar(constant(complement.input[0])) == 1.0
                    and without_identities(complement.input[1], producers) == update_gate):
                candidate = squashed.input[0]
        if candidate is None:
            continue
        reset = _reset_product(candidate, producers, constant)
        if reset is None or reset[1] != kind:
            continue
        reset_input, _, reset_gate, scaled = reset
        return "GRU", add.output[0], [(add.output[0], previous_hidden)], (update_input, reset_input, candidate), kind, (reset_gate, scaled)
    return None


def _rnn_equation(node: onnx.NodeProto):
    """Where ``node`` is a Tanh or Relu, h' = tanh(its input) (Keras's SimpleRNN; whether that input is affine in the
    step's input and the hidden state, the weights' probe says): ("RNN", h', [], (its input,), the activation, None)."""
    if node.op_type not in ("Tanh", "Relu") or len(node.input) != 1:
        return None
    return "RNN", node.output[0], [], (node.input[0],), (node.op_type,), None


def _reset_product(candidate: str, producers: dict, constant):
    """(the reset gate's input, its sigmoid, its output, the term it scales) where one product in front of ``candidate``
    scales a term by a sigmoid gate: the hidden state itself (Keras's reset_after=False), or its product with the
    candidate's recurrent weights (reset_after=True); else None."""
    found = []
    pending, seen = [candidate], set()
    while pending:
        name = pending.pop()
        node = producers.get(name)
        if name in seen or node is None:
            continue
        seen.add(name)
        if node.op_type == "Mul":
            gate = _gate_and_other(node, producers, constant)
            if gate is not None:
                found.append((gate[0][0], gate[0][1], gate[2], gate[1]))
                continue
        if node.op_type in ("Add", "Sub", "Identity", "Mul", "MatMul"):
            pending.extend(i for i in node.input if i)
    return found[0] if len(found) == 1 else None


def _gate_and_other(mul: onnx.NodeProto, producers: dict, constant):
    """((the gate's input, its sigmoid), the other factor, the gate's output) where one factor of ``mul`` is a sigmoid gate."""
    for gate_side, other in (mul.input, reversed(mul.input)):
        gate = _gate(gate_side, producers, constant)
        if gate is not None:
            return gate, without_identities(other, producers), without_identities(gate_side, producers)
    return None


def _gate(name: str, producers: dict, constant) -> tuple[str, tuple] | None:
    """(the input, the activation as ONNX's LSTM names it) where ``name`` is a sigmoid of that input: a Sigmoid, a
    HardSigmoid, or one written out (:func:`_written_hard_sigmoid`)."""
    node = producers.get(without_identities(name, producers))
    if node is None:
        return None
    if node.op_type == "Sigmoid":
        return node.input[0], ("Sigmoid",)
    if node.op_type == "HardSigmoid":
        return node.input[0], ("HardSigmoid", float(node_attr(node, "alpha", 0.2)), float(node_attr(node, "beta", 0.5)))
    return _written_hard_sigmoid(node, producers, constant)


def _written_hard_sigmoid(node: onnx.NodeProto, producers: dict, constant) -> tuple[str, tuple] | None:
    """(x, ("HardSigmoid", alpha, beta)) where ``node`` computes Clip(x * a + b, 0, m) * s with m * s == 1 (each of the
    products and the sum may be left out): Keras 2's hard_sigmoid (a 0.2, b 0.5, m 1) and Keras 3's relu6(x + 3) / 6."""

    def factor(product: onnx.NodeProto | None, op_type: str) -> tuple[str, float] | None:  # (the other input, the constant)
        if product is None or product.op_type != op_type:
            return None
        for other, side in (product.input, reversed(product.input)):
            value = _scalar(constant(side))
            if value is not None:
                return other, value
        return None

    scale = 1.0
    outer = factor(node, "Mul")
    if outer is not None:
        node, scale = producers.get(outer[0]), outer[1]
    if node is None or node.op_type != "Clip" or len(node.input) != 3:
        return None
    low, high = _scalar(constant(node.input[1])), _scalar(constant(node.input[2]))
    if low != 0.0 or high is None or abs(high * scale - 1.0) > 1e-6:
        return None
    x, alpha, beta = node.input[0], 1.0, 0.0
    shift = factor(producers.get(x), "Add")
    if shift is not None:
        x, beta = shift
    slope = factor(producers.get(x), "Mul")
    if slope is not None:
        x, alpha = slope
    return x, ("HardSigmoid", alpha * scale, beta * scale)


def _scalar(value: np.ndarray | None) -> float | None:
    return float(value.reshape(())) if value is not None and value.size == 1 else None


def _step_counter(body: onnx.GraphProto, producers: dict, carried: list[str], handed_back: list[str], constant):
    """(the step's input row, the outer sequence, the counter's carried position): a Gather of an outer tensor's rows by
    a carried counter that the body hands back plus one."""
    defined = set(producers) | {v.name for v in body.input} | {t.name for t in body.initializer}
    for gather in body.node:
        if gather.op_type != "Gather" or node_attr(gather, "axis", 0) != 0 or gather.input[0] in defined:
            continue
        index = without_identities(gather.input[1], producers)
        if index not in carried:
            continue
        position = carried.index(index)
        plus_one = producers.get(handed_back[position])
        if plus_one is None or plus_one.op_type != "Add" or index not in plus_one.input:
            continue
        if _scalar(constant(plus_one.input[1] if plus_one.input[0] == index else plus_one.input[0])) == 1.0:
            return gather.output[0], gather.input[0], position
    return None


def _limits(body: onnx.GraphProto, producers: dict, carried: list[str], handed_back: list[str], counter: int, constant):
    """(carried position or None, tensor, its value where a constant) of each limit the loop's condition compares with:
    Less(counter + 1, limit), or a LogicalAnd of such terms and of Less(iteration number, limit) (TensorFlow's bound on
    a while loop's iterations, which stops it no sooner), through casts; None where the condition is anything else."""
    condition = producers.get(without_identities(body.output[0].name, producers))
    terms = [condition]
    while any(t is not None and t.op_type == "And" for t in terms):
        terms = [part for t in terms for part in ([producers.get(without_identities(i, producers)) for i in t.input] if t is not None and t.op_type == "And" else [t])]
    limits, counted = [], False
    for term in terms:
        if term is None or term.op_type != "Less":
            return None
        left = without_casts(term.input[0], producers)
        if left == handed_back[counter]:
            counted = True
        elif left != body.input[0].name:
            return None
        limit = without_casts(term.input[1], producers)
        value = _scalar(constant(limit))
        if limit in carried:
            limits.append((carried.index(limit), limit, None))
        elif value is not None:  # a length known when the model was exported
            limits.append((None, limit, value))
        elif limit in producers or limit in {t.name for t in body.initializer}:
            return None
        else:
            limits.append((None, limit, None))  # an outer tensor
    return tuple(limits) if counted else None


def _check_steps(loop: onnx.NodeProto, step: RecurrentStep, producers: dict, inits: dict, static_length) -> None:
    """The Loop runs once per row of the sequence: the counter starts at 0, and the limit (and the trip count, where
    given) is the sequence's first dimension, read through Shape or, where the export fixed it, equal to it
    (``static_length()``: that dimension where shape inference knows it)."""
    if _scalar(constant_value(loop.input[2 + step.counter], producers, inits)) != 0.0:
        raise NotRewritten(DeclineCode.UNSUPPORTED_FORM, "the step counter does not start at 0")
    first_condition = constant_value(loop.input[1], producers, inits) if loop.input[1] else None
    if first_condition is not None and not first_condition.all():
        raise NotRewritten(DeclineCode.UNSUPPORTED_FORM, "the loop never runs: its first condition is false")
    length = length_root(step.sequence, producers)

    def is_length(tensor: str, value: float | None) -> bool:
        if value is None:
            value = _scalar(constant_value(tensor, producers, inits))
        if value is not None:
            return value == static_length()
        return length_root(first_dim_of(tensor, producers, inits), producers) == length

    for position, tensor, value in step.limits:
        if not is_length(loop.input[2 + position] if position is not None else tensor, value):
            raise NotRewritten(DeclineCode.UNSUPPORTED_FORM, "the loop's limit is not read as the sequence's length")
    if loop.input[0] and not is_length(loop.input[0], None):
        raise NotRewritten(DeclineCode.UNSUPPORTED_FORM, "the loop's trip count is not the sequence's length")


def _static_first_dim(model: onnx.ModelProto, tensor: str, known: dict) -> int | None:
    """``tensor``'s first dimension where shape inference fixes it (the inference made once, kept in ``known``)."""
    if "shapes" not in known:
        known["shapes"] = infer_shapes(model)
    dims = known["shapes"].get(tensor)
    return dims[0] if dims and isinstance(dims[0], int) else None


def _gate_weights(body: onnx.GraphProto, step: RecurrentStep, loop: onnx.NodeProto, inits: dict, opset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The layer's (W, R, B) as ONNX's LSTM or GRU reads them (:func:`_layer_weights`), read off the body's gate inputs
    evaluated on unit vectors and checked on random rows; NotRewritten where they are not affine in the step's input and
    the hidden state with constant weights (a GRU's candidate: in the input and the reset-scaled state)."""
    producers = producer_map(body)
    needed: list[onnx.NodeProto] = []
    seen: set[str] = set()
    taken_nodes: set[int] = set()
    wanted = [*step.gates, *(step.reset or ())]
    pending = list(wanted)
    while pending:
        name = pending.pop()
        if name in seen or name in (step.x, step.hidden):
            continue
        seen.add(name)
        node = producers.get(name)
        if node is not None and id(node) not in taken_nodes:
            taken_nodes.add(id(node))
            needed.append(node)
            pending.extend(i for i in node.input if i)
    order = {id(node): position for position, node in enumerate(body.node)}
    needed.sort(key=lambda node: order[id(node)])
    if any(True for node in needed for _ in subgraphs(node)):
        raise NotRewritten(DeclineCode.UNSUPPORTED_FORM, "the gates are computed inside a nested subgraph")
    made = {o for node in needed for o in node.output}
    values = _free_values(body, step, loop, inits, {i for node in needed for i in node.input if i and i not in made} - {step.x, step.hidden})
    varying = {step.x, step.hidden}
    for node in needed:
        if varying & set(node.input):
            varying.update(node.output)
    fixed = [node for node in needed if not varying & set(node.output)]
    computed = [node for node in needed if varying & set(node.output)]
    try:
        constants = _evaluate(fixed, values, [i for node in computed for i in node.input if i and i not in varying], opset)
        inputs, hidden = _sizes(computed, step, constants)
        if (1 + inputs + hidden + RANDOM_ROWS) * (inputs + hidden) > PROBE_ELEMENTS:
            raise NotRewritten(DeclineCode.WOULD_GROW, f"input size {inputs} and hidden size {hidden}: too large to read the weights off")
        rows = _probe_rows(inputs, hidden)
        values = _evaluate(computed, constants | {step.x: rows[0], step.hidden: rows[1]}, wanted, opset)
        if step.reset is not None and not step.resets_after:  # the candidate with the reset gate held at one, random on the check's rows
            gate = np.ones_like(rows[1])
            gate[-RANDOM_ROWS:] = np.random.default_rng(1).uniform(0.0, 1.0, (RANDOM_ROWS, hidden))
            without_gate = [node for node in computed if step.reset[0] not in node.output]
            feeds = constants | {step.x: rows[0], step.hidden: rows[1], step.reset[0]: gate.astype(np.float32)}
            values[step.gates[2]] = _evaluate(without_gate, feeds, [step.gates[2]], opset)[step.gates[2]]
            gated_rows = (rows[0], rows[1] * gate)
    except NotRewritten:
        raise
    except Exception as exc:  # an operator the reference evaluator lacks, or sizes that do not fit
        raise NotRewritten(DeclineCode.TOOL_FAILED, f"the gates could not be evaluated: {type(exc).__name__}: {exc}") from None
    for name in wanted:
        if values[name].dtype != np.float32 or values[name].shape != (len(rows[0]), hidden):
            raise NotRewritten(DeclineCode.UNSUPPORTED_TYPE, f"a gate gives {values[name].dtype} of shape {list(values[name].shape)}, "
                                                             "not float32 rows of the hidden size")
    affine = step.gates if step.reset is None else step.gates[:2]
    parts = [_affine(values[name], rows, inputs) for name in affine]
    if step.reset is not None and not step.resets_after:  # a GRU's candidate: affine in the input and the gated hidden state
        parts.append(_affine(values[step.gates[2]], gated_rows, inputs))
    elif step.reset is not None:  # a GRU's candidate: a + r * b, a affine in the input alone, b in the hidden state alone
        reset, scaled = (values[name].astype(np.float64) for name in step.reset)
        parts.append(_affine(values[step.gates[2]] - reset * scaled, rows, inputs))
        parts.append(_affine(scaled, rows, inputs))
        if not (_negligible(parts[2][1], parts[2]) and _negligible(parts[3][0], parts[3])):
            raise NotRewritten(DeclineCode.UNSUPPORTED_FORM, "the candidate state's input and reset-scaled parts are not separate")
    return _layer_weights(step, parts)


def _free_values(body: onnx.GraphProto, step: RecurrentStep, loop: onnx.NodeProto, inits: dict, names: set[str]) -> dict[str, np.ndarray]:
    """The values of the tensors the gates read from outside their own nodes: the body's constants, the carried states
    the body hands back unchanged (from the Loop's inputs) and the main graph's initializers."""
    body_inits = {t.name: t for t in body.initializer}
    passed = {body.input[2 + k].name: loop.input[2 + k] for k in step.passed_through}
    values = {}
    for name in sorted(names):
        source = body_inits.get(name) or inits.get(passed.get(name, name))
        if source is None:
            raise NotRewritten(DeclineCode.NOT_CONSTANT, f"the gates read '{name}', which is not a constant")
        values[name] = to_array(source)
    return values


def _evaluate(nodes: list[onnx.NodeProto], values: dict[str, np.ndarray], wanted: list[str], opset: int) -> dict[str, np.ndarray]:
    """``values`` with the ``wanted`` tensors that ``nodes`` compute from them (onnx's reference evaluator)."""
    from onnx.reference import ReferenceEvaluator

    wanted = [name for name in dict.fromkeys(wanted) if name not in values]
    if not wanted:
        return dict(values)
    feeds = sorted(values)
    graph = helper.make_graph(nodes, "gates", [helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None) for name in feeds],
                              [helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None) for name in wanted])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    results = ReferenceEvaluator(model).run(wanted, {name: values[name] for name in feeds})
    return dict(values) | dict(zip(wanted, results))


def _sizes(computed: list[onnx.NodeProto], step: RecurrentStep, constants: dict[str, np.ndarray]) -> tuple[int, int]:
    """The step input's and the hidden state's sizes: the rows of the constant weights the gates multiply each by."""
    depends = {step.x: {step.x}, step.hidden: {step.hidden}}
    sizes: dict[str, set[int]] = {step.x: set(), step.hidden: set()}
    for node in computed:
        reads = set().union(*(depends.get(i, set()) for i in node.input))
        for output in node.output:
            depends[output] = reads
        if node.op_type not in ("MatMul", "Gemm") or node_attr(node, "transA", 0):
            continue
        weight = constants.get(node.input[1])
        source = depends.get(node.input[0], set())
        if weight is not None and weight.ndim == 2 and len(source) == 1:
            sizes[next(iter(source))].add(weight.shape[1 if node_attr(node, "transB", 0) else 0])
    if len(sizes[step.x]) != 1 or len(sizes[step.hidden]) != 1:
        raise NotRewritten(DeclineCode.UNSUPPORTED_FORM, "the gates do not multiply the step's input and the hidden state by weights of one size each")
    return sizes[step.x].pop(), sizes[step.hidden].pop()


def _probe_rows(inputs: int, hidden: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of (step input, hidden state): zeros, then each unit vector of either, then random rows for the check."""
    count = 1 + inputs + hidden + RANDOM_ROWS
    x = np.zeros((count, inputs), np.float32)
    h = np.zeros((count, hidden), np.float32)
    x[1:1 + inputs] = np.eye(inputs, dtype=np.float32)
    h[1 + inputs:1 + inputs + hidden] = np.eye(hidden, dtype=np.float32)
    rng = np.random.default_rng(0)
    x[-RANDOM_ROWS:] = rng.standard_normal((RANDOM_ROWS, inputs), dtype=np.float32)
    h[-RANDOM_ROWS:] = rng.uniform(-1.0, 1.0, (RANDOM_ROWS, hidden)).astype(np.float32)  # a hidden state is a tanh's output
    return x, h


def _affine(values: np.ndarray, rows: tuple[np.ndarray, np.ndarray], inputs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kernel [D, H], recurrent kernel [H, H], bias [H]) of a tensor evaluated on the probe rows, such that it is
    x @ kernel + h @ recurrent kernel + bias, checked on the random rows."""
    x, h = (r.astype(np.float64) for r in rows)
    values = values.astype(np.float64)
    bias = values[0]
    kernel = values[1:1 + inputs] - bias
    recurrent_kernel = values[1 + inputs:1 + inputs + h.shape[1]] - bias
    expected = x[-RANDOM_ROWS:] @ kernel + h[-RANDOM_ROWS:] @ recurrent_kernel + bias
    if not np.all(np.abs(expected - values[-RANDOM_ROWS:]) <= TOLERANCE * max(1.0, float(np.abs(values).max()))):
        raise NotRewritten(DeclineCode.UNSUPPORTED_FORM, "the gates are not affine in the step's input and the hidden state")
    return kernel, recurrent_kernel, bias


def _negligible(part: np.ndarray, whole: tuple[np.ndarray, ...]) -> bool:
    return float(np.abs(part).max(initial=0.0)) <= TOLERANCE * max(1.0, max(float(np.abs(p).max(initial=0.0)) for p in whole))


def _layer_weights(step: RecurrentStep, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(W [gates x H, D], R [gates x H, H], B [2 x gates x H]) as ONNX's LSTM or GRU reads them, from each gate's
    (kernel, recurrent kernel, bias) in ONNX's order (a GRU's fourth part, where the reset gate scales the recurrent
    term: that term's)."""
    gates = parts[:3] if step.op_type == "GRU" else parts
    weights = np.concatenate([kernel.T for kernel, _, _ in gates])
    recurrent = np.concatenate([(parts[3] if step.resets_after and index == 2 else part)[1].T for index, part in enumerate(gates)])
    input_bias = np.concatenate([bias for _, _, bias in gates])
    recurrent_bias = np.zeros_like(input_bias)
    if step.resets_after:  # the reset gate scales the candidate's recurrent term with its bias (linear_before_reset)
        recurrent_bias[-len(parts[3][2]):] = parts[3][2]
    return weights.astype(np.float32), recurrent.astype(np.float32), np.concatenate([input_bias, recurrent_bias]).astype(np.float32)


def _as_layer(loop: onnx.NodeProto, step: RecurrentStep, weights: tuple[np.ndarray, np.ndarray, np.ndarray], consumers: dict, outputs: set[str],
              taken: set[str], opset: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The LSTM or GRU node, and the Squeeze/Unsqueeze around it, that write the Loop's outputs under their names; the
    new initializers."""
    kernel, recurrent_kernel, bias = weights
    hidden = recurrent_kernel.shape[1]
    carried = len(loop.input) - 2
    base = loop.name or loop.output[0]

    def name(suffix: str) -> str:
        return unique_name(f"{base}/{suffix}", taken)

    def read(tensor: str) -> bool:
        return bool(tensor) and (bool(consumers.get(tensor)) or tensor in outputs)

    if read(loop.output[step.counter]):
        raise NotRewritten(DeclineCode.UNSUPPORTED_FORM, "the step counter's final value is read")
    initializers = [from_array(kernel[None], name("W")), from_array(recurrent_kernel[None], name("R")), from_array(bias[None], name("B"))]
    nodes: list[onnx.NodeProto] = []

    def axes_tensor(axis: int) -> str:
        axes = name("axes")
        initializers.append(from_array(np.array([axis], np.int64), axes))
        return axes

    def axes_op(op_type: str, tensor: str, axis: int, out: str) -> str:
        nodes.append(with_axes(op_type, tensor, out, axis, opset, name(op_type), axes_tensor))
        return out

    states = [axes_op("Unsqueeze", loop.input[2 + step.hidden_state], 0, name("initial_h"))]
    if step.cell_state is not None:
        states.append(axes_op("Unsqueeze", loop.input[2 + step.cell_state], 0, name("initial_c")))
    every_step, last_hidden = name("Y"), name("Y_h")
    last_cell = name("Y_c") if step.cell_state is not None else None
    attributes: dict = {"hidden_size": hidden}
    if step.resets_after:
        attributes["linear_before_reset"] = 1  # Keras's reset_after: the reset gate scales the recurrent term, bias included
    if step.op_type == "RNN" and step.activation[0] != "Tanh":
        attributes["activations"] = [step.activation[0]]
    elif step.op_type != "RNN" and step.activation[0] != "Sigmoid":  # the tanh take no parameters: the one alpha and beta are the gates'
        tanh = ["Tanh", "Tanh"] if step.op_type == "LSTM" else ["Tanh"]
        attributes |= {"activations": [step.activation[0], *tanh], "activation_alpha": [step.activation[1]],
                       "activation_beta": [step.activation[2]]}
    layer_outputs = [every_step, last_hidden] + ([last_cell] if step.cell_state is not None else [])
    nodes.append(helper.make_node(step.op_type, [step.sequence, *(t.name for t in initializers[:3]), "", *states], layer_outputs,
                                  name=name(step.op_type), **attributes))
    for k, state in ((step.hidden_state, last_hidden), (step.cell_state, last_cell)):
        if k is not None and read(loop.output[k]):
            axes_op("Squeeze", state, 0, loop.output[k])
    for k in (*step.passed_through, *(position for position, _, _ in step.limits if position is not None)):
        if read(loop.output[k]):
            nodes.append(helper.make_node("Identity", [loop.input[2 + k]], [loop.output[k]], name=name("Identity")))
    scans = [o for o in loop.output[carried:] if read(o)]
    if scans:
        axes_op("Squeeze", every_step, 1, scans[0])
        nodes += [helper.make_node("Identity", [scans[0]], [scan], name=name("Identity")) for scan in scans[1:]]
    return nodes, initializers
