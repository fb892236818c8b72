#!/usr/bin/env python3
"""ONNX round trip against the real runtime, through a running modelpress server.

Builds ONNX models with the `onnx` package (the digits teacher MLP from its real weights, the
mnist CNN of examples/mnist-cnn.spec.json, a depthwise-separable CNN and a small residual net),
imports each with `POST /v1/models?format=onnx`, predicts through the API and compares with ONNX
Runtime on the same inputs (max abs <= 1e-4). Then trains the mnist CNN with a modelpress `train`
job, compresses models with modelpress jobs (int8, f16, magnitude pruning), downloads each as ONNX
(`GET /v1/models/{id}/download?format=onnx`), runs it in ONNX Runtime, and checks that the
argmax agrees with modelpress's own predictions on every test sample and that the accuracy is
equal. Prints one line per check and a JSON summary; exits 1 on any failure.

    python3 scripts/onnx_roundtrip.py --url http://127.0.0.1:PORT [--quick] [--out summary.json]

Needs: onnx, onnxruntime, numpy (scripts/onnx_roundtrip.sh installs them in a venv).
"""
import argparse
import json
import os
import struct
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
FAILURES = []
SUMMARY = {}


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        FAILURES.append(what)


# ---------------------------------------------------------------- HTTP
class Api:
    def __init__(self, base):
        self.base = base.rstrip("/")

    def req(self, method, path, body=None, ctype=None, raw=False):
        data = None
        headers = {}
        if body is not None:
            if isinstance(body, (bytes, bytearray)):
                data = bytes(body)
                headers["Content-Type"] = ctype or "application/octet-stream"
            else:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
        r = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(r, timeout=600) as resp:
                out = resp.read()
                return resp.status, (out if raw else json.loads(out or b"null"))
        except urllib.error.HTTPError as e:
            out = e.read()
            try:
                return e.code, json.loads(out)
            except ValueError:
                return e.code, out

    def upload_onnx(self, model_bytes, name):
        st, body = self.req("POST", f"/v1/models?format=onnx&name={name}", model_bytes)
        if st != 201:
            raise RuntimeError(f"ONNX upload of {name} refused: {st} {body}")
        return body

    def upload_dataset(self, path, name):
        with open(path, "rb") as f:
            st, body = self.req("POST", f"/v1/datasets?name={name}", f.read())
        assert st == 201, (st, body)
        return body["id"]

    def job(self, kind, model_id, params, timeout=1800):
        st, body = self.req("POST", "/v1/jobs", {"kind": kind, "model_id": model_id, "params": params})
        assert st == 202, (st, body)
        jid = body["id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            st, j = self.req("GET", f"/v1/jobs/{jid}")
            if j["status"] in ("succeeded", "failed", "cancelled"):
                if j["status"] != "succeeded":
                    raise RuntimeError(f"{kind} job failed: {j}")
                return j
            time.sleep(0.2)
        raise RuntimeError(f"{kind} job {jid} did not finish in {timeout} s")

    def predict(self, model_id, x, output="logits"):
        """Outputs for every row of x, in chunks of 500 rows. `logits` of a network ending in
        softmax are log-probabilities; ask for `probabilities` to compare with its ONNX output."""
        outs = []
        for i in range(0, len(x), 500):
            body = {"inputs": x[i:i + 500].tolist(), "output": output}
            st, body = self.req("POST", f"/v1/models/{model_id}/predict", body)
            assert st == 200, (st, body)
            outs.append(np.asarray(body["outputs"], dtype=np.float32))
        return np.concatenate(outs)

    def download_onnx(self, model_id):
        st, body = self.req("GET", f"/v1/models/{model_id}/download?format=onnx", raw=True)
        assert st == 200, (st, body)
        return body


# ---------------------------------------------------------------- data
def read_safetensors(path):
    dt = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "U8": np.uint8, "I8": np.int8}
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(data[a:b], dtype=dt[v["dtype"]]).reshape(v["shape"])
    return out


def ort_run(model_bytes, x):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: x})[0]


