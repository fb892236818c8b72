"""ONNX Runtime on one thread, timed by on-CPU time: the counterpart of the `cpu time` lines of
`cargo bench --bench kernels` (same model: 4 x 4096x4096 linear + ReLU, `quantize_dynamic` int8).

On-CPU time of the calling thread (`time.thread_time_ns`) is what the shared 2-core dev machines
disturb least (wall time there moves 2-5x with other engineers' builds). With
`intra_op_num_threads = 1` ONNX Runtime computes on the calling thread (checked: on-CPU ≈ wall
when the machine is quiet).

Setup: python3 -m venv /tmp/ort-venv && /tmp/ort-venv/bin/pip install numpy onnx onnxruntime
Run:   /tmp/ort-venv/bin/python scripts/ort_cputime.py
"""
import os, sys, tempfile, time
import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
import onnx  # noqa: E402


def mlp_onnx(layers, path):
    nodes, inits, h = [], [], "x"
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(np.ascontiguousarray(w.T), f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(layers) - 1
        nodes += [helper.make_node("MatMul", [h, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], ["y" if last else f"a{i}"])]
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i}"])); h = f"h{i}"
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", layers[0][0].shape[1]])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", layers[-1][0].shape[0]])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]); m.ir_version = 8
    onnx.save(m, path)


def cpu_median(s, x, n):
    for _ in range(2):
        s.run(None, {"x": x})
    wall = []
    c = time.thread_time_ns()
    for _ in range(n):
        t = time.perf_counter()
        s.run(None, {"x": x})
        wall.append((time.perf_counter() - t) * 1e3)
    # Mean on-CPU time (as the Rust side, whose counter is tick-granular), median wall time.
    return (time.thread_time_ns() - c) / 1e6 / n, float(np.median(wall))


rng = np.random.default_rng(0)
big = [(rng.standard_normal((4096, 4096), dtype=np.float32) / np.float32(64.0), np.zeros(4096, np.float32)) for _ in range(4)]
tmp = tempfile.mkdtemp(prefix="ort-cpu-")
bf, bq = os.path.join(tmp, "f32.onnx"), os.path.join(tmp, "int8.onnx")
mlp_onnx(big, bf); del big
quantize_dynamic(bf, bq, weight_type=QuantType.QInt8)
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
for name, path in (("int8", bq), ("f32", bf)):
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    for rows in (1, 64):
        x = rng.standard_normal((rows, 4096), dtype=np.float32)
        c, w = cpu_median(s, x, 100 if rows == 1 else 16)
        print(f"ort {ort.__version__} {name} MLP 4 x 4096², batch {rows}, 1 thread: {c:.2f} ms on-CPU ({w:.2f} ms wall)", flush=True)
    del s
for f in (bf, bq):
    os.remove(f)
