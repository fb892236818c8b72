#!/usr/bin/env python3
"""Independent numpy reference for modelpress's execution engine (src/nn).

Computes expected network outputs with plain numpy (float64) — no candle, no PyTorch — and
writes weights, inputs and expected outputs to tests/fixtures/reference/*.safetensors, which the
Rust tests in src/nn/model.rs compare against (max abs diff <= 1e-4).

  (a) digits_teacher.safetensors: the digits teacher (tests/fixtures/teacher_digits.safetensors)
      on the first 32 samples of tests/fixtures/digits.safetensors test_x -> `x`, `logits`.
  (b) cnn.safetensors + cnn.spec.json: a seeded CNN (u8 input with per-channel preprocessing,
      conv2d, batch_norm 2d/1d with non-trivial running stats, relu, relu6, a depthwise conv,
      a residual block with a projection shortcut, max/avg pooling with padding, dilation,
      gelu, global_avg_pool, linear) -> weights by state_dict name, `input`, `expected`.
  (c) mlp.safetensors + mlp.spec.json: layer_norm, tanh, sigmoid, gelu (tanh approximation),
      reshape, flatten, a residual block with identity shortcut and a softmax output.

Needs only numpy. Run from the repository root: python3 scripts/reference_forward.py
Safetensors is written by hand (8-byte little-endian header length, JSON header, raw data).
"""

import json
import math
import os
import struct

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(FIX, "reference")

DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "U8": np.uint8, "I32": np.int32}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        arr = np.frombuffer(data[base + start : base + end], dtype=DTYPES[info["dtype"]])
        out[name] = arr.reshape(info["shape"])
    return out


def write_safetensors(path, tensors, metadata=None):
    names = {np.dtype(np.float32): "F32", np.dtype(np.uint8): "U8", np.dtype(np.int64): "I64"}
    header = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": names[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


# ----------------------------------------------------------------------------------------------
# Layers (float64, NCHW, PyTorch semantics)


def linear(x, w, b):
    y = x @ w.T
    return y + b if b is not None else y


def conv2d(x, w, b, stride=1, padding=(0, 0), dilation=1, groups=1):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ph, pw = padding
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph : ph + h, pw : pw + wd] = x
    oh = (h + 2 * ph - dilation * (kh - 1) - 1) // stride + 1
    ow = (wd + 2 * pw - dilation * (kw - 1) - 1) // stride + 1
    og = o // groups
    y = np.zeros((n, o, oh, ow))
    for g in range(groups):
        xs = xp[:, g * cg : (g + 1) * cg]
        ws = w[g * og : (g + 1) * og]
        for i in range(kh):
            for j in range(kw):
                r0, c0 = i * dilation, j * dilation
                patch = xs[:, :, r0 : r0 + stride * (oh - 1) + 1 : stride, c0 : c0 + stride * (ow - 1) + 1 : stride]
                y[:, g * og : (g + 1) * og] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    if b is not None:
        y += b[None, :, None, None]
    return y


def batch_norm(x, weight, bias, mean, var, eps=1e-5):
    shape = [1, -1] + [1] * (x.ndim - 2)
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    if weight is not None:
        y = y * weight.reshape(shape) + bias.reshape(shape)
    return y


def pool2d(x, k, s, p, kind):
    n, c, h, w = x.shape
    fill = -np.inf if kind == "max" else 0.0
    xp = np.full((n, c, h + 2 * p[0], w + 2 * p[1]), fill)
    xp[:, :, p[0] : p[0] + h, p[1] : p[1] + w] = x
    oh = (h + 2 * p[0] - k[0]) // s[0] + 1
    ow = (w + 2 * p[1] - k[1]) // s[1] + 1
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = xp[:, :, i * s[0] : i * s[0] + k[0], j * s[1] : j * s[1] + k[1]]
            y[:, :, i, j] = win.max(axis=(2, 3)) if kind == "max" else win.mean(axis=(2, 3))
    return y


def layer_norm(x, weight, bias, dims, eps=1e-5):
    axes = tuple(range(x.ndim - dims, x.ndim))
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * weight + bias


_erf = np.vectorize(math.erf)


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def relu(x):
    return np.maximum(x, 0.0)


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------------------


def f32(a):
    return np.asarray(a, dtype=np.float32)


