"""The registry's model format: a stack of fully connected layers with ReLU between them, numpy only.

A layer is stored the way it computes, so a compressed model is smaller on disk and runs as compressed:
``Dense`` (float32 ``w``), ``LowRank`` (``w ≈ a @ b``, two thin factors), ``Int8Dense`` (int8 weights and one float
scale per output channel, dequantised on the fly) and ``SparseDense`` (a bit mask of the kept weights and their
values only). ``encode``/``decode`` give the bytes that are stored and digested; ``Model.nbytes`` is their length.
``finetune`` trains the trainable layers in place (the mask and the factorisation stay fixed), which is how pruned
and factorised models recover what compression cost them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

import msgspec

import numpy as np

FORMAT = "aios-mlp/1"


class FormatError(ValueError):
    """The bytes are not a model of this format (names what is wrong)."""


class _FullMatrix:
    """What a layer stored as a full float32 ``w`` (dense, or dense with pruned zeros) and a bias ``b`` computes."""

    w: np.ndarray
    b: np.ndarray

    def weight(self) -> np.ndarray:
        return self.w

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x @ self.w + self.b

    def params(self) -> dict[str, np.ndarray]:
        return {"w": self.w, "b": self.b}

    def backward(self, x: np.ndarray, d_out: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return d_out @ self.w.T, {"w": x.T @ d_out, "b": d_out.sum(axis=0)}


@dataclass
class Dense(_FullMatrix):
    w: np.ndarray
    b: np.ndarray
    kind = "dense"


@dataclass
class LowRank:
    a: np.ndarray
    """(inputs, rank)"""
    bm: np.ndarray
    """(rank, outputs)"""
    b: np.ndarray
    kind = "lowrank"

    def weight(self) -> np.ndarray:
        return self.a @ self.bm

    def forward(self, x: np.ndarray) -> np.ndarray:
        return (x @ self.a) @ self.bm + self.b

    def params(self) -> dict[str, np.ndarray]:
        return {"a": self.a, "bm": self.bm, "b": self.b}

    def backward(self, x: np.ndarray, d_out: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        xa = x @ self.a
        d_xa = d_out @ self.bm.T
        return d_xa @ self.a.T, {"a": x.T @ d_xa, "bm": xa.T @ d_out, "b": d_out.sum(axis=0)}


@dataclass
class Int8Dense:
    q: np.ndarray
    """int8 (inputs, outputs)"""
    scale: np.ndarray
    """float32 per output channel: w ≈ q * scale"""
    b: np.ndarray
    kind = "int8"

    def weight(self) -> np.ndarray:
        return self.q.astype(np.float32) * self.scale

    def forward(self, x: np.ndarray) -> np.ndarray:
        # per-channel scale commutes with the product: one float matmul on the int8 values, then scale columns
        return (x @ self.q.astype(np.float32)) * self.scale + self.b

    def params(self) -> dict[str, np.ndarray]:
        return {}

    def backward(self, x: np.ndarray, d_out: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return d_out @ self.weight().T, {}


@dataclass
class SparseDense(_FullMatrix):
    w: np.ndarray
    """float32 (inputs, outputs), zero where pruned"""
    mask: np.ndarray
    """bool, True where kept"""
    b: np.ndarray
    kind = "sparse"

    def backward(self, x: np.ndarray, d_out: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        d_in, grads = super().backward(x, d_out)
        grads["w"] *= self.mask  # pruned weights stay pruned
        return d_in, grads

    @property
    def sparsity(self) -> float:
        return 1.0 - float(self.mask.mean())


Layer = Dense | LowRank | Int8Dense | SparseDense

CHUNK_ROWS = 16384
"""Rows a forward pass takes at once; more go in chunks, so that memory grows with a layer's width, not the data's."""


@dataclass
class Model:
    layers: list[Layer]
    """ReLU between consecutive layers, none after the last (logits)."""
    labels: list[str] = field(default_factory=list)
    _encoded: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def inputs(self) -> int:
        return int(self.layers[0].weight().shape[0])

    @property
    def outputs(self) -> int:
        return int(self.layers[-1].b.shape[0])

    def logits(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if len(x) > CHUNK_ROWS:  # an evaluation's activations a chunk at a time: all rows' could take gigabytes
            return np.concatenate([self._logits(x[i:i + CHUNK_ROWS]) for i in range(0, len(x), CHUNK_ROWS)])
        return self._logits(x)

    def _logits(self, h: np.ndarray) -> np.ndarray:
        for i, layer in enumerate(self.layers):
            h = layer.forward(h)
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        return h

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.logits(x).argmax(axis=1)

    def encode(self) -> bytes:
        if self._encoded is None:
            self._encoded = encode(self)
        return self._encoded

    @property
    def nbytes(self) -> int:
        return len(self.encode())

    def describe(self) -> list[str]:
        out = []
        for layer in self.layers:
            shape = "x".join(map(str, layer.weight().shape))
            extra = {"lowrank": lambda l: f" rank {l.a.shape[1]}", "sparse": lambda l: f" sparsity {l.sparsity:.2f}"}
            out.append(layer.kind + " " + shape + extra.get(layer.kind, lambda _l: "")(layer))  # type: ignore[operator]
        return out


def from_mlp(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, labels: list[str]) -> Model:
    """The built-in trainer's two-layer MLP."""
    f32 = np.float32
    return Model([Dense(np.array(w1, f32), np.array(b1, f32)), Dense(np.array(w2, f32), np.array(b2, f32))], labels)