# ---------------------------------------------------------------- model builders
class Builder:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.k = 0

    def init(self, name, arr, float_data=False):
        arr = np.asarray(arr, dtype=np.float32)
        if float_data:  # helper.make_tensor writes float_data, numpy_helper raw_data: exercise both
            self.inits.append(helper.make_tensor(name, TensorProto.FLOAT, arr.shape, arr.flatten().tolist()))
        else:
            self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def rand(self, name, shape, fan_in):
        return self.init(name, self.rng.normal(0, np.sqrt(2.0 / fan_in), shape))

    def op(self, op, inputs, **attrs):
        self.k += 1
        out = f"{op.lower()}_{self.k}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{self.k}", **attrs))
        return out

    def conv(self, x, name, cin, cout, k, stride=1, pad=0, group=1, bias=True):
        w = self.rand(f"{name}.weight", (cout, cin // group, k, k), cin // group * k * k)
        ins = [x, w]
        if bias:
            ins.append(self.init(f"{name}.bias", self.rng.normal(0, 0.05, cout)))
        return self.op("Conv", ins, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, group=group)

    def bn(self, x, name, c):
        s = self.init(f"{name}.weight", self.rng.uniform(0.5, 1.5, c))
        b = self.init(f"{name}.bias", self.rng.normal(0, 0.1, c))
        m = self.init(f"{name}.running_mean", self.rng.normal(0, 0.1, c))
        v = self.init(f"{name}.running_var", self.rng.uniform(0.5, 1.5, c))
        return self.op("BatchNormalization", [x, s, b, m, v], epsilon=1e-5)

    def clip6(self, x):
        lo = self.init(f"clip_min_{self.k}", np.array(0.0))
        hi = self.init(f"clip_max_{self.k}", np.array(6.0))
        return self.op("Clip", [x, lo, hi])

    def gemm(self, x, name, cin, cout, w=None, b=None):
        w = self.init(f"{name}.weight", w if w is not None else self.rng.normal(0, np.sqrt(1.0 / cin), (cout, cin)))
        b = self.init(f"{name}.bias", b if b is not None else np.zeros(cout), float_data=True)
        return self.op("Gemm", [x, w, b], transB=1)

    def model(self, x_type, x_shape, y, classes, opset=17):
        self.nodes.append(helper.make_node("Identity", [y], ["logits"], name="output"))
        g = helper.make_graph(
            self.nodes, "g", [helper.make_tensor_value_info("input", x_type, ["N"] + list(x_shape))],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnx_roundtrip.py")
        m.ir_version = 8
        onnx.checker.check_model(m, full_check=True)
        return m.SerializeToString()


def mnist_preprocess(b):
    x = b.op("Cast", ["input"], to=TensorProto.FLOAT)
    x = b.op("Mul", [x, b.init("pre.scale", np.array(1 / 255.0))])
    x = b.op("Sub", [x, b.init("pre.mean", np.array(0.1307))])
    return b.op("Div", [x, b.init("pre.std", np.array(0.3081))])


def digits_teacher():
    t = read_safetensors(os.path.join(FIX, "teacher_digits.safetensors"))
    b = Builder(0)
    x = b.gemm("input", "fc1", 64, 256, t["fc1.weight"], t["fc1.bias"])
    x = b.op("Relu", [x])
    x = b.gemm(x, "fc2", 256, 256, t["fc2.weight"], t["fc2.bias"])
    x = b.op("Relu", [x])
    x = b.gemm(x, "fc3", 256, 10, t["fc3.weight"], t["fc3.bias"])
    return b.model(TensorProto.FLOAT, [64], x, 10, opset=13)


def mnist_cnn():
    """examples/mnist-cnn.spec.json as ONNX (u8 input, Cast + Mul/Sub/Div preprocessing)."""
    b = Builder(1)
    x = mnist_preprocess(b)
    x = b.conv(x, "features.0", 1, 8, 3, pad=1, bias=False)
    x = b.op("Relu", [b.bn(x, "features.1", 8)])
    x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.conv(x, "features.4", 8, 16, 3, pad=1, bias=False)
    x = b.op("Relu", [b.bn(x, "features.5", 16)])
    x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.op("Flatten", [x], axis=1)
    x = b.op("Dropout", [x, b.init("drop.ratio", np.array(0.1))])
    x = b.gemm(x, "classifier", 784, 10)
    return b.model(TensorProto.UINT8, [1, 28, 28], x, 10, opset=17)


def dws_cnn():
    """Depthwise-separable CNN (MobileNet-style, ReLU6 as Clip, average pool)."""
    b = Builder(2)
    x = mnist_preprocess(b)
    x = b.conv(x, "stem", 1, 8, 3, stride=2, pad=1, bias=False)
    x = b.clip6(b.bn(x, "stem_bn", 8))
    for i, (cin, cout, s) in enumerate([(8, 16, 1), (16, 32, 2)]):
        x = b.conv(x, f"block{i}.dw", cin, cin, 3, stride=s, pad=1, group=cin, bias=False)
        x = b.clip6(b.bn(x, f"block{i}.dw_bn", cin))
        x = b.conv(x, f"block{i}.pw", cin, cout, 1, bias=False)
        x = b.clip6(b.bn(x, f"block{i}.pw_bn", cout))
    x = b.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.op("GlobalAveragePool", [x])
    x = b.op("Flatten", [x], axis=1)
    x = b.gemm(x, "fc", 32, 10)
    return b.model(TensorProto.UINT8, [1, 28, 28], x, 10, opset=21)


def resnet():
    """Small residual net: identity block and projection block (PyTorch names), Softmax out."""
    b = Builder(3)
    x = mnist_preprocess(b)
    x = b.op("Relu", [b.bn(b.conv(x, "conv1", 1, 8, 3, stride=2, pad=1, bias=False), "bn1", 8)])
    h = b.op("Relu", [b.bn(b.conv(x, "layer1.0.conv1", 8, 8, 3, pad=1, bias=False), "layer1.0.bn1", 8)])
    h = b.bn(b.conv(h, "layer1.0.conv2", 8, 8, 3, pad=1, bias=False), "layer1.0.bn2", 8)
    x = b.op("Relu", [b.op("Add", [h, x])])
    h = b.op("Relu", [b.bn(b.conv(x, "layer2.0.conv1", 8, 16, 3, stride=2, pad=1, bias=False), "layer2.0.bn1", 16)])
    h = b.bn(b.conv(h, "layer2.0.conv2", 16, 16, 3, pad=1, bias=False), "layer2.0.bn2", 16)
    sc = b.bn(b.conv(x, "layer2.0.downsample.0", 8, 16, 1, stride=2, bias=False), "layer2.0.downsample.1", 16)
    x = b.op("Relu", [b.op("Add", [sc, h])])
    x = b.op("GlobalAveragePool", [x])
    x = b.op("Reshape", [x, b.inits.append(numpy_helper.from_array(np.array([0, -1], np.int64), "flat")) or "flat"])
    x = b.gemm(x, "fc", 16, 10)
    x = b.op("Softmax", [x], axis=-1)
    return b.model(TensorProto.UINT8, [1, 28, 28], x, 10, opset=19)


# ---------------------------------------------------------------- checks
def compare_import(api, name, model_bytes, x):
    m = api.upload_onnx(model_bytes, name)
    ours = api.predict(m["id"], x, output=m["spec"]["output"].get("kind", "logits"))
    theirs = ort_run(model_bytes, x)
    diff = float(np.max(np.abs(ours - theirs)))
    check(diff <= 1e-4, f"{name}: import → predict vs ONNX Runtime, max abs diff {diff:.2e} (≤ 1e-4)")
    SUMMARY.setdefault(name, {})["import_max_abs_diff"] = diff
    return m


def compare_export(api, label, model_id, x, y):
    """Downloads model_id as ONNX, runs it in ORT; argmax must agree with modelpress on every row."""
    ours = api.predict(model_id, x)
    data = api.download_onnx(model_id)
    theirs = ort_run(data, x)
    agree = float(np.mean(ours.argmax(1) == theirs.argmax(1)))
    acc_ours, acc_ort = float(np.mean(ours.argmax(1) == y)), float(np.mean(theirs.argmax(1) == y))
    check(agree == 1.0 and acc_ours == acc_ort,
          f"{label}: ONNX export in ONNX Runtime: argmax agreement {agree:.2%}, accuracy modelpress "
          f"{acc_ours:.2%} / ORT {acc_ort:.2%}, file {len(data)} bytes")
    SUMMARY[label] = {"agreement": agree, "accuracy_modelpress": acc_ours, "accuracy_ort": acc_ort,
                      "onnx_bytes": len(data), "max_abs_diff": float(np.max(np.abs(ours - theirs)))}
    return data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--quick", action="store_true", help="fewer training epochs and test rows (CI)")
    ap.add_argument("--out", help="write the JSON summary here")
    a = ap.parse_args()
    api = Api(a.url)
    digits = read_safetensors(os.path.join(FIX, "digits.safetensors"))
    mnist = read_safetensors(os.path.join(FIX, "mnist5k.safetensors"))
    dx, dy = digits["test_x"].astype(np.float32), digits["test_y"]
    n_mnist = 300 if a.quick else 1000
    mx, my = mnist["test_x"][:n_mnist], mnist["test_y"][:n_mnist]
    mnist_ds = api.upload_dataset(os.path.join(FIX, "mnist5k.safetensors"), "mnist5k")

    # 1. Import: modelpress predictions == ONNX Runtime on the same file.
    teacher = compare_import(api, "digits-teacher", digits_teacher(), dx)
    cnn = compare_import(api, "mnist-cnn", mnist_cnn(), mx)
    dws = compare_import(api, "dws-cnn", dws_cnn(), mx)
    res = compare_import(api, "resnet", resnet(), mx)
    check([l["type"] for l in res["spec"]["layers"]].count("residual") == 2, "resnet: two residual blocks in the spec")

    # 2. Weights from modelpress training jobs.
    epochs = 1 if a.quick else 3
    trained = {}
    for name, m in [("mnist-cnn", cnn), ("dws-cnn", dws)]:
        j = api.job("train", m["id"], {"dataset_id": mnist_ds, "epochs": epochs, "lr": 0.01 if name == "mnist-cnn" else 0.05})
        trained[name] = j["output_model_id"]

    # 3. Export every variant, run it in ONNX Runtime.
    f32_teacher = compare_export(api, "digits-teacher f32", teacher["id"], dx, dy)
    variants = {"f32": teacher["id"]}
    for scheme in ["int8", "f16"]:
        variants[scheme] = api.job("quantize", teacher["id"], {"scheme": scheme})["output_model_id"]
    variants["pruned-50%"] = api.job("prune", teacher["id"], {"sparsity": 0.5})["output_model_id"]
    for k, mid in variants.items():
        if k == "f32":
            continue
        data = compare_export(api, f"digits-teacher {k}", mid, dx, dy)
        if k == "int8":
            ratio = len(data) / len(f32_teacher)
            acc = SUMMARY["digits-teacher int8"]["accuracy_ort"]
            check(ratio <= 0.28 and acc >= 0.975,
                  f"digits-teacher int8 ONNX: {ratio:.1%} of the f32 file (≤ 28 %), ORT accuracy {acc:.2%} (≥ 97.50 %)")
            SUMMARY["digits-teacher int8"]["ratio_to_f32"] = ratio
    for name, mid in trained.items():
        data = compare_export(api, f"{name} trained f32", mid, mx, my)
        # Round trip: the exported ONNX imported again has the identical accuracy.
        again = api.upload_onnx(data, f"{name}-again")
        acc2 = float(np.mean(api.predict(again["id"], mx).argmax(1) == my))
        acc1 = SUMMARY[f"{name} trained f32"]["accuracy_modelpress"]
        check(acc1 == acc2, f"{name}: ONNX → modelpress → ONNX → modelpress accuracy {acc1:.2%} → {acc2:.2%}")
        q = api.job("quantize", mid, {"scheme": "int8"})["output_model_id"]
        compare_export(api, f"{name} trained int8", q, mx, my)
    # Teacher: ONNX → modelpress → ONNX → modelpress keeps the accuracy.
    again = api.upload_onnx(f32_teacher, "teacher-again")
    acc2 = float(np.mean(api.predict(again["id"], dx).argmax(1) == dy))
    check(acc2 == SUMMARY["digits-teacher f32"]["accuracy_modelpress"] and acc2 == 0.975,
          f"digits-teacher: ONNX round trip accuracy {acc2:.2%} (97.50 %)")

    print(json.dumps(SUMMARY, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(SUMMARY, f, indent=1)
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
