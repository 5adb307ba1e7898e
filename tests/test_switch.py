"""The adaptive switch to phase 2 (``--switch adaptive``): when it ends phase 1, and that
it changes nothing else (a run it never ends early is the fixed run, bit for bit; a
resumed run ends like an uninterrupted one)."""

from __future__ import annotations

import numpy as np
import pytest

from smartmixed_np.cli import main
from smartmixed_np.experiments.checkpoint import load_arrays
from smartmixed_np.experiments.train import CHECKPOINT, ConfigError, TrainConfig, _Switch, train
from tiny_runs import StopAt, strip_times, tiny


def _choices(*layers):
    return [np.asarray(layer, dtype=np.int64) for layer in layers]


def _model_bits(run_dir):
    arrays, _ = load_arrays(run_dir / "model.npz")
    return {name: array.tobytes() for name, array in arrays.items()}


# ------------------------------------------------------------------ the rule
def test_the_changed_share_counts_neurons_over_all_layers():
    switch = _Switch(threshold=0.1, patience=1, choices=_choices([0, 1, 2, 3], [5, 5]))
    assert switch.changed_share(_choices([0, 1, 2, 3], [5, 5])) == 0.0
    assert switch.changed_share(_choices([0, 1, 2, 0], [5, 4])) == pytest.approx(2 / 6)
    assert switch.changed_share(_choices([0, 1, 2, 3])) == 1.0  # a different network: all changed


def test_phase1_ends_after_patience_calm_epochs_in_a_row_and_only_once():
    switch = _Switch(threshold=0.25, patience=2, choices=_choices([0, 0, 0, 0]))
    shares = [switch.observe(1, _choices([1, 1, 0, 0]), adaptive=True)]  # 2 of 4 changed: not calm
    shares.append(switch.observe(2, _choices([1, 1, 0, 2]), adaptive=True))  # 1 of 4: calm 1
    assert switch.ended is None
    shares.append(switch.observe(3, _choices([2, 2, 0, 2]), adaptive=True))  # 2 of 4: the count restarts
    shares.append(switch.observe(4, _choices([2, 2, 0, 2]), adaptive=True))  # calm 1
    assert switch.ended is None and switch.calm == 1
    shares.append(switch.observe(5, _choices([2, 2, 1, 2]), adaptive=True))  # calm 2: ends with epoch 5
    assert shares == [0.5, 0.25, 0.5, 0.0, 0.25]
    assert switch.ended == 5
    switch.observe(6, _choices([2, 2, 1, 2]), adaptive=True)
    assert switch.ended == 5


def test_the_fixed_switch_observes_but_never_ends_phase1():
    switch = _Switch(threshold=0.5, patience=1, choices=_choices([0, 1]))
    assert switch.observe(1, _choices([0, 1]), adaptive=False) == 0.0
    assert switch.ended is None and switch.calm == 1


def test_the_state_round_trips_through_a_checkpoints_parts():
    switch = _Switch(threshold=0.1, patience=3, ended=None, calm=2, choices=_choices([0, 3, 1], [2]))
    again = _Switch(threshold=0.1, patience=3)
    again.load(switch.meta(), switch.arrays())
    assert again == _Switch(threshold=0.1, patience=3, ended=None, calm=2, choices=again.choices)
    assert [c.tolist() for c in again.choices] == [[0, 3, 1], [2]]
    old = _Switch(threshold=0.1, patience=3)
    old.load(None, {})  # a checkpoint from before the switch existed
    assert (old.ended, old.calm, old.choices) == (None, 0, [])


# ------------------------------------------------------------------ in a run
def test_an_adaptive_run_ends_phase1_early_and_says_where(tmp_path):
    result = train(tiny(tmp_path, epochs=6, transition_epoch=5, switch="adaptive", switch_threshold=0.9, switch_patience=2))
    phases = [row["phase"] for row in result.history]
    assert phases == [1, 1, 2, 2, 2, 2]
    assert result.metrics["phase1_epochs"] == 2 and result.metrics["transition_epoch"] == 5
    changed = [row.get("changed") for row in result.history]
    assert all(0 <= share <= 0.9 for share in changed[:2]) and changed[2:] == [None] * 4
    assert result.model.phase == 2


def test_an_adaptive_switch_that_never_fires_is_the_fixed_run_bit_for_bit(tmp_path):
    fixed = train(tiny(tmp_path, "fixed"))
    never = train(tiny(tmp_path, "never", switch="adaptive", switch_threshold=0.0, switch_patience=10))
    assert never.metrics["phase1_epochs"] == fixed.metrics["phase1_epochs"] == 2
    assert _model_bits(never.run_dir) == _model_bits(fixed.run_dir)
    assert strip_times(never.history) == strip_times(fixed.history)  # "changed" is recorded either way


@pytest.mark.parametrize("stops", [(5,), (10, 12, 21)])
def test_a_resumed_adaptive_run_ends_exactly_like_an_uninterrupted_one(tmp_path, stops):
    """Stops inside phase 1 (the last epoch's choices and the calm count are checkpointed),
    right after the switch and in phase 2 (10 steps per epoch here)."""
    options = dict(epochs=5, transition_epoch=4, switch="adaptive", switch_threshold=0.9, switch_patience=2)
    reference = train(tiny(tmp_path, "reference", **options))
    assert reference.metrics["phase1_epochs"] == 2
    result = train(tiny(tmp_path, "interrupted", **options), on_step=StopAt(*stops))
    assert result.interrupted and (result.run_dir / CHECKPOINT).is_file()
    while result.interrupted:
        result = train(resume=result.run_dir, on_step=StopAt(*stops))
    assert _model_bits(result.run_dir) == _model_bits(reference.run_dir)
    assert strip_times(result.history) == strip_times(reference.history)
    assert result.metrics["phase1_epochs"] == 2


# ------------------------------------------------------------------ bad options
@pytest.mark.parametrize(
    "options, message",
    [
        ({"switch": "sometimes"}, "--switch must be one of fixed, adaptive"),
        ({"switch_threshold": 1.0}, "--switch-threshold must lie in [0, 1)"),
        ({"switch_threshold": -0.1}, "--switch-threshold must lie in [0, 1)"),
        ({"switch_patience": 0}, "--switch-patience must be a positive integer"),
    ],
)
def test_bad_switch_options_are_refused_by_name(options, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**options).validate()


@pytest.mark.parametrize("argv, message", [
    (["--switch", "never"], "--switch: invalid choice"),
    (["--switch-threshold", "1.5"], "--switch-threshold"),
    (["--switch-patience", "0"], "--switch-patience"),
])
def test_bad_switch_options_on_the_command_line_get_one_line(tmp_path, capsys, argv, message):
    assert main(["train", "--dataset", "synth-digits", "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
