"""A model whose weights exceed 2 GB loads and saves through external data with one copy in memory."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

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
    import json, resource, sys
    import numpy as np
    from onnxslim.ir import load_model
    from onnxslim.ir.write import write_verified
    from onnxslim.runtime import Runner
    source, target = sys.argv[1], sys.argv[2]
    model = load_model(source)
    write_verified(model, target, source=source)
    out = Runner(target).run({"ids": np.array([0, 5], dtype=np.int64)})[0]
    print(json.dumps({"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "first": float(out[0, 0])}))
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