# -- bytes ---------------------------------------------------------------------------------------------------------
class _Array(msgspec.Struct, array_like=True):
    dtype: str
    shape: list[int]
    data: bytes


class _Layer(msgspec.Struct, array_like=True):
    kind: str
    arrays: dict[str, _Array]


class _Model(msgspec.Struct):
    format: str
    layers: list[_Layer]
    labels: list[str] = []




def _pack(a: np.ndarray) -> _Array:
    a = np.ascontiguousarray(a)
    return _Array(a.dtype.str, list(a.shape), a.tobytes())


def _unpack(a: _Array, where: str) -> np.ndarray:
    try:
        arr = np.frombuffer(a.data, dtype=np.dtype(a.dtype)).reshape(a.shape)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{where}: {exc}") from None
    return arr.copy()


def _stored_arrays(layer: Layer) -> dict[str, np.ndarray]:
    if isinstance(layer, SparseDense):  # only what is kept: a bit per weight plus the kept values
        return {"values": layer.w[layer.mask], "bits": np.packbits(layer.mask.ravel()),
                "shape": np.array(layer.w.shape, dtype=np.int64), "b": layer.b}
    return {k: getattr(layer, k) for k in _ARRAY_RULES[layer.kind]}


def encode(model: Model) -> bytes:
    layers = [_Layer(layer.kind, {k: _pack(v) for k, v in _stored_arrays(layer).items()}) for layer in model.layers]
    return msgspec.msgpack.encode(_Model(FORMAT, layers, list(model.labels)))


MAX_PARAMETERS = 1 << 26
"""Most weights a model may have (64 Mi, 256 MiB as float32): a sparse layer's shape is a number in the file, and
a 125-byte file asked for gigabytes when it was unpacked."""
_FLOATS = ("f",)
_ARRAY_RULES: dict[str, dict[str, tuple[int, tuple[str, ...]]]] = {
    "dense": {"w": (2, _FLOATS), "b": (1, _FLOATS)},
    "lowrank": {"a": (2, _FLOATS), "bm": (2, _FLOATS), "b": (1, _FLOATS)},
    "int8": {"q": (2, ("i1",)), "scale": (1, _FLOATS), "b": (1, _FLOATS)},
    "sparse": {"values": (1, _FLOATS), "bits": (1, ("u1",)), "shape": (1, ("i", "u")), "b": (1, _FLOATS)},
}
"""Per layer kind: each stored array's number of dimensions and dtype (a kind letter, or kind and item size)."""