def digits_teacher():
    t = read_safetensors(os.path.join(FIX, "teacher_digits.safetensors"))
    d = read_safetensors(os.path.join(FIX, "digits.safetensors"))
    x = d["test_x"][:32].astype(np.float64)
    p = {k: v.astype(np.float64) for k, v in t.items()}
    h = relu(linear(x, p["fc1.weight"], p["fc1.bias"]))
    h = relu(linear(h, p["fc2.weight"], p["fc2.bias"]))
    logits = linear(h, p["fc3.weight"], p["fc3.bias"])
    write_safetensors(
        os.path.join(OUT, "digits_teacher.safetensors"),
        {"x": f32(d["test_x"][:32]), "logits": f32(logits)},
        {"generator": "scripts/reference_forward.py", "what": "teacher_digits on digits test_x[:32]"},
    )
    full = d["test_x"].astype(np.float64)
    h = relu(linear(full, p["fc1.weight"], p["fc1.bias"]))
    h = relu(linear(h, p["fc2.weight"], p["fc2.bias"]))
    pred = linear(h, p["fc3.weight"], p["fc3.bias"]).argmax(axis=1)
    print("digits teacher: %d/%d correct on the test split" % ((pred == d["test_y"]).sum(), len(pred)))


CNN_SPEC = {
    "format": "modelpress.spec",
    "version": 1,
    "input": {
        "shape": [3, 12, 12],
        "dtype": "u8",
        "preprocess": {"scale": 1.0 / 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    },
    "output": {"kind": "logits", "classes": 10},
    "layers": [
        {"type": "conv2d", "name": "stem", "in_channels": 3, "out_channels": 8, "kernel_size": 3, "padding": 1, "bias": False},
        {"type": "batch_norm", "name": "stem_bn", "num_features": 8},
        {"type": "relu"},
        {
            "type": "residual",
            "body": [
                {"type": "conv2d", "in_channels": 8, "out_channels": 8, "kernel_size": 3, "padding": 1, "groups": 8},
                {"type": "batch_norm", "num_features": 8, "eps": 0.001},
                {"type": "relu6"},
                {"type": "conv2d", "in_channels": 8, "out_channels": 16, "kernel_size": 1},
            ],
            "shortcut": [{"type": "conv2d", "in_channels": 8, "out_channels": 16, "kernel_size": 1, "bias": False}],
        },
        {"type": "max_pool2d", "kernel_size": 3, "stride": 2, "padding": 1},
        {"type": "conv2d", "in_channels": 16, "out_channels": 16, "kernel_size": [3, 3], "padding": 2, "dilation": 2},
        {"type": "gelu"},
        {"type": "conv2d", "in_channels": 16, "out_channels": 12, "kernel_size": [3, 1], "stride": 2, "padding": [1, 0]},
        {"type": "avg_pool2d", "kernel_size": 2, "stride": 1, "padding": 1},
        {
            "type": "sequential",
            "name": "head",
            "layers": [
                {"type": "global_avg_pool"},
                {"type": "batch_norm", "num_features": 12},
                {"type": "dropout", "p": 0.3},
                {"type": "linear", "in_features": 12, "out_features": 10},
            ],
        },
    ],
}


def cnn():
    rng = np.random.default_rng(20240611)
    W = {}

    def conv_w(name, o, i, kh, kw, bias=True):
        bound = 1.0 / math.sqrt(i * kh * kw)
        W[name + ".weight"] = f32(rng.uniform(-bound, bound, (o, i, kh, kw)) * 2.0)
        if bias:
            W[name + ".bias"] = f32(rng.uniform(-bound, bound, o))

    def bn_w(name, c):
        W[name + ".weight"] = f32(rng.uniform(0.5, 1.5, c))
        W[name + ".bias"] = f32(rng.normal(0.0, 0.2, c))
        W[name + ".running_mean"] = f32(rng.normal(0.0, 0.5, c))
        W[name + ".running_var"] = f32(rng.uniform(0.5, 2.0, c))

    conv_w("stem", 8, 3, 3, 3, bias=False)
    bn_w("stem_bn", 8)
    conv_w("3.body.0", 8, 1, 3, 3)
    bn_w("3.body.1", 8)
    conv_w("3.body.3", 16, 8, 1, 1)
    conv_w("3.shortcut.0", 16, 8, 1, 1, bias=False)
    conv_w("5", 16, 16, 3, 3)
    conv_w("7", 12, 16, 3, 1)
    bn_w("head.1", 12)
    bound = 1.0 / math.sqrt(12)
    W["head.3.weight"] = f32(rng.uniform(-bound, bound, (10, 12)) * 3.0)
    W["head.3.bias"] = f32(rng.uniform(-bound, bound, 10))
    # PyTorch state_dicts carry this; the engine must accept and ignore it.
    W["stem_bn.num_batches_tracked"] = np.array(7, dtype=np.int64)

    x_u8 = rng.integers(0, 256, (5, 3, 12, 12), dtype=np.uint8)
    p = {k: v.astype(np.float64) for k, v in W.items()}
    mean = np.array([0.485, 0.456, 0.406])[None, :, None, None]
    std = np.array([0.229, 0.224, 0.225])[None, :, None, None]
    x = ((x_u8.astype(np.float64) * (1.0 / 255.0)) - mean) / std

    h = conv2d(x, p["stem.weight"], None, padding=(1, 1))
    h = relu(batch_norm(h, p["stem_bn.weight"], p["stem_bn.bias"], p["stem_bn.running_mean"], p["stem_bn.running_var"]))
    b = conv2d(h, p["3.body.0.weight"], p["3.body.0.bias"], padding=(1, 1), groups=8)
    b = batch_norm(b, p["3.body.1.weight"], p["3.body.1.bias"], p["3.body.1.running_mean"], p["3.body.1.running_var"], eps=1e-3)
    b = np.clip(b, 0.0, 6.0)
    b = conv2d(b, p["3.body.3.weight"], p["3.body.3.bias"])
    s = conv2d(h, p["3.shortcut.0.weight"], None)
    h = b + s
    h = pool2d(h, (3, 3), (2, 2), (1, 1), "max")
    h = conv2d(h, p["5.weight"], p["5.bias"], padding=(2, 2), dilation=2)
    h = gelu(h)
    h = conv2d(h, p["7.weight"], p["7.bias"], stride=2, padding=(1, 0))
    h = pool2d(h, (2, 2), (1, 1), (1, 1), "avg")
    h = h.mean(axis=(2, 3))
    h = batch_norm(h, p["head.1.weight"], p["head.1.bias"], p["head.1.running_mean"], p["head.1.running_var"])
    y = linear(h, p["head.3.weight"], p["head.3.bias"])

    tensors = dict(W)
    tensors["input"] = x_u8
    tensors["expected"] = f32(y)
    write_safetensors(os.path.join(OUT, "cnn.safetensors"), tensors, {"generator": "scripts/reference_forward.py"})
    with open(os.path.join(OUT, "cnn.spec.json"), "w") as f:
        json.dump(CNN_SPEC, f, indent=2)
        f.write("\n")
    print("cnn: expected output shape", y.shape, "max |y|", float(np.abs(y).max()))


MLP_SPEC = {
    "format": "modelpress.spec",
    "version": 1,
    "input": {"shape": [2, 6], "dtype": "f32", "preprocess": {"mean": [0.5, -0.5], "std": [2.0, 0.5]}},
    "output": {"kind": "probabilities", "classes": 5},
    "layers": [
        {"type": "layer_norm", "name": "ln0", "normalized_shape": [2, 6]},
        {"type": "linear", "name": "proj", "in_features": 6, "out_features": 8},
        {"type": "tanh"},
        {"type": "reshape", "shape": [16]},
        {
            "type": "residual",
            "name": "block",
            "body": [
                {"type": "linear", "in_features": 16, "out_features": 16, "bias": False},
                {"type": "gelu", "approximate": "tanh"},
                {"type": "layer_norm", "normalized_shape": 16, "elementwise_affine": False},
            ],
        },
        {"type": "sigmoid"},
        {"type": "flatten"},
        {"type": "linear", "name": "out", "in_features": 16, "out_features": 5},
        {"type": "softmax"},
    ],
}


def mlp():
    rng = np.random.default_rng(7)
    W = {
        "ln0.weight": f32(rng.uniform(0.5, 1.5, (2, 6))),
        "ln0.bias": f32(rng.normal(0, 0.3, (2, 6))),
        "proj.weight": f32(rng.normal(0, 0.5, (8, 6))),
        "proj.bias": f32(rng.normal(0, 0.1, 8)),
        "block.body.0.weight": f32(rng.normal(0, 0.4, (16, 16))),
        "out.weight": f32(rng.normal(0, 0.8, (5, 16))),
        "out.bias": f32(rng.normal(0, 0.1, 5)),
    }
    x32 = f32(rng.normal(0, 1.5, (6, 2, 6)))
    p = {k: v.astype(np.float64) for k, v in W.items()}
    x = (x32.astype(np.float64) - np.array([0.5, -0.5])[None, :, None]) / np.array([2.0, 0.5])[None, :, None]
    h = layer_norm(x, p["ln0.weight"], p["ln0.bias"], 2)
    h = np.tanh(linear(h, p["proj.weight"], p["proj.bias"]))
    h = h.reshape(h.shape[0], 16)
    b = gelu_tanh(linear(h, p["block.body.0.weight"], None))
    b = layer_norm(b, 1.0, 0.0, 1)
    h = 1.0 / (1.0 + np.exp(-(b + h)))
    y = softmax(linear(h, p["out.weight"], p["out.bias"]))
    tensors = dict(W)
    tensors["input"] = x32
    tensors["expected"] = f32(y)
    write_safetensors(os.path.join(OUT, "mlp.safetensors"), tensors, {"generator": "scripts/reference_forward.py"})
    with open(os.path.join(OUT, "mlp.spec.json"), "w") as f:
        json.dump(MLP_SPEC, f, indent=2)
        f.write("\n")
    print("mlp: expected output shape", y.shape)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    digits_teacher()
    cnn()
    mlp()
