"""ONNX export: the graph passes the checker, ONNX Runtime computes our logits, the file reads back.

Tests that need onnx or onnxruntime take the ``onnx``/``ort`` fixtures and skip without
them; the tests of their absence run everywhere. The real-data tests train three tiny networks on MNIST (SmartMixed, a ReLU baseline,
and a clamped sigmoid/tanh/elu network with masked groups) and run the exported files
in ONNX Runtime on the whole test set; they skip without ``SMARTMIXED_DATA``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from smartmixed_np import MLP, __version__
from smartmixed_np.cli import main
from smartmixed_np.core.activations import Activation, SELU_ALPHA, SELU_SCALE, clamp_limits
from smartmixed_np.experiments.export import (
    DEFAULT_OPSET, MISSING_ONNX, ExportError, build_onnx, export_onnx, export_run, exportable, import_onnx,
)

ALL_EXPORTABLE = ["relu", "sigmoid", "tanh", "leaky_relu", "elu", "selu", "softplus", "identity", "silu", "gelu"]
ROW_RTOL = 1e-5  # |ours - theirs| relative to the row's largest logit


@pytest.fixture
def onnx():
    """The onnx package (the test skips without it; the tests of its absence need neither)."""
    return pytest.importorskip("onnx", reason="the ONNX export needs onnx: pip install 'smartmixed_np[onnx]'")


@pytest.fixture
def ort(onnx):
    return pytest.importorskip("onnxruntime", reason="running the exported graph needs onnxruntime: pip install 'smartmixed_np[onnx]'")


def _session(proto_or_path):
    import onnxruntime as ort

    source = proto_or_path if isinstance(proto_or_path, (str, Path)) else proto_or_path.SerializeToString()
    return ort.InferenceSession(str(source) if isinstance(source, Path) else source, providers=["CPUExecutionProvider"])


def _run(session, x):
    return session.run(None, {"pixels": np.ascontiguousarray(x, dtype=np.float32)})[0]


def _assert_logits_match(ours, theirs):
    """Float32 agreement: every logit within 1e-5 of the largest magnitude in its row, same argmax."""
    assert ours.shape == theirs.shape and theirs.dtype == np.float32
    scale = np.abs(ours).max(axis=1, keepdims=True)
    worst = float((np.abs(ours - theirs) / scale).max())
    assert worst <= ROW_RTOL, worst
    np.testing.assert_array_equal(ours.argmax(axis=1), theirs.argmax(axis=1))


def _mixed(sizes=(20, 30, 16, 5), pool=ALL_EXPORTABLE, clamp=10.0, seed=1, dtype="float32"):
    """A phase-1 network whose random logits make every layer use many candidates."""
    model = MLP(list(sizes), "smartmixed", pool=pool, clamp=clamp, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    for act in model.activations:
        act.logits[...] = rng.standard_normal(act.logits.shape)
    return model


def _inputs(n, width=20, seed=0, scale=3.0):
    return (np.random.default_rng(seed).standard_normal((n, width)) * scale).astype(np.float32)


# --------------------------------------------------------------------------- the graph
def test_the_graph_passes_the_checker_and_names_its_input_and_output(onnx):
    proto = build_onnx(_mixed(), metadata={"dataset": "mnist"})
    onnx.checker.check_model(proto, full_check=True)
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "pixels" and out.name == "logits"
    dims = lambda value: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(inp) == ["batch", 20] and dims(out) == ["batch", 5]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT == out.type.tensor_type.elem_type
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", DEFAULT_OPSET)]
    ops = {node.op_type for node in proto.graph.node}
    assert {"MatMul", "Add", "Slice", "Concat", "Clip", "Relu", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Selu", "Softplus"} <= ops


def test_native_operators_carry_this_projects_constants(onnx):
    proto = build_onnx(_mixed(pool=["leaky_relu", "elu", "selu"]))
    attributes = {n.op_type: {a.name: a.f for a in n.attribute} for n in proto.graph.node if n.attribute and n.op_type != "Concat"}
    assert attributes["LeakyRelu"]["alpha"] == pytest.approx(0.01)
    assert attributes["Elu"]["alpha"] == 1.0
    assert attributes["Selu"]["alpha"] == np.float32(SELU_ALPHA) and attributes["Selu"]["gamma"] == np.float32(SELU_SCALE)


def test_metadata_describes_the_network(onnx):
    model = _mixed()
    proto = build_onnx(model, metadata={"dataset": "mnist", "test_accuracy": 0.97})
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["architecture"] == "20-30-16-5"
    assert json.loads(props["choices"]) == model.choice_names()  # original neuron order
    assert props["dataset"] == "mnist" and json.loads(props["test_accuracy"]) == 0.97
    assert props["smartmixed_np_version"] == __version__ and props["opset"] == str(DEFAULT_OPSET)
    assert props["source_phase"] == "1" and props["dtype"] == "float32"
    assert json.loads(props["smartmixed_np.config"])["kind"] == "fixed"


@pytest.mark.parametrize("opset", [DEFAULT_OPSET, 20])
@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_runtime_computes_our_logits_at_any_batch_size(ort, opset, batch):
    model = _mixed()
    session = _session(build_onnx(model, opset=opset))
    x = _inputs(batch)
    _assert_logits_match(model.forward(x), _run(session, x))


def test_a_float64_network_is_exported_as_float32(onnx, ort):
    model = _mixed(dtype="float64")
    proto = build_onnx(model)
    assert all(init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64) for init in proto.graph.initializer)
    x = _inputs(9)
    _assert_logits_match(model.forward(x.astype(np.float64)).astype(np.float32), _run(_session(proto), x))


def test_a_uniform_layer_needs_no_slice_no_concat_and_relu_no_lower_clip(onnx):
    model = MLP([20, 12, 8, 5], "relu", seed=0)
    ops = [node.op_type for node in build_onnx(model).graph.node]
    assert ops == ["MatMul", "Add", "Relu", "MatMul", "Add", "Relu", "MatMul", "Add"]  # a plain network has no clamp
    frozen = MLP([20, 12, 5], "smartmixed", pool=["relu"], clamp=10.0).freeze()
    proto = build_onnx(frozen)
    (clip,) = [n for n in proto.graph.node if n.op_type == "Clip"]
    assert clip.input[1] == "" and clip.input[2]  # relu >= 0: only the upper side of the clamp
    assert "Slice" not in [n.op_type for n in proto.graph.node]


def test_clip_is_written_for_exactly_the_sides_the_clamp_can_change(onnx):
    model = _mixed(clamp=0.5)
    proto = build_onnx(model)
    weights = {init.name: onnx.numpy_helper.to_array(init) for init in proto.graph.initializer}
    clips = {n.input[0]: n for n in proto.graph.node if n.op_type == "Clip"}
    prepared = exportable(model)
    for i, act in enumerate(prepared.activations):
        for k, group in enumerate(act.groups):
            tag = f"layers.{i}.group{k}.{group.activation.name}" if len(act.groups) > 1 else f"layers.{i}.{group.activation.name}"
            lo, hi = clamp_limits(group.activation, 0.5)
            clip = clips.get(f"{tag}.a")
            if group.activation.name == "identity":  # no node: the Clip reads the slice itself
                clip = clips.get(f"{tag}.z")
            if lo is None and hi is None:
                assert clip is None, tag
                continue
            assert clip is not None, tag
            got_lo = None if clip.input[1] == "" else float(weights[clip.input[1]])
            got_hi = None if clip.input[2] == "" else float(weights[clip.input[2]])
            assert (got_lo, got_hi) == (lo, hi), tag


def test_a_small_clamp_really_changes_the_output_and_clip_reproduces_it(onnx, ort):
    """With clamp 0.5 the Clip nodes bite (removing them changes the logits), and with them ORT equals ours."""
    model = _mixed(clamp=0.5)
    proto = build_onnx(model)
    x = _inputs(64)
    _assert_logits_match(model.forward(x), _run(_session(proto), x))
    unclipped = onnx.ModelProto()
    unclipped.CopyFrom(proto)
    for node in unclipped.graph.node:
        if node.op_type == "Clip":  # the same node, made a pass-through
            node.op_type = "Identity"
            del node.input[1:]
    changed = np.abs(_run(_session(unclipped), x) - model.forward(x)).max()
    assert changed > 1e-2


def test_a_masked_phase2_network_is_reordered_into_slices(ort):
    phase1 = _mixed()
    masked = phase1.freeze(contiguous=False)
    assert not any(act.contiguous for act in masked.activations)
    proto = build_onnx(masked)
    x = _inputs(11)
    _assert_logits_match(masked.forward(x), _run(_session(proto), x))
    assert json.loads({p.key: p.value for p in proto.metadata_props}["choices"]) == masked.choice_names()


def test_a_user_activation_is_a_one_line_error_naming_it(onnx):
    cube = Activation("cube", lambda x: x * x * x, lambda x, y: 3 * x * x)
    model = MLP([6, 4, 3], "smartmixed", pool=[cube], clamp=None)
    with pytest.raises(ExportError) as info:
        build_onnx(model)
    message = str(info.value)
    assert "'cube'" in message and "no ONNX counterpart" in message and "\n" not in message


def test_an_opset_out_of_range_is_refused(onnx):
    with pytest.raises(ExportError, match="opset must be an integer from 13"):
        build_onnx(_mixed(), opset=12)
    with pytest.raises(ExportError, match="opset"):
        build_onnx(_mixed(), opset=10_000)


def test_a_missing_onnx_is_one_line_with_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ExportError) as info:
        export_onnx(_mixed(), tmp_path / "m.onnx")
    assert str(info.value) == MISSING_ONNX == "onnx is not installed: pip install 'smartmixed_np[onnx]'"


# --------------------------------------------------------------------------- reading back
def test_import_onnx_round_trip_gives_the_same_network(ort, tmp_path):
    model = _mixed(clamp=0.5)
    path = export_onnx(model, tmp_path / "m.onnx")
    back = import_onnx(path)
    reference = exportable(model)
    x = _inputs(13)
    np.testing.assert_array_equal(back.forward(x), reference.forward(x))  # same weights, groups, clamp: same bits
    assert back.choice_names() == model.choice_names()
    assert [act.clamp for act in back.activations] == [0.5, 0.5]
    for ours, theirs in zip(back.activations, reference.activations):
        assert [(g.activation.name, g.columns, g.lo, g.hi) for g in ours.groups] == \
            [(g.activation.name, g.columns, g.lo, g.hi) for g in theirs.groups]
    _assert_logits_match(back.forward(x), _run(_session(path), x))


def test_import_onnx_refuses_edited_foreign_and_broken_files(onnx, tmp_path):
    path = export_onnx(_mixed(), tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    edited = onnx.ModelProto()
    edited.CopyFrom(proto)
    for node in edited.graph.node:
        if node.op_type == "Tanh":
            node.op_type = "Sigmoid"
            break
    onnx.save(edited, str(tmp_path / "edited.onnx"))
    with pytest.raises(ExportError, match="not the one smartmixed_np exports"):
        import_onnx(tmp_path / "edited.onnx")
    foreign = onnx.ModelProto()
    foreign.CopyFrom(proto)
    del foreign.metadata_props[:]
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(ExportError, match="not exported by smartmixed_np"):
        import_onnx(tmp_path / "foreign.onnx")
    (tmp_path / "text.onnx").write_text("not a model\n")
    with pytest.raises(ExportError, match="not a valid ONNX model"):
        import_onnx(tmp_path / "text.onnx")
    with pytest.raises(ExportError, match="no such file"):
        import_onnx(tmp_path / "missing.onnx")


# --------------------------------------------------------------------------- the command
def _tiny_run(tmp_path, name="run", **options):
    from smartmixed_np.experiments.train import TrainConfig, train

    settings = dict(dataset="synth-digits", train_limit=320, hidden=(16, 8), epochs=2, transition_epoch=1, lr=1e-2,
                    batch_size=32, seed=3, quiet=True, progress=False, out=str(tmp_path / name))
    settings.update(options)
    return train(TrainConfig(**settings)).run_dir


def test_cli_export_writes_a_file_onnx_runtime_runs(onnx, ort, tmp_path, capsys):
    run_dir = _tiny_run(tmp_path)
    assert main(["export", str(run_dir), "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert "opset 17" in capsys.readouterr().out
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert props["dataset"] == "synth-digits" and json.loads(props["test_accuracy"]) == metrics["test"]["accuracy"]
    assert json.loads(props["selected"]) == metrics["selected"]
    from smartmixed_np.data import load_dataset
    from smartmixed_np.experiments.checkpoint import load_model

    data = load_dataset("synth-digits", split_seed=0, train_limit=320)
    model = load_model(run_dir)
    _assert_logits_match(model.forward(data.x_test), _run(_session(tmp_path / "m.onnx"), data.x_test))


def test_cli_export_errors_are_one_line_with_status_2(onnx, tmp_path, capsys):
    cases = [
        (["export", str(tmp_path / "nowhere"), "--onnx", str(tmp_path / "m.onnx")], "no such run folder"),
        (["export", str(tmp_path), "--onnx", str(tmp_path / "m.onnx")], "not a finished run folder"),
        (["export", str(tmp_path)], "the following arguments are required: --onnx"),
        (["export", str(tmp_path), "--onnx", "m.onnx", "--opset", "9"], "argument --opset"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err
    run_dir = _tiny_run(tmp_path)
    assert main(["export", str(run_dir), "--onnx", str(tmp_path / "m.onnx"), "--opset", "999"]) == 2
    assert "opset must be an integer" in capsys.readouterr().err


def test_cli_export_without_onnx_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed (also true in the NumPy-only install)
    assert main(["export", str(tmp_path), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert capsys.readouterr().err == f"smartmixed: error: {MISSING_ONNX}\n"
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_help_names_the_options():
    result = subprocess.run([sys.executable, "-m", "smartmixed_np", "export", "--help"], capture_output=True, text=True,
                            env={**os.environ, "MPLBACKEND": "Agg"})
    assert result.returncode == 0
    assert "--onnx FILE" in result.stdout and "--opset" in result.stdout and "Clip" in result.stdout


# --------------------------------------------------------------------------- the benchmark
def test_bench_compares_onnx_runtime_at_batch_1_and_128(ort):
    from smartmixed_np.experiments.bench import _onnx_inference, _onnx_ratios

    result = _onnx_inference([20, 12, 8, 4], seed=0, threads=1, repeats=2, warmup=1)
    for batch in (1, 128):
        entry = result[f"batch_{batch}"]
        assert {"ours_forward", "ours_predict", "onnxruntime"} <= entry.keys()
        assert entry["ours_vs_onnxruntime_ratio"] > 0 and entry["max_abs_logit_difference"] < 1e-4
    ratios = _onnx_ratios(result)
    assert set(ratios) == {"phase2_vs_onnxruntime_infer_batch1_ratio", "phase2_vs_onnxruntime_infer_batch128_ratio"}
    assert all(value > 0 for value in ratios.values())
    assert all(value is None for value in _onnx_ratios({"skipped": "onnxruntime is not installed"}).values())


def test_bench_records_why_onnx_runtime_was_skipped(monkeypatch):
    from smartmixed_np.experiments.bench import _onnx_inference

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert "onnxruntime is not installed" in _onnx_inference([20, 12, 4], 0, 1, 1, 1)["skipped"]


# --------------------------------------------------------------------------- real MNIST
DATA = os.environ.get("SMARTMIXED_DATA")
needs_mnist = pytest.mark.skipif(
    not DATA or not (Path(DATA) / "mnist").is_dir(), reason="real MNIST: set SMARTMIXED_DATA to a folder holding mnist/"
)

MNIST_RUNS = {
    "smartmixed": dict(model="smartmixed"),
    "relu": dict(model="relu"),
    # Clamp 10 with groups where a side of it is kept (elu's upper side) and where none is
    # (sigmoid, tanh); masked groups, so that the export reorders them.
    "clamped": dict(model="smartmixed", pool=("sigmoid", "tanh", "elu"), clamp=10.0, contiguous=False),
}


@pytest.fixture(scope="module")
def mnist_runs(tmp_path_factory):
    from smartmixed_np.data import load_dataset
    from smartmixed_np.experiments.train import TrainConfig, train

    folder = tmp_path_factory.mktemp("mnist_runs")
    runs = {}
    for name, options in MNIST_RUNS.items():
        config = TrainConfig(dataset="mnist", data_dir=DATA, train_limit=2000, hidden=(64, 32), epochs=2, transition_epoch=1,
                             lr=1e-3, batch_size=64, seed=0, quiet=True, progress=False, out=str(folder / name), **options)
        runs[name] = train(config)
    data = load_dataset("mnist", DATA, download=False)
    return runs, data, folder


@needs_mnist
@pytest.mark.parametrize("name", list(MNIST_RUNS))
def test_onnx_runtime_matches_ours_on_the_real_mnist_test_set(onnx, ort, mnist_runs, name):
    from smartmixed_np.experiments.checkpoint import load_model

    runs, data, folder = mnist_runs
    run = runs[name]
    path = export_run(run.run_dir, folder / f"{name}.onnx")
    model = load_model(run.run_dir)
    ours = model.forward(data.x_test)
    theirs = _run(_session(path), data.x_test)
    _assert_logits_match(ours, theirs)  # all 10,000 test images: logits to 1e-5, identical predictions
    accuracy = float((theirs.argmax(axis=1) == data.y_test).mean())
    assert accuracy == pytest.approx(run.metrics["test"]["accuracy"], abs=1e-12)
    assert accuracy > 0.5  # a trained network, not an untrained one that any graph would match
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["dataset"] == "mnist" and json.loads(props["test_accuracy"]) == run.metrics["test"]["accuracy"]
    np.testing.assert_array_equal(import_onnx(path).forward(data.x_test), exportable(model).forward(data.x_test))


@needs_mnist
def test_the_clamped_run_keeps_exactly_elus_upper_clip(onnx, mnist_runs):
    runs, _, folder = mnist_runs
    path = export_run(runs["clamped"].run_dir, folder / "clamped_clips.onnx")
    proto = onnx.load(str(path))
    clips = [n for n in proto.graph.node if n.op_type == "Clip"]
    assert clips and all(".elu." in n.name and n.input[1] == "" and n.input[2] for n in clips)
    ops = {n.op_type for n in proto.graph.node}
    assert {"Sigmoid", "Tanh", "Elu", "Slice", "Concat"} <= ops
