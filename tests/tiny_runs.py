"""The tiny training run the trainer's tests share: synth-digits, a 16-8 network, 4 epochs (2 in phase 1),
and the hook that interrupts it."""

from __future__ import annotations

from smartmixed_np.experiments.train import TrainConfig


def tiny(tmp_path, name="run", **options) -> TrainConfig:
    """A TrainConfig for a run of a few seconds under ``tmp_path/name``; ``options`` override."""
    settings = dict(
        dataset="synth-digits", train_limit=320, hidden=(16, 8), epochs=4, transition_epoch=2, lr=1e-2,
        batch_size=32, seed=3, quiet=True, progress=False, out=str(tmp_path / name),
    )
    settings.update(options)
    return TrainConfig(**settings)


def strip_times(history):
    """A run's history without its wall-clock column, for comparing two runs."""
    return [{k: v for k, v in row.items() if k != "time_s"} for row in history]


class StopAt:
    """An on_step hook that raises KeyboardInterrupt (as Ctrl-C would) at given global steps, once each."""

    def __init__(self, *steps):
        self.steps = set(steps)

    def __call__(self, epoch, step, global_step, model):
        if global_step in self.steps:
            self.steps.discard(global_step)
            raise KeyboardInterrupt
