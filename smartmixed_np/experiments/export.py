"""The frozen network as an ONNX graph: export, and reading our own graphs back.

A phase-2 network with contiguous groups is an ordinary feed-forward graph. Per
layer ``i``, with ``h_0`` the input ``"pixels"`` (batch, D_in)::

    z_i = MatMul(h_i, W_i^T) + b_i                      W_i^T, b_i: initializers
    a_i = Concat_g( Clip( f_g( Slice(z_i, start_g, stop_g, axis 1) ), -c, c ) )

and the last layer's ``z`` is the output ``"logits"`` (batch, C). Each activation
group ``g`` (the neurons that share one candidate, one slice after the contiguous
reordering of :meth:`smartmixed_np.nn.mlp.MLP.freeze`) becomes a Slice and the
candidate's native ONNX operator; a uniform layer (one group) needs neither Slice
nor Concat. The clamp becomes a Clip on exactly the sides that
:func:`smartmixed_np.core.activations.clamp_limits` keeps (the groups' ``lo``/``hi``):
a sigmoid group under a clamp of 10 has none, a relu group only the upper side.

The candidates and their operators (opset :data:`DEFAULT_OPSET` unless asked):

=============  ==================================================================
relu           Relu
sigmoid        Sigmoid
tanh           Tanh
leaky_relu     LeakyRelu, alpha = 0.01 (:data:`~smartmixed_np.core.activations.LEAKY_SLOPE`)
elu            Elu, alpha = 1
selu           Selu, alpha and gamma = this project's SELU_ALPHA and SELU_SCALE
softplus       Softplus
identity       nothing (the slice itself)
silu           x * Sigmoid(x)  (Mul, Sigmoid: no SiLU operator before opset 24)
gelu           the tanh form this project computes, x * Sigmoid(2c(x + 0.044715 x^3)),
               from Mul/Add/Sigmoid; from opset 20 on, Gelu(approximate="tanh")
=============  ==================================================================

A candidate is recognised by its function (``activation.forward`` is the built-in
one), not by its name, so a user's registration that reuses a built-in's function
exports, and one that only borrows a name does not. Any other activation raises a
one-line :class:`ExportError` naming it.

Precision: the graph is float32 throughout (input, weights, output); a float64
network is cast to float32 on export, as the network itself would be by
``model.to(dtype="float32")``.

Metadata (``model.metadata_props``, strings): ``architecture``, ``choices`` (JSON:
per hidden layer, each neuron's activation in the original neuron order),
``dataset`` and ``test_accuracy`` (from a run folder), ``source_phase``,
``smartmixed_np_version``, ``opset``, ``dtype``, ``input``, ``output``, and
``smartmixed_np.config`` (JSON: :meth:`~smartmixed_np.nn.mlp.MLP.config` of the exported
network, from which :func:`import_onnx` rebuilds it).

:func:`import_onnx` reads a graph written here back into an :class:`MLP`: the
network its ``smartmixed_np.config`` describes, with the weights of the graph's
initializers; it then builds the graph of that network again and requires it to be
the file's graph, node for node and weight for weight, so that the groups and the
clamp it returns are the ones the file computes. A graph edited by another tool is
refused (one line), not guessed at.

``onnx`` (and ``onnxruntime``, to run the graph) come with the ``onnx`` extra:
``pip install 'smartmixed_np[onnx]'``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import __version__
from ..backend import to_host
from ..core import activations as acts
from ..core.phase2 import contiguous_order
from ..errors import UserError
from ..fileio import open_regular_file, write_bytes
from ..nn.mlp import MLP
from . import runfolder
from .checkpoint import load_model

__all__ = [
    "DEFAULT_OPSET", "MIN_OPSET", "INPUT_NAME", "OUTPUT_NAME", "ExportError",
    "exportable", "build_onnx", "export_onnx", "export_run", "import_onnx", "load_kept_model", "require_onnx",
]

#: The opset written unless another is asked for (ONNX Runtime 1.17 and later run it).
DEFAULT_OPSET = 17
#: The oldest opset accepted: Slice and Clip take their bounds as inputs, in their current form, from 13 on.
MIN_OPSET = 13
INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
BATCH = "batch"
#: The metadata key under which the exported network's description is kept.
CONFIG_KEY = "smartmixed_np.config"
MISSING_ONNX = "onnx is not installed: pip install 'smartmixed_np[onnx]'"


class ExportError(UserError, ValueError):
    """A network, a run folder or an ONNX file that cannot be exported or read back (one line)."""


def require_onnx() -> Any:
    """The ``onnx`` module; :class:`ExportError` (one line, with the install command) when it is missing."""
    try:
        import onnx
        import onnx.checker  # noqa: F401 - submodules used below
        import onnx.helper  # noqa: F401
        import onnx.numpy_helper  # noqa: F401
    except ImportError:
        raise ExportError(MISSING_ONNX) from None
    return onnx


# --------------------------------------------------------------------------- the network
def exportable(model: MLP) -> MLP:
    """The network as it is exported: phase 2, every layer contiguous, float32, on the host.

    A phase-1 network becomes its argmax network (``model.freeze(contiguous=True)``);
    a phase-2 layer frozen with masked groups is reordered as ``freeze`` does it:
    neurons sorted (stably) by choice, rows of ``W_i`` and ``b_i`` and columns of
    ``W_{i+1}`` permuted together, which leaves the function unchanged. ``model``
    itself is not changed.

    Raises:
        ExportError: a hidden neuron uses an activation with no ONNX counterpart.
    """
    if not isinstance(model, MLP):
        raise TypeError(f"expected an MLP, got {type(model).__name__}")
    frozen = model.freeze(contiguous=True) if model.phase == 1 else model
    for i, act in enumerate(frozen.activations):
        for group in act.groups:
            _emitter(group.activation, where=f"hidden layer {i}")
    config = frozen.config()
    state = frozen.state_dict()  # host copies
    config["dtype"] = "float32"
    for i, (act, layer) in enumerate(zip(frozen.activations, config["layers"])):
        if act.contiguous:
            continue
        perm = contiguous_order(act.choices)
        layer.update(choices=act.choices[perm].tolist(), order=act.order[perm].tolist(), contiguous=True)
        state[f"layers.{i}.weight"] = state[f"layers.{i}.weight"][perm]
        state[f"layers.{i}.bias"] = state[f"layers.{i}.bias"][perm]
        state[f"layers.{i + 1}.weight"] = state[f"layers.{i + 1}.weight"][:, perm]
    try:
        prepared = MLP.from_config(config)
    except ValueError as err:  # a pool member that is not registered (an Activation built by hand)
        raise ExportError(f"the network cannot be rebuilt from its description for export: {err}") from None
    prepared.load_state_dict(state)  # cast to float32 here
    return prepared


# --------------------------------------------------------------------------- activations
class _Graph:
    """The nodes and initializers of a graph under construction, with unique value names."""

    def __init__(self, onnx: Any, opset: int) -> None:
        self.onnx, self.opset = onnx, opset
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._constants: dict[tuple, str] = {}

    def node(self, op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        """Append ``op(inputs) -> output`` (node named after its output); returns ``output``."""
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [output], name=f"{output}/{op}", **attributes))
        return output

    def tensor(self, name: str, array: np.ndarray) -> str:
        """An initializer ``name`` holding ``array``; returns ``name``."""
        self.initializers.append(self.onnx.numpy_helper.from_array(np.array(array, order="C"), name))  # keeps a scalar 0-d
        return name

    def constant(self, value: float | list[int], dtype: Any) -> str:
        """A shared initializer for a small constant (a scalar float, or an int64 vector)."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            text = "_".join(str(v) for v in np.atleast_1d(array))
            self._constants[key] = self.tensor(f"const.{array.dtype.name}.{text}", array)
        return self._constants[key]


