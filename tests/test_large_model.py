"""A model whose weights exceed 2 GB loads and saves through external data with one copy in memory."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxslim.runtime import Runner

ROWS, COLS, TENSORS = 1 << 20, 64, 9  # 9 tensors of 256 MiB: 2.25 GiB of weights
TENSOR_BYTES = ROWS * COLS * 4


def write_big_model(folder) -> int:
    """An embedding-style model whose weights are written straight to an external data file."""
    data_path = folder / "big.onnx.data"
    initializers, nodes = [], []
    chunk = np.arange(COLS * 4096, dtype=np.float32).reshape(4096, COLS) / 1e6
    with open(data_path, "wb") as handle:
        for index in range(TENSORS):
            offset = handle.tell()
            for block in range(ROWS // 4096):
                handle.write((chunk + index + block).tobytes())
            tensor = TensorProto(name=f"table_{index}", data_type=TensorProto.FLOAT, dims=[ROWS, COLS])
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(TENSOR_BYTES))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            initializers.append(tensor)
            nodes.append(helper.make_node("Gather", [tensor.name, "ids"], [f"rows_{index}"]))
    total = "rows_0"
    for index in range(1, TENSORS):
        nodes.append(helper.make_node("Add", [total, f"rows_{index}"], [f"sum_{index}"]))
        total = f"sum_{index}"
    nodes.append(helper.make_node("Identity", [total], ["out"]))
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, COLS])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "big.onnx"))
    return TENSORS * TENSOR_BYTES


CHILD = textwrap.dedent(
    """
    import json, sys
    from onnxslim.memory import peak_rss_bytes
    import numpy as np
    from onnxslim.ir import load_model
    from onnxslim.runtime.write import write_verified
    from onnxslim.runtime import Runner
    source, target = sys.argv[1], sys.argv[2]
    model = load_model(source)
    write_verified(model, target, source=source)
    out = Runner(target).run({"ids": np.array([0, 5], dtype=np.int64)})[0]
    print(json.dumps({"peak_bytes": peak_rss_bytes(), "first": float(out[0, 0])}))
    """
)


@pytest.mark.slow
def test_model_over_2gb_round_trips_with_one_copy_in_memory(tmp_path):
    source_dir, out_dir = tmp_path / "in", tmp_path / "out"
    source_dir.mkdir()
    out_dir.mkdir()
    weights = write_big_model(source_dir)
    assert weights > 2 * 1024**3
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(source_dir / "big.onnx"), str(out_dir / "slim.onnx")], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert (out_dir / "slim.onnx.data").stat().st_size == weights
    assert (out_dir / "slim.onnx").stat().st_size < 1 << 20
    expected = sum(index / 1.0 for index in range(TENSORS))  # row 0 of block 0 of each table is 0 + index
    assert stats["first"] == pytest.approx(expected)
    # One copy of the weights, plus one tensor in flight and the interpreter: never two copies.
    print(f"\nweights {weights / 1e9:.2f} GB, peak RSS {stats['peak_bytes'] / 1e9:.2f} GB ({stats['peak_bytes'] / weights:.2f}x)")
    assert stats["peak_bytes"] < weights + 2 * TENSOR_BYTES + 400 * 1024**2


WIDTH, HIDDEN, BLOCKS = 4096, 16384, 4  # 8 matrices of 256 MiB: 2 GiB of weights, over protobuf's limit


def write_big_mlp(folder) -> int:
    """Residual MLP blocks (MatMul -> Add bias -> Relu -> MatMul -> Add) with weights in an external data file."""
    rng = np.random.default_rng(0)
    tile = rng.standard_normal((512, HIDDEN), dtype=np.float32)
    initializers, nodes, current, total = [], [], "x", 0
    with open(folder / "mlp.onnx.data", "wb") as handle:

        def put(name, shape, blocks):
            nonlocal total
            offset = handle.tell()
            for block in blocks:
                handle.write(block.tobytes())
            tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", "mlp.onnx.data"), ("offset", str(offset)), ("length", str(handle.tell() - offset))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            initializers.append(tensor)
            total += handle.tell() - offset

        for b in range(BLOCKS):
            # rows of a random tile with a different scale per block of rows: distinct channel norms to rank
            put(f"up{b}", (WIDTH, HIDDEN), (tile * np.float32((r + 1) / WIDTH**0.5 / 8) for r in range(WIDTH // 512)))
            put(f"up{b}_bias", (HIDDEN,), [np.linspace(-0.1, 0.1, HIDDEN, dtype=np.float32)])
            down_tile = tile.reshape(HIDDEN, 512)
            put(f"down{b}", (HIDDEN, WIDTH), (down_tile[:, :].repeat(WIDTH // 512, axis=1) * np.float32(1 / HIDDEN**0.5),))
            nodes += [
                helper.make_node("MatMul", [current, f"up{b}"], [f"h{b}"]),
                helper.make_node("Add", [f"h{b}", f"up{b}_bias"], [f"hb{b}"]),
                helper.make_node("Relu", [f"hb{b}"], [f"r{b}"]),
                helper.make_node("MatMul", [f"r{b}", f"down{b}"], [f"d{b}"]),
                helper.make_node("Add", [current, f"d{b}"], [f"y{b}"]),
            ]
            current = f"y{b}"
    graph = helper.make_graph(
        nodes,
        "big_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, [1, WIDTH])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "mlp.onnx"))
    return total


RUN_CLI = textwrap.dedent(
    """
    import json, sys
    from onnxslim.memory import peak_rss_bytes
    from onnxslim.cli import main
    code = main(sys.argv[1:], standalone_mode=False)
    print(json.dumps({"peak_bytes": peak_rss_bytes(), "code": code}))
    """
)


def run_cli_measured(*args) -> dict:
    result = subprocess.run([sys.executable, "-c", RUN_CLI, *map(str, args)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_model_over_2gb_quantizes_and_prunes_with_weights_left_on_disk(tmp_path):
    source_dir, out_dir = tmp_path / "in", tmp_path / "out"
    source_dir.mkdir()
    out_dir.mkdir()
    weights = write_big_mlp(source_dir)
    assert weights > 2 * 1024**3
    source = source_dir / "mlp.onnx"
    stamp = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in source_dir.iterdir()}

    quantized = run_cli_measured(
        "quantize", source, "-o", out_dir / "q.onnx", "--data", "random", "--latency-runs", "5", "--report", out_dir / "q.json"
    )
    report = json.loads((out_dir / "q.json").read_text())
    assert report["fidelity"][0]["cosine"] > 0.99
    assert report["sizes"]["quantized_bytes"] < 0.3 * weights
    assert (out_dir / "q.onnx.data").stat().st_size < 0.3 * weights

    pruned = run_cli_measured("prune", source, "-o", out_dir / "p.onnx", "--ratio", "0.5", "--report", out_dir / "p.json")
    report = json.loads((out_dir / "p.json").read_text())
    assert report["parameters"]["after"] / report["parameters"]["before"] == pytest.approx(0.5, abs=0.01)
    out = Runner(str(out_dir / "p.onnx")).run({"x": np.ones((1, WIDTH), np.float32)})[0]
    assert out.shape == (1, WIDTH) and np.isfinite(out).all()

    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in source_dir.iterdir()} == stamp
    # The weights stay on disk: onnxruntime's session holds the one copy; interleaved timing adds the INT8 model.
    print(
        f"\nweights {weights / 1e9:.2f} GB; peak RSS quantize {quantized['peak_bytes'] / 1e9:.2f} GB "
        f"({quantized['peak_bytes'] / weights:.2f}x), prune {pruned['peak_bytes'] / 1e9:.2f} GB ({pruned['peak_bytes'] / weights:.2f}x)"
    )
    assert quantized["peak_bytes"] < 1.45 * weights
    assert pruned["peak_bytes"] < 1.2 * weights
