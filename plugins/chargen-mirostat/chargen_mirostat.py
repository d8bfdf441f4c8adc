"""Mirostat 2 for chargen: steer the surprise of generated text toward a target.

Basu et al., "Mirostat: a neural text decoding algorithm that directly controls perplexity" (ICLR 2021).
Fixed truncations (top-k, top-p) give dull text where the model is confident and noisy text where it
is not; Mirostat instead adapts its cut-off mu with a feedback loop so that the average surprise,
-log2 p of each chosen character under the model, stays near tau bits.
"""

from __future__ import annotations

import math

import numpy as np

from chargen.sampling import ChargenError, Option, SamplingContext, TokenSampler, categorical, log_softmax


class Mirostat(TokenSampler):
    """Mirostat 2: drop characters more surprising than mu, draw, then move mu by eta * (surprise - tau).

    mu is kept per row for the length of one run and starts at 2 * tau; a run begins when the host
    asks for step 0, so reusing an instance never carries mu from one run into the next.

    Args:
        tau: the target surprise in bits per character. A well-trained character model sits around
            1.5-2 bits on text it knows; lower is safer and more repetitive, higher more adventurous.
        eta: how fast mu follows the error; larger reacts faster and wobbles more.
    """

    name = "mirostat"
    description = "Mirostat 2: adapts the cut-off so the average surprise stays near tau bits per character"
    options = (
        Option("tau", float, 2.0, "target surprise in bits per character (> 0)"),
        Option("eta", float, 0.1, "learning rate of the cut-off's feedback loop (> 0)"),
    )

    def __init__(self, tau: float = 2.0, eta: float = 0.1):
        for option, value in (("tau", tau), ("eta", eta)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ChargenError(f"mirostat needs a finite {option} > 0. Received: {option}={value!r}")
        self.tau = tau
        self.eta = eta
        self._mu: np.ndarray | None = None  # float[batch]: each row's cut-off, in bits

    def sample(self, logits: np.ndarray, context: SamplingContext) -> np.ndarray:
        rows = np.arange(logits.shape[0])
        if context.step == 0 or self._mu is None or self._mu.shape[0] != rows.size:
            self._mu = np.full(rows.size, 2.0 * self.tau)
        log_probabilities = log_softmax(logits)
        surprise = -log_probabilities / math.log(2)  # bits
        keep = surprise < self._mu[:, None]
        keep[rows, surprise.argmin(axis=-1)] = True  # the most likely character always stays
        chosen = categorical(np.where(keep, np.exp(log_probabilities), 0.0), context.rng)
        self._mu = self._mu - self.eta * (surprise[rows, chosen] - self.tau)
        return chosen