def _unary(op: str, **attributes: Any) -> Callable[[_Graph, str, str], str]:
    return lambda g, x, out: g.node(op, [x], out, **attributes)


def _silu(g: _Graph, x: str, out: str) -> str:
    """$x\\,\\sigma(x)$."""
    return g.node("Mul", [x, g.node("Sigmoid", [x], f"{out}.sigmoid")], out)


def _gelu(g: _Graph, x: str, out: str) -> str:
    """The tanh form of :func:`smartmixed_np.core.activations.gelu`: $x\\,\\sigma(2c(x + kx^3))$,
    in its order of operations (k x x x, then + x, then 2c times); Gelu(approximate="tanh") from opset 20."""
    if g.opset >= 20:
        return g.node("Gelu", [x], out, approximate="tanh")
    f32 = np.float32
    cube = g.node("Mul", [g.node("Mul", [g.node("Mul", [g.constant(acts.GELU_K, f32), x], f"{out}.kx"), x], f"{out}.kxx"), x],
                  f"{out}.kxxx")
    inner = g.node("Mul", [g.constant(2 * acts.GELU_C, f32), g.node("Add", [x, cube], f"{out}.u")], f"{out}.2cu")
    return g.node("Mul", [x, g.node("Sigmoid", [inner], f"{out}.sigmoid")], out)


