"""``smartmixed gradcheck`` (experiments/gradreport.py): planted bugs fail at their parameter, kinks are
reported apart, the step scan is a V, the report files are complete and strict, exit codes 0/1/2."""

from __future__ import annotations

import argparse
import copy
import json
import sys
import textwrap

import numpy as np
import pytest

from smartmixed_np.core import activations, phase1
from smartmixed_np.core.linear import Linear
from smartmixed_np.errors import UserError
from smartmixed_np.fileio import decode_json
from smartmixed_np.experiments import plugins
from smartmixed_np.experiments.gradreport import (CheckOptions, NetworkSpec, add_gradcheck_parser, available_estimators,
                                                  gradcheck_activation, gradcheck_network, run_gradcheck,
                                                  write_gradcheck_report)
from smartmixed_np.nn.engines import ReferenceMixture

QUICK = CheckOptions.quick()


class _Parser(argparse.ArgumentParser):
    """As the CLI's parser: an option error is a one-line UserError, not a printed usage and SystemExit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: error: {message}")


def run_cli(argv: list[str]) -> int:
    """``smartmixed gradcheck ARGV`` as ``smartmixed_np.cli.main`` runs it: exit 2 for a user error."""
    parser = _Parser(prog="smartmixed")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    add_gradcheck_parser(commands)
    try:
        args = parser.parse_args(["gradcheck", *argv])
        args.argv = ["gradcheck", *argv]
        return run_gradcheck(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


@pytest.fixture
def private_registry(monkeypatch):
    """Activations a test registers, and modules it imports, vanish with the test."""
    monkeypatch.setattr(activations, "_REGISTRY", dict(activations._REGISTRY))
    monkeypatch.setattr(plugins, "_LOADED", {})


def _network(**changes):
    spec = NetworkSpec(**changes)
    return spec.build(seed=0)


# --------------------------------------------------------------------------- the clean case
def test_a_correct_network_passes_every_check_and_the_caller_keeps_its_model():
    model, x, labels = _network()
    state, streams = model.state_dict(), model.rng_state()
    result = gradcheck_network(model, x, labels, options=QUICK)
    assert result.passed, result.failures()
    names = [p.name for p in result.parameters]
    assert names == list(model.parameters())
    for report in result.parameters:
        assert set(report.coordinates) == {"float64", "float32"} and set(report.directional) == {"float64", "float32"}
        assert report.coordinates["float64"].relative_error < 1e-7
        assert report.coordinates["float32"].relative_error < 1e-4
    assert model.rng_state() == streams
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, state[name])


def test_the_step_scan_is_a_v_in_float64():
    model, x, labels = _network()
    scan = gradcheck_network(model, x, labels, options=QUICK).step_scan
    assert scan.minimum_inside("float64"), scan.errors["float64"]
    h, error = scan.best["float64"]
    assert 1e-8 <= h <= 1e-3 and error < 1e-8
    assert scan.best["float32"][0] > h  # float32 rounds sooner: its best step is larger


def test_above_the_coordinate_limit_only_the_directions_are_checked():
    model, x, labels = _network()
    result = gradcheck_network(model, x, labels, options=CheckOptions.quick(max_coordinates=10))
    assert result.passed and all(not p.coordinates and p.directional for p in result.parameters)
    assert any("limit of 10" in note for note in result.notes)


# --------------------------------------------------------------------------- planted bugs
class _SignFlippedBias(Linear):
    """A Linear whose backward gets the sign of db wrong."""

    def backward(self, dz, cache, need_dx=True, dx_out=None):
        dx = super().backward(dz, cache, need_dx=need_dx, dx_out=dx_out)
        self.db *= -1
        return dx


class _TauDropped:
    """A phase-1 engine whose dlogits lack the factor 1/tau."""

    def __init__(self, engine, tau):
        self.engine, self.tau, self.name = engine, tau, "tau-dropped"

    def __getattr__(self, name):  # everything else as the wrapped engine has it
        if name == "engine":  # not set yet (a copy being made)
            raise AttributeError(name)
        return getattr(self.engine, name)

    def forward(self, *args, **kwargs):
        return self.engine.forward(*args, **kwargs)

    def backward(self, dout, cache, workspace=None, **extra):
        dz, dlogits = self.engine.backward(dout, cache, workspace, **extra)
        return dz, dlogits * self.tau


def _unmasked_derivatives(z, candidates, pool, clamp, clamp_grad="open"):
    """core.phase1._candidate_derivatives with the clamp mask dropped."""
    stack = np.empty_like(candidates)
    for k, activation in enumerate(pool):
        stack[k] = activation.derivative(z, candidates[k])
    return stack


def test_a_wrong_sign_in_a_linear_backward_fails_at_that_bias():
    model, x, labels = _network()
    buggy = copy.deepcopy(model)
    buggy.linears[1] = _SignFlippedBias(buggy.linears[1].W, buggy.linears[1].b)
    result = gradcheck_network(buggy, x, labels, options=QUICK)
    assert not result.passed
    assert result.failing_parameters() == ["layers.1.bias"], result.failures()
    failure = next(line for line in result.failures() if line.startswith("layers.1.bias (float64, coordinate"))
    assert "worst entry [" in failure and "analytic" in failure and "numeric" in failure


def test_a_missing_one_over_tau_fails_at_the_logits():
    model, x, labels = _network()
    buggy = copy.deepcopy(model)
    act = buggy.activations[0]
    act.engine = _TauDropped(act.engine, act.tau)
    result = gradcheck_network(buggy, x, labels, options=QUICK)
    assert result.failing_parameters() == ["activations.0.logits"], result.failures()
    check = next(p for p in result.parameters if p.name == "activations.0.logits").coordinates["float64"]
    assert check.relative_error > 0.3  # (1 - tau) / (1 + tau) = 0.54


def test_a_dropped_clamp_mask_fails_upstream_of_the_clamp_only(monkeypatch):
    model, x, labels = _network(clamp=0.4, input_scale=3.0)
    buggy = copy.deepcopy(model)
    for act in buggy.activations:
        act.engine = ReferenceMixture(act.pool, act.hard)
    assert gradcheck_network(buggy, x, labels, options=QUICK).passed  # the reference engine itself is right
    monkeypatch.setattr(phase1, "_candidate_derivatives", _unmasked_derivatives)
    result = gradcheck_network(buggy, x, labels, options=QUICK)
    failing = set(result.failing_parameters())
    assert "layers.0.weight" in failing, result.failures()
    # what lies after the last clamped layer gets the right gradient: its output layer and its own logits
    assert not failing & {"layers.2.weight", "layers.2.bias", "activations.1.logits"}, result.failures()


def test_the_float32_re_run_is_judged_too(monkeypatch):
    """A bug in the float32 path only (here: the float32 gradients of one bias scaled) fails the float32 check alone."""
    original = Linear.backward

    def backward(self, dz, cache, need_dx=True, dx_out=None):
        dx = original(self, dz, cache, need_dx=need_dx, dx_out=dx_out)
        if self.db.dtype == np.float32 and self.db.shape == (2,):
            self.db *= 1.01
        return dx

    monkeypatch.setattr(Linear, "backward", backward)
    model, x, labels = _network()
    result = gradcheck_network(model, x, labels, options=QUICK)
    bias = next(p for p in result.parameters if p.name == "layers.1.bias")
    assert bias.coordinates["float64"].passed and not bias.coordinates["float32"].passed
    assert result.failing_parameters() == ["layers.1.bias"]


# --------------------------------------------------------------------------- kinks
def _relu_network_at_a_kink():
    """A relu network with the pre-activation of hidden neuron 0, example 1, exactly 0."""
    model, x, labels = _network(model="relu", hidden=(3,))
    W, b = model.linears[0].W, model.linears[0].b
    b[0] = -(x[1] @ W[0])
    return model, x, labels


def test_a_relu_kink_is_reported_apart_and_does_not_fail_the_check():
    model, x, labels = _relu_network_at_a_kink()
    result = gradcheck_network(model, x, labels, options=QUICK)
    assert result.passed, result.failures()
    assert result.kinks and all(k.excluded for k in result.kinks)
    assert {k.parameter for k in result.kinks} == {"layers.0.weight", "layers.0.bias"}
    assert all(k.index[0] == 0 for k in result.kinks)  # neuron 0's row of W and its bias
    assert any("ReLU at 0" in reason and "neuron 0, sample 1" in reason for k in result.kinks for reason in k.reasons)
    bias = next(k for k in result.kinks if k.parameter == "layers.0.bias")
    assert abs(bias.forward - bias.backward) > 1e3 * abs(bias.analytic) * 1e-6  # the one-sided slopes differ
    assert next(p for p in result.parameters if p.name == "layers.0.bias").coordinates["float64"].excluded == 1


def test_a_clamp_edge_is_a_kink():
    model, x, labels = _network(pool=("identity", "tanh"), clamp=0.5, noise_mode="none", hidden=(2,))
    logits = model.activations[0].logits
    logits[:] = [[1.0, 0.0], [1.0, 0.0]]  # both neurons select identity
    W, b = model.linears[0].W, model.linears[0].b
    b[1] = 0.5 - x[2] @ W[1]  # neuron 1, example 2: identity(z) = 0.5 = the clamp
    result = gradcheck_network(model, x, labels, options=QUICK)
    assert result.passed, result.failures()
    reasons = [reason for k in result.kinks for reason in k.reasons]
    assert reasons and all("identity at a clamp edge: hidden layer 0, neuron 1, sample 2" in r for r in reasons)


def test_an_argmax_boundary_is_reported_and_the_surrogate_check_stands():
    model, x, labels = _network(pool=("identity", "tanh"), noise_mode="none", hidden=(2,))
    model.activations[0].logits[:] = [[0.3, 0.3 + 1e-7], [1.0, 0.0]]  # neuron 0 within h of a tie
    result = gradcheck_network(model, x, labels, options=QUICK)
    assert result.passed, result.failures()
    boundaries = [k for k in result.kinks if not k.excluded]
    assert boundaries and {k.parameter for k in boundaries} == {"activations.0.logits"}
    assert all(k.index[0] == 0 and "argmax boundary: hidden layer 0, neuron 0" in k.reasons[0] for k in boundaries)
    assert any("no Gumbel noise" in note for note in result.notes)


def test_activation_kinks_are_apart_and_elu_is_smooth_at_zero():
    relu = gradcheck_activation("relu", options=QUICK, network=False)
    assert relu.passed and [k.reasons[0] for k in relu.kinks] == ["ReLU at 0 (slopes 0 and 1): x = 0"]
    elu = gradcheck_activation("elu", options=QUICK, network=False)
    assert elu.passed and not elu.kinks and any("C1" in note for note in elu.notes)


# --------------------------------------------------------------------------- a user's activation
def _write_module(tmp_path, monkeypatch, module, name, derivative):
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(f"""
        import numpy as np
        from smartmixed_np.core.activations import register_activation

        register_activation("{name}", lambda x: x * np.tanh(x), lambda x: {derivative})
    """))
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.usefixtures("private_registry")
def test_a_user_activation_with_a_wrong_derivative_is_caught(tmp_path, monkeypatch, capsys):
    _write_module(tmp_path, monkeypatch, "user_acts_wrong", "xtanh_wrong", "np.tanh(x) + x * (1 - np.tanh(x) ** 3)")
    status = run_cli(["--activation", "user_acts_wrong:xtanh_wrong", "--quick", "--out", str(tmp_path / "wrong")])
    out = capsys.readouterr().out
    assert status == 1 and "gradcheck FAILED" in out and "f'(x) (float64, coordinate by coordinate)" in out
    data = json.loads((tmp_path / "wrong" / "report.json").read_text())
    assert not data["passed"] and data["target"]["module"] == "user_acts_wrong"
    assert data["network"]["passed"] is False  # the network using it fails too


@pytest.mark.usefixtures("private_registry")
@pytest.mark.parametrize("as_path", [False, True])
def test_a_user_activation_with_the_right_derivative_passes(tmp_path, monkeypatch, capsys, as_path):
    _write_module(tmp_path, monkeypatch, "user_acts_right", "xtanh", "np.tanh(x) + x * (1 - np.tanh(x) ** 2)")
    module = str(tmp_path / "user_acts_right.py") if as_path else "user_acts_right"
    status = run_cli(["--activation", f"{module}:xtanh", "--quick", "--out", str(tmp_path / "right")])
    out = capsys.readouterr().out
    assert status == 0 and "gradcheck passed" in out, out


@pytest.mark.usefixtures("private_registry")
def test_a_kink_unknown_to_the_checker_is_found_by_its_one_sided_differences():
    """max(x - 0.5, 0): a kink at a grid point, which no built-in rule knows; the derivative is right elsewhere."""
    activations.register_activation("shifted_relu", lambda x: np.maximum(x - 0.5, 0), lambda x: (x > 0.5).astype(x.dtype))
    result = gradcheck_activation("shifted_relu", options=QUICK, network=False)
    assert result.passed, result.failures()
    assert [k.reasons[0] for k in result.kinks] == ["one-sided differences disagree at x = 0.5: a kink"]
    assert any("not known to the checker" in note for note in result.notes)


# --------------------------------------------------------------------------- the study of hard selection
def test_the_study_measures_every_estimator_against_the_enumerated_gradient():
    estimators = pytest.importorskip("smartmixed_np.core.estimators")
    model, x, labels = _network()
    study = gradcheck_network(model, x, labels, options=QUICK).straight_through
    assert study.method.startswith("exact, by enumerating all 7776") and study.exact_standard_error == 0
    truth = estimators.exact_expected_gradient(model, x, labels)
    np.testing.assert_allclose(study.exact, np.concatenate([truth.gradients[n].ravel() for n, _ in study.names]))
    assert study.expected_loss == pytest.approx(truth.loss)
    assert set(study.estimators) == set(available_estimators()) and "st" in study.estimators
    for measured in study.estimators.values():
        assert measured["samples"] == QUICK.st_samples and -1 <= measured["mean_cosine"] <= 1
        assert measured["relative_error_of_mean"] > 0 and len(measured["mean"]) == len(study.exact) == (3 + 2) * 6
    # the straight-through mean over the draws points the way of the exact gradient
    assert study.estimators["st"]["cosine_of_mean"] > 0.8


def test_above_the_enumeration_limit_the_exact_gradient_is_estimated_per_neuron():
    pytest.importorskip("smartmixed_np.core.estimators")
    options = CheckOptions.quick(max_coordinates=0, estimators=("st",))
    study = gradcheck_network(NetworkSpec(hidden=(4, 3)), options=options).straight_through
    assert study.method.startswith("per neuron") and study.exact_standard_error > 0
    assert list(study.estimators) == ["st"]


def test_a_model_with_another_estimator_is_checked_straight_through():
    pytest.importorskip("smartmixed_np.core.estimators")
    from smartmixed_np.nn.mlp import MLP

    model = MLP([6, 3, 2, 3], "smartmixed", dtype="float64", seed=0, estimator="reinmax")
    result = gradcheck_network(model, options=CheckOptions.quick(estimators=("reinmax",)))
    assert result.passed, result.failures()
    assert any("trains with the reinmax estimator" in note for note in result.notes)
    assert list(result.straight_through.estimators) == ["reinmax"]


@pytest.mark.parametrize("noise_mode", ["per_sample", "none"])
def test_every_noise_mode_passes(noise_mode):
    model, x, labels = _network(noise_mode=noise_mode)
    result = gradcheck_network(model, x, labels, options=CheckOptions.quick(st_samples=5))
    assert result.passed, result.failures()
    assert (result.straight_through is None) == (noise_mode == "none")


def test_soft_networks_have_no_straight_through_study():
    model, x, labels = _network(hard=False)
    result = gradcheck_network(model, x, labels, options=QUICK)
    assert result.passed and result.straight_through is None
    assert not any("surrogate" in note for note in result.notes)


# --------------------------------------------------------------------------- the report files
def test_the_report_files_are_complete_and_strict(tmp_path):
    model, x, labels = _relu_network_at_a_kink()
    result = gradcheck_network(model, x, labels, options=QUICK)
    written = write_gradcheck_report(result, tmp_path / "report")
    names = {path.name for path in written}
    assert names == {"report.md", "report.json", "step_size.png", "errors.png"}
    for path in written:
        assert path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    data = decode_json((tmp_path / "report" / "report.json").read_bytes())  # strict: no NaN, no Infinity
    assert data["format"] == "smartmixed-gradcheck/1" and data["passed"] is True
    assert [p["name"] for p in data["parameters"]] == list(model.parameters())
    assert data["kinks"] and data["kinks"][0]["excluded"] is True
    assert set(data["figures"]) == names - {"report.md", "report.json"}
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert all(f"`{name}`" in markdown for name in model.parameters())
    assert "ReLU at 0" in markdown and "![step_size](step_size.png)" in markdown


def test_a_hard_network_report_has_the_study(tmp_path):
    pytest.importorskip("smartmixed_np.core.estimators")
    written = write_gradcheck_report(gradcheck_network(NetworkSpec(), options=QUICK), tmp_path / "hard")
    assert "straight_through.png" in {p.name for p in written}
    markdown = (tmp_path / "hard" / "report.md").read_text()
    assert "straight-through gradient and its rivals" in markdown and "| reinmax |" in markdown


def test_an_activation_report_has_its_network(tmp_path):
    written = write_gradcheck_report(gradcheck_activation("tanh", options=QUICK), tmp_path / "tanh")
    assert {"activation.png", "network_errors.png", "network_step_size.png"} <= {p.name for p in written}
    assert "In a network" in (tmp_path / "tanh" / "report.md").read_text()


# --------------------------------------------------------------------------- the command line
def test_exit_status_0_when_everything_passes(tmp_path, capsys):
    out = tmp_path / "ok"
    assert run_cli(["--hidden", "3,2", "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("gradcheck passed") and f"report: {out / 'report.md'}" in text
    data = json.loads((out / "report.json").read_text())
    assert data["command"] == f"smartmixed gradcheck --hidden 3,2 --quick --out {out}"


def test_exit_status_1_names_the_parameter(tmp_path, monkeypatch, capsys):
    original = Linear.backward

    def backward(self, dz, cache, need_dx=True, dx_out=None):
        dx = original(self, dz, cache, need_dx=need_dx, dx_out=dx_out)
        if self.W.shape == (2, 3):  # layers.1 of 6-3-2-3
            self.dW *= -1
        return dx

    monkeypatch.setattr(Linear, "backward", backward)
    assert run_cli(["--model", "tanh", "--quick", "--dtype", "float64", "--out", str(tmp_path / "bad")]) == 1
    text = capsys.readouterr().out
    assert "gradcheck FAILED" in text and "failed: layers.1.weight (float64, coordinate by coordinate)" in text
    assert "layers.0.weight (" not in text and "float32" not in text


@pytest.mark.parametrize("argv, message", [
    (["--hidden", "0"], "--hidden: expected hidden widths"),
    (["--model", "nosuch"], "--model: unknown activation 'nosuch'"),
    (["--pool", "relu,nosuch"], "--pool: unknown activation 'nosuch'"),
    (["--activation", "nosuch"], "--activation: unknown activation 'nosuch'"),
    (["--activation", "no_such_module_here:foo"], "--activation: no_such_module_here: module not found"),
    (["--activation", "relu", "--hidden", "3", "--soft"], "--activation checks one activation; --hidden, --soft describe a network"),
    (["--import", "no_such_module_here"], "--import no_such_module_here: module not found"),
    (["--estimators", "nosuch"], "--estimators: 'nosuch' is not available"),
    (["--eps", "nan"], "--eps: expected a number"),
    (["--dtype", "float16"], "--dtype: invalid choice"),
])
@pytest.mark.usefixtures("private_registry")
def test_exit_status_2_for_a_usage_error(tmp_path, capsys, argv, message):
    assert run_cli([*argv, "--quick", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()