def _checked(arr: dict[str, np.ndarray], kind: str, where: str) -> None:
    for name, (ndim, dtypes) in _ARRAY_RULES[kind].items():
        a = arr[name]
        if a.ndim != ndim:
            raise FormatError(f"{where}.{name}: {ndim} dimension(s) expected, got shape {list(a.shape)}")
        if not any(a.dtype.kind == d[0] and (len(d) == 1 or a.dtype.itemsize == int(d[1:])) for d in dtypes):
            raise FormatError(f"{where}.{name}: dtype {a.dtype.str} is not a number of the kind expected")


def _weights_shape(arr: dict[str, np.ndarray], kind: str, where: str) -> tuple[int, int]:
    """(inputs, outputs) of a layer whose arrays agree with each other; FormatError naming the one that does not."""
    if kind == "dense":
        shape = arr["w"].shape
    elif kind == "lowrank":
        if arr["a"].shape[1] != arr["bm"].shape[0]:
            raise FormatError(f"{where}.bm: {arr['bm'].shape[0]} rows for a rank of {arr['a'].shape[1]}")
        shape = (arr["a"].shape[0], arr["bm"].shape[1])
    elif kind == "int8":
        shape = arr["q"].shape
        if arr["scale"].shape[0] != shape[1]:
            raise FormatError(f"{where}.scale: {arr['scale'].shape[0]} scales for {shape[1]} outputs")
    else:
        if arr["shape"].shape[0] != 2 or (arr["shape"] < 1).any():
            raise FormatError(f"{where}.shape: two sizes of at least 1 expected, got {arr['shape'].tolist()}")
        shape = (int(arr["shape"][0]), int(arr["shape"][1]))
    rows, cols = int(shape[0]), int(shape[1])
    if rows < 1 or cols < 1:
        raise FormatError(f"{where}: a layer of {rows} inputs and {cols} outputs")
    if arr["b"].shape[0] != cols:
        raise FormatError(f"{where}.b: {arr['b'].shape[0]} biases for {cols} outputs")
    return rows, cols


def decode(data: bytes) -> Model:
    try:
        raw = msgspec.msgpack.decode(data, type=_Model)
    except msgspec.ValidationError as exc:  # (a subclass of DecodeError) random bytes: "Expected `object`, got `int`"
        raise FormatError(f"not an {FORMAT} model file: its content is no model ({exc}); model files are written "
                          "by the trainer and `aios models`") from None
    except msgspec.DecodeError as exc:
        raise FormatError(f"not an {FORMAT} model file: not MessagePack ({exc})") from None
    if raw.format != FORMAT:
        raise FormatError(f"format {raw.format!r} is not {FORMAT!r}")
    if not raw.layers:
        raise FormatError("layers: a model needs at least one layer")
    layers: list[Layer] = []
    parameters = 0
    for i, lay in enumerate(raw.layers):
        if lay.kind not in _ARRAY_RULES:
            raise FormatError(f"layers[{i}].kind: unknown {lay.kind!r}")
        missing = [k for k in _ARRAY_RULES[lay.kind] if k not in lay.arrays]
        if missing:
            raise FormatError(f"layers[{i}]: missing {', '.join(missing)}")
        arr = {k: _unpack(v, f"layers[{i}].{k}") for k, v in lay.arrays.items()}
        _checked(arr, lay.kind, f"layers[{i}]")
        rows, cols = _weights_shape(arr, lay.kind, f"layers[{i}]")
        parameters += rows * cols
        if parameters > MAX_PARAMETERS:
            raise FormatError(f"layers[{i}]: the model has more than {MAX_PARAMETERS:,} weights")
        if lay.kind == "sparse":
            if arr["bits"].shape[0] != (rows * cols + 7) // 8:
                raise FormatError(f"layers[{i}].bits: {arr['bits'].shape[0]} bytes for {rows}x{cols} weights")
            kept = int(np.unpackbits(arr["bits"], count=rows * cols).sum())
            if arr["values"].shape[0] != kept:
                raise FormatError(f"layers[{i}].values: {arr['values'].shape[0]} values for {kept} kept weights")
        if lay.kind == "dense":
            layers.append(Dense(arr["w"], arr["b"]))
        elif lay.kind == "lowrank":
            layers.append(LowRank(arr["a"], arr["bm"], arr["b"]))
        elif lay.kind == "int8":
            layers.append(Int8Dense(arr["q"], arr["scale"], arr["b"]))
        else:
            shape = tuple(int(s) for s in arr["shape"])
            mask = np.unpackbits(arr["bits"], count=int(np.prod(shape))).astype(bool).reshape(shape)
            w = np.zeros(shape, dtype=np.float32)
            w[mask] = arr["values"]
            layers.append(SparseDense(w, mask, arr["b"]))
    model = Model(layers, raw.labels)
    for i, (a, b) in enumerate(zip(model.layers, model.layers[1:])):
        if a.b.shape[0] != b.weight().shape[0]:
            raise FormatError(f"layers[{i + 1}]: takes {b.weight().shape[0]} inputs, layer {i} gives {a.b.shape[0]}")
    for i, layer in enumerate(model.layers):  # NaN or inf weights answer garbage, and int8 of them is undefined
        for name, values in (("weights", layer.weight()), ("b", layer.b)):
            if not np.all(np.isfinite(values)):
                raise FormatError(f"layers[{i}].{name}: not finite (NaN or infinity)")
    if model.labels and layers and len(model.labels) != model.outputs:
        # evaluating it indexed past the labels (an IndexError), and predictions named no label
        raise FormatError(f"labels: {len(model.labels)} names for {model.outputs} outputs")
    return model