def _identity(g: _Graph, x: str, out: str) -> str:
    return x  # the slice (or z) itself: no node


#: The built-in candidates with an ONNX form, by their forward function.
_EMITTERS: dict[Callable, Callable[[_Graph, str, str], str]] = {
    acts.relu: _unary("Relu"),
    acts.sigmoid: _unary("Sigmoid"),
    acts.tanh: _unary("Tanh"),
    acts.leaky_relu: _unary("LeakyRelu", alpha=acts.LEAKY_SLOPE),
    acts.elu: _unary("Elu", alpha=acts.ELU_ALPHA),
    acts.selu: _unary("Selu", alpha=acts.SELU_ALPHA, gamma=acts.SELU_SCALE),
    acts.softplus: _unary("Softplus"),
    acts.identity: _identity,
    acts.silu: _silu,
    acts.gelu: _gelu,
}


def _emitter(activation: acts.Activation, where: str) -> Callable[[_Graph, str, str], str]:
    """The function that writes ``activation``'s nodes; ExportError when it has no ONNX form."""
    emit = _EMITTERS.get(activation.forward)
    if emit is None:
        raise ExportError(
            f"activation {activation.name!r} ({where}) has no ONNX counterpart: only the built-ins "
            f"relu, sigmoid, tanh, leaky_relu, elu, selu, softplus, identity, silu and gelu export"
        )
    return emit


# --------------------------------------------------------------------------- the graph
def _check_opset(opset: Any, onnx: Any) -> int:
    latest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not MIN_OPSET <= opset <= latest:
        raise ExportError(f"opset must be an integer from {MIN_OPSET} to {latest} (this onnx package's newest), got {opset!r}")
    return int(opset)


def _layer_nodes(g: _Graph, i: int, act: Any, z: str) -> str:
    """The activation of hidden layer ``i`` on ``z`` (batch, N): Slice, operator, Clip per group, Concat."""
    f32 = np.float32
    groups = act.groups
    uniform = len(groups) == 1
    outputs = []
    position = 0
    for k, group in enumerate(groups):
        columns = group.columns
        start, stop = (0, act.size) if uniform else (columns.start, columns.stop)
        if not isinstance(columns, slice) or start != position:
            raise ExportError(f"hidden layer {i}: its activation groups are not contiguous slices in order")  # exportable() prevents it
        position = stop
        tag = f"layers.{i}.{group.activation.name}" if uniform else f"layers.{i}.group{k}.{group.activation.name}"
        x = z if uniform else g.node("Slice", [z, g.constant([start], np.int64), g.constant([stop], np.int64),
                                               g.constant([1], np.int64)], f"{tag}.z")
        a = _emitter(group.activation, f"hidden layer {i}")(g, x, f"{tag}.a")
        if group.lo is not None or group.hi is not None:
            lo = "" if group.lo is None else g.constant(group.lo, f32)
            hi = "" if group.hi is None else g.constant(group.hi, f32)
            a = g.node("Clip", [a, lo, hi], f"{tag}.clipped")
        outputs.append(a)
    if position != act.size:
        raise ExportError(f"hidden layer {i}: its activation groups do not cover its {act.size} neurons")
    return outputs[0] if uniform else g.node("Concat", outputs, f"layers.{i}.a", axis=1)


