"""The training step: the same numbers as its five lines written out, and the one the trainer runs."""

from __future__ import annotations

import numpy as np
import pytest

from smartmixed_np import MLP, Adam, clip_grad_norm, softmax_cross_entropy, train_step
from smartmixed_np.experiments import train as train_module
from smartmixed_np.experiments.train import TrainConfig, train


def _pair(kind, seed=0):
    return [MLP([6, 8, 5, 3], kind, seed=seed) for _ in range(2)]


@pytest.mark.parametrize("kind", ["smartmixed", "relu"])
@pytest.mark.parametrize("clip", [None, 0.05])
def test_train_step_is_the_five_lines(kind, clip):
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((16, 6)).astype(np.float32), rng.integers(0, 3, 16)
    stepped, by_hand = _pair(kind)
    opt_a, opt_b = Adam(stepped.parameters(), lr=1e-2), Adam(by_hand.parameters(), lr=1e-2)
    for _ in range(3):
        loss_a, logits_a = train_step(stepped, opt_a, x, y, clip)
        logits_b = by_hand.forward(x, train=True)
        loss_b, dlogits = softmax_cross_entropy(logits_b, y)
        by_hand.backward(dlogits)
        if clip is not None:
            clip_grad_norm(by_hand.gradients(), clip)
        opt_b.step(by_hand.gradients())
        assert float(loss_a) == float(loss_b) and np.array_equal(logits_a, logits_b)
    for name, value in stepped.parameters().items():
        np.testing.assert_array_equal(value, by_hand.parameters()[name], err_msg=name)


def test_the_trainer_runs_train_step(tmp_path, monkeypatch):
    calls = []
    real = train_module.train_step

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", counting)
    train(TrainConfig(dataset="spirals", train_limit=128, hidden=(8,), epochs=2, transition_epoch=1, batch_size=64,
                      quiet=True, progress=False, out=str(tmp_path / "run")))
    assert len(calls) > 0