# -- training the compressed structure -------------------------------------------------------------------------------
def _batches(n: int, batch: int, steps: int, seed: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        yield rng.choice(n, size=min(batch, n), replace=False)


def finetune(model: Model, x: np.ndarray, y: np.ndarray, steps: int = 300, lr: float = 1e-3, batch: int = 256,
             seed: int = 0, stop: threading.Event | None = None) -> Model:
    """Adam on cross-entropy, in place, keeping each layer's structure (int8 layers stay frozen). ``stop`` set
    (from another thread: this runs in one) raises InterruptedError at the next step; the model is then half-done."""
    moments: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t, idx in enumerate(_batches(len(x), batch, steps, seed)):
        if stop is not None and stop.is_set():
            raise InterruptedError(f"fine-tuning stopped at step {t} of {steps}")
        xb, yb = np.asarray(x[idx], np.float32), y[idx]
        inputs, pre = [], []
        h = xb
        for i, layer in enumerate(model.layers):
            inputs.append(h)
            z = layer.forward(h)
            pre.append(z)
            h = np.maximum(z, 0.0) if i < len(model.layers) - 1 else z
        p = np.exp(h - h.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(yb)), yb] -= 1.0
        d = p / len(yb)
        for i in range(len(model.layers) - 1, -1, -1):
            layer = model.layers[i]
            if i < len(model.layers) - 1:
                d = d * (pre[i] > 0)
            d_in, grads = layer.backward(inputs[i], d)
            for name, g in grads.items():
                m, v = moments.get((i, name), (np.zeros_like(g), np.zeros_like(g)))
                m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
                moments[(i, name)] = (m, v)
                step = lr * (m / (1 - b1 ** (t + 1))) / (np.sqrt(v / (1 - b2 ** (t + 1))) + eps)
                setattr(layer, name, (getattr(layer, name) - step).astype(np.float32))
            if isinstance(layer, SparseDense):
                layer.w *= layer.mask
            d = d_in
    model._encoded = None
    return model


def copy(model: Model) -> Model:
    return decode(model.encode())


def to_json_summary(model: Model) -> dict[str, Any]:
    return {"format": FORMAT, "inputs": model.inputs, "outputs": model.outputs, "layers": model.describe(),
            "bytes": model.nbytes}