def build_onnx(model: MLP, *, metadata: dict[str, Any] | None = None, opset: int = DEFAULT_OPSET) -> Any:
    """The ONNX graph (an ``onnx.ModelProto``, checked) of ``model``'s exportable network.

    Args:
        model: a phase-1 or phase-2 :class:`MLP` (see :func:`exportable`).
        metadata: extra ``metadata_props`` (values that are not strings are written as JSON),
            e.g. ``{"dataset": "mnist", "test_accuracy": 0.97}``.
        opset: the ONNX opset (default :data:`DEFAULT_OPSET`).

    Returns:
        The model proto: input ``"pixels"`` (batch, D_in) float32, output ``"logits"``
        (batch, C) float32, ``batch`` symbolic. It has passed
        ``onnx.checker.check_model(..., full_check=True)``.

    Raises:
        ExportError: onnx is missing, the opset is out of range, or an activation has no ONNX form.
    """
    onnx = require_onnx()
    opset = _check_opset(opset, onnx)
    source_phase = model.phase
    prepared = exportable(model)
    proto = _graph_of(onnx, prepared, opset)
    props = {
        "architecture": "-".join(str(s) for s in prepared.sizes),
        "choices": json.dumps(prepared.choice_names()),
        "source_phase": str(source_phase),
        "smartmixed_np_version": __version__,
        "opset": str(opset),
        "dtype": "float32",
        "input": f"{INPUT_NAME}: (batch, {prepared.sizes[0]}) float32, pixels scaled to [0, 1] as the dataset was",
        "output": f"{OUTPUT_NAME}: (batch, {prepared.sizes[-1]}) float32, unnormalised class scores (softmax gives probabilities)",
    }
    for key, value in (metadata or {}).items():
        props[str(key)] = value if isinstance(value, str) else json.dumps(value)
    props[CONFIG_KEY] = json.dumps(prepared.config())
    onnx.helper.set_model_props(proto, props)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as err:  # a bug here, not the user's: keep the traceback
        raise RuntimeError(f"the exported graph fails onnx.checker: {err}") from err
    return proto


def _graph_of(onnx: Any, prepared: MLP, opset: int) -> Any:
    """The model proto (no metadata) of an :func:`exportable` network."""
    g = _Graph(onnx, opset)
    h = INPUT_NAME
    last = len(prepared.linears) - 1
    for i, linear in enumerate(prepared.linears):
        weight_t = g.tensor(f"layers.{i}.weight_t", to_host(linear.W).T.astype(np.float32))
        bias = g.tensor(f"layers.{i}.bias", to_host(linear.b).astype(np.float32))
        z = g.node("Add", [g.node("MatMul", [h, weight_t], f"layers.{i}.xw"), bias], OUTPUT_NAME if i == last else f"layers.{i}.z")
        h = z if i == last else _layer_nodes(g, i, prepared.activations[i], z)
    float32 = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        g.nodes, "smartmixed_np",
        [onnx.helper.make_tensor_value_info(INPUT_NAME, float32, [BATCH, prepared.sizes[0]])],
        [onnx.helper.make_tensor_value_info(OUTPUT_NAME, float32, [BATCH, prepared.sizes[-1]])],
        initializer=g.initializers,
        doc_string=f"smartmixed_np phase-2 network {'-'.join(map(str, prepared.sizes))}",
    )
    opsets = [onnx.helper.make_opsetid("", opset)]
    # The oldest IR version that carries this opset: the file opens in the oldest runtimes that can run it.
    return onnx.helper.make_model(graph, opset_imports=opsets, producer_name="smartmixed_np", producer_version=__version__,
                                  ir_version=onnx.helper.find_min_ir_version_for(opsets))


def export_onnx(model: MLP, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None,
                opset: int = DEFAULT_OPSET) -> Path:
    """Write ``model`` as an ONNX file at ``path`` (atomically); see :func:`build_onnx`.

    Returns:
        ``path``.

    Raises:
        ExportError: see :func:`build_onnx`.
        smartmixed_np.fileio.WriteError: the file cannot be written.
    """
    proto = build_onnx(model, metadata=metadata, opset=opset)
    return write_bytes(path, proto.SerializeToString())


