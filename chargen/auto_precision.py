"""`chargen sample --precision auto`: the generation engine's arithmetic, chosen for the hardware at hand.

Lower precision only pays on units built for it. A CPU without bfloat16 instructions emulates the type
(converting to float32 and back around every product), so there the numpy float32 engine is the
fastest and nothing is measured: `auto` costs nothing. Where fast units exist, the answer still
depends on the batch (at batch 1 TensorFlow's per-call overhead can outweigh the faster products), so
both engines are timed at the request's batch and the faster one is used:

- a GPU that TensorFlow sees: float16 (tensor cores compute it on every GPU that has them; bfloat16
  needs a newer generation);
- a CPU whose flags (/proc/cpuinfo) include `amx_bf16` or `avx512_bf16`: bfloat16.

`choose_precision` holds the decision, with the hardware facts and the timing passed in, so each case
can be tested on any machine; `auto_stepper` gathers the facts, times the real engines and returns the
chosen one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from chargen.cpuinfo import feature_flags
from chargen.generation import make_stepper

BFLOAT16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo's names for bfloat16 matrix / vector units
TIMED_STEPS = 5  # steps timed per engine, after one warm-up step (which traces TensorFlow's function)


@dataclass(frozen=True)
class Hardware:
    """What decides whether lower precision can pay here."""

    cpu_flags: frozenset[str] = frozenset()  # the CPU's feature flags, as /proc/cpuinfo lists them
    gpus: int = 0  # GPUs TensorFlow sees

    @classmethod
    def detect(cls) -> Hardware:
        """This machine's facts; no flags where /proc/cpuinfo is absent (then only a GPU counts)."""
        import tensorflow as tf

        return cls(cpu_flags=feature_flags(), gpus=len(tf.config.list_physical_devices("GPU")))

    def candidate(self) -> tuple[str, str] | None:
        """The lower precision worth timing against float32 here, and the fact that makes it so; or None."""
        if self.gpus:
            return "float16", f"{self.gpus} GPU(s) seen by TensorFlow"
        units = [flag for flag in BFLOAT16_CPU_FLAGS if flag in self.cpu_flags]
        return ("bfloat16", f"this CPU has {' and '.join(units)}") if units else None


@dataclass(frozen=True)
class Choice:
    """The precision `auto` picked, and why, as one line for the user."""

    precision: str
    reason: str

    @property
    def line(self) -> str:
        return f"precision auto: {self.precision} ({self.reason})"


def choose_precision(hardware: Hardware, seconds_per_step: Callable[[str], float], batch: int) -> Choice:
    """float32 unless the hardware has fast lower-precision units and that engine measures faster.

    Args:
        hardware: the machine's facts.
        seconds_per_step: times one engine's step at `batch` ("float32" or a lower precision); called
            only when the hardware has a candidate, once for it and once for float32.
        batch: the rows generated together, for the line.
    """
    found = hardware.candidate()
    if found is None:
        return Choice("float32", "no GPU and no bfloat16 units in this CPU: lower precision would be slower here")
    lower, fact = found
    rates = {precision: batch / seconds_per_step(precision) for precision in (lower, "float32")}
    chosen = lower if rates[lower] > rates["float32"] else "float32"
    return Choice(chosen, f"{fact}; measured at batch {batch}: {lower} {rates[lower]:,.0f} chars/s, "
                          f"float32 {rates['float32']:,.0f}")


def step_seconds(stepper, batch: int, steps: int = TIMED_STEPS) -> float:
    """The median time of one step of `stepper` at `batch`, after one warm-up step."""
    ids = np.zeros(batch, np.int64)
    _, state = stepper.step(ids, stepper.initial_state(batch))
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        _, state = stepper.step(ids, state)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def auto_stepper(model, batch: int, hardware: Hardware | None = None):
    """The fastest engine for `model` at `batch` on this hardware, and the `Choice` that says why.

    An engine built for timing is the one returned, so the warm-up is not paid twice.
    """
    built = {}

    def seconds_per_step(precision: str) -> float:
        built[precision] = make_stepper(model, precision)
        return step_seconds(built[precision], batch)

    choice = choose_precision(hardware or Hardware.detect(), seconds_per_step, batch)
    stepper = built.get(choice.precision) or make_stepper(model, choice.precision)
    return stepper, choice
