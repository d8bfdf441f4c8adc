"""Training callbacks that talk to the terminal: the tqdm progress bar and the evaluation previews.

Kept out of `training.py`, which prints nothing, and out of `cli.py`, which only wires things up.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

from chargen.training import Callback


class ProgressBar(Callback):
    """A tqdm bar with loss, bits per character and characters per second; off when not on a terminal."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.bar = None
        self.rate = None

    def on_train_begin(self, trainer) -> None:
        self.bar = tqdm(
            total=trainer.step_limit(), initial=trainer.progress.step, unit="step", file=self.stream,
            disable=not self.stream.isatty(), dynamic_ncols=True, leave=False,
        )

    def on_step_end(self, trainer, logs: dict) -> None:
        speed = logs["chars_per_second"]
        self.rate = speed if self.rate is None else 0.9 * self.rate + 0.1 * speed  # smoothed
        self.bar.set_postfix(loss=f"{logs['loss']:.3f}", bpc=f"{logs['bpc']:.3f}", chars_per_s=f"{self.rate:,.0f}",
                             refresh=False)
        self.bar.update(1)

    def on_evaluate(self, trainer, logs: dict) -> None:
        if logs.get("val_bpc") is not None:
            mark = " (best)" if logs.get("best") else ""
            line = (f"step {logs['step']}: train {logs.get('bpc', float('nan')):.3f} bpc, "
                    f"validation {logs['val_bpc']:.3f} bpc{mark}")
            tqdm.write(line, file=self.stream)

    def on_train_end(self, trainer, logs: dict) -> None:
        self.bar.close()


class Preview(Callback):
    """Prints a short free-running sample at each evaluation (the char-rnn habit)."""

    def __init__(self, length: int, temperature: float = 0.8, stream=None):
        self.length, self.temperature = length, temperature
        self.stream = stream or sys.stderr

    def on_evaluate(self, trainer, logs: dict) -> None:
        from chargen.generation import GenerationRequest, NumpyStepper, generate
        from chargen.sampling import registry

        vocab = trainer.vocab
        strategy = registry.load("random").create()
        request = GenerationRequest(length=self.length, temperature=self.temperature, seed=logs["step"])
        text = generate(NumpyStepper(trainer.model), vocab, strategy, request)[0]
        tqdm.write("  | " + text.replace("\n", "\n  | "), file=self.stream)