def load_kept_model(run_dir: str | os.PathLike, device: Any = "cpu") -> tuple[MLP, dict[str, Any]]:
    """The model a finished run folder keeps, and its ``model.json`` description.

    Read through :func:`smartmixed_np.experiments.runfolder.finished_problem`,
    :func:`~smartmixed_np.experiments.runfolder.read_model_description` and
    :func:`smartmixed_np.experiments.checkpoint.load_model`.

    Raises:
        ExportError: not a folder, or not a finished run folder (the reason named).
        CheckpointError: the saved model cannot be loaded (a user's activation needs
            its module imported first: ``--import``).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such run folder")
    problem = runfolder.finished_problem(run_dir)
    if problem is not None:
        raise ExportError(f"{run_dir}: not a finished run folder ({problem})")
    try:
        description = runfolder.read_model_description(run_dir)
    except runfolder.RunFolderError as err:
        raise ExportError(str(err)) from None
    return load_model(run_dir, device=device), description


def export_run(run_dir: str | os.PathLike, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET) -> Path:
    """Export the model kept in a finished run folder, with the run's dataset and test accuracy.

    A SmartMixed run keeps its phase-2 network (or, if phase 2 never produced a better
    one, its phase-1 network, exported as its argmax network); a baseline run its
    fixed network. The metadata adds ``run`` (the folder's name), ``dataset``,
    ``test_accuracy`` and ``selected`` (the phase and epoch of the kept model).

    Raises:
        ExportError: onnx is missing, not a finished run folder, or an activation
            with no ONNX form. CheckpointError: see :func:`load_kept_model`.
    """
    require_onnx()
    model, description = load_kept_model(run_dir)
    metadata: dict[str, Any] = {"run": Path(run_dir).resolve().name}
    for key in ("dataset", "test_accuracy", "selected"):
        if key in description:
            metadata[key] = description[key]
    return export_onnx(model, path, metadata=metadata, opset=opset)


# --------------------------------------------------------------------------- reading back
def import_onnx(path: str | os.PathLike) -> MLP:
    """The :class:`MLP` of an ONNX file written by :func:`export_onnx` (float32, contiguous groups).

    The network is the one the file's ``smartmixed_np.config`` metadata describes
    (groups, clamp, neuron order), with the weights of its initializers; its graph,
    built again, must equal the file's, so that the returned network computes what the
    file computes.

    Raises:
        ExportError: onnx is missing; the file is missing, not ONNX, or fails the
            checker; it was not written by smartmixed_np, or its graph was changed since.
    """
    onnx = require_onnx()
    path = Path(path)
    with open_regular_file(path, "an ONNX file", ExportError) as (file, _):
        content = file.read()
    try:
        proto = onnx.load_model_from_string(content)
        onnx.checker.check_model(proto)
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError and the checker's errors share no base class
        text = " ".join(str(err).split())[:200] or type(err).__name__
        raise ExportError(f"{path}: not a valid ONNX model ({text})") from None
    props = {prop.key: prop.value for prop in proto.metadata_props}
    if CONFIG_KEY not in props:
        raise ExportError(f"{path}: not exported by smartmixed_np (no {CONFIG_KEY!r} in its metadata)")
    opset = next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), None)
    try:
        if opset is None:
            raise ValueError("it imports no version of the default ONNX operator set")
        config = json.loads(props[CONFIG_KEY])
        model = MLP.from_config(config)
        weights = {init.name: onnx.numpy_helper.to_array(init) for init in proto.graph.initializer}
        state = {}
        for i in range(len(model.linears)):
            state[f"layers.{i}.weight"] = weights[f"layers.{i}.weight_t"].T
            state[f"layers.{i}.bias"] = weights[f"layers.{i}.bias"]
        model.load_state_dict(state)
        if model.phase != 2 or not all(act.contiguous for act in model.activations) or model.dtype != np.float32:
            raise ValueError("it does not describe a float32 phase-2 network with contiguous groups")
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        text = " ".join(str(err).split())[:200] or type(err).__name__
        raise ExportError(f"{path}: its {CONFIG_KEY!r} metadata and initializers do not make a network ({text})") from None
    rebuilt = _graph_of(onnx, model, opset)
    if not _same_graph(rebuilt.graph, proto.graph, onnx):
        raise ExportError(
            f"{path}: its graph is not the one smartmixed_np exports for the network its metadata describes "
            f"(changed by another tool?); refusing to guess what it computes"
        )
    return model


def _same_graph(ours: Any, theirs: Any, onnx: Any) -> bool:
    """Nodes, inputs and outputs equal, and every initializer equal in name, dtype, shape and value."""
    if list(ours.node) != list(theirs.node) or list(ours.input) != list(theirs.input) or list(ours.output) != list(theirs.output):
        return False
    a = {t.name: onnx.numpy_helper.to_array(t) for t in ours.initializer}
    b = {t.name: onnx.numpy_helper.to_array(t) for t in theirs.initializer}
    return a.keys() == b.keys() and all(
        a[name].dtype == b[name].dtype and a[name].shape == b[name].shape and np.array_equal(a[name], b[name]) for name in a
    )
