"""chargen.testing.check_strategy: it passes the built-ins and catches each kind of broken strategy."""

import numpy as np
import pytest

from chargen.sampling import Option, SequenceResult, SequenceSampler, TokenSampler, categorical, softmax
from chargen.sampling.builtin import Beam, Greedy, MinP, Random, TopK, TopP, Typical
from chargen.testing import check_strategy


@pytest.mark.parametrize(
    "cls, options",
    [(Greedy, {}), (Random, {}), (TopK, {"k": 1}), (TopK, {"k": 50}), (TopP, {"p": 0.3}), (MinP, {"p": 0.5}),
     (Typical, {"p": 0.2}), (Beam, {}), (Beam, {"width": 1}), (Beam, {"width": 30})],
)
def test_passes_the_builtins(cls, options):
    check_strategy(cls, options)


class Honest(TokenSampler):
    """A correct strategy; each broken one below changes one thing."""

    name = "honest"
    description = "plain sampling"

    def sample(self, logits, context):
        return categorical(softmax(logits), context.rng)


class WrongShape(Honest):
    def sample(self, logits, context):
        return super().sample(logits, context)[:1]


class FloatIds(Honest):
    def sample(self, logits, context):
        return super().sample(logits, context).astype(np.float64)


class OffByOne(Honest):
    def sample(self, logits, context):
        return super().sample(logits, context) + 1


class Unseeded(Honest):
    def sample(self, logits, context):
        return categorical(softmax(logits), np.random.default_rng())


class NeverResets(Honest):
    """Keeps a counter across runs: the second run with the same seed differs from the first."""

    calls = 0

    def sample(self, logits, context):
        self.calls += 1
        return np.full(logits.shape[0], self.calls % logits.shape[-1])


class Scribbler(Honest):
    def sample(self, logits, context):
        logits -= logits.max()
        return super().sample(logits, context)


class Rewriter(Honest):
    def sample(self, logits, context):
        context.ids[:, -1] = 0
        return super().sample(logits, context)


class PrimeRewriter(SequenceSampler):
    name = "prime-rewriter"
    description = "writes into the prime it is handed"
    stochastic = False

    def generate(self, step, state, prime_ids, length, context):
        prime_ids[:, 0] = 0
        return SequenceResult(ids=np.zeros((prime_ids.shape[0], length), np.int64))


class IgnoresLogits(Honest):
    def sample(self, logits, context):
        return context.rng.integers(0, logits.shape[-1], size=logits.shape[0])


class ForgetsOption(Honest):
    options = (Option("k", int, 3, "declared, never stored"),)

    def __init__(self, k=3):
        pass


class DriftingDefault(Honest):
    options = (Option("k", int, 3, "default differs from the constructor's"),)

    def __init__(self, k=4):
        self.k = k


class Chatty(Honest):
    description = "first line\nsecond line"


class ShortSequences(SequenceSampler):
    name = "short"
    description = "one id short"
    stochastic = False

    def generate(self, step, state, prime_ids, length, context):
        return SequenceResult(ids=np.zeros((prime_ids.shape[0], length - 1), np.int64))


@pytest.mark.parametrize(
    "cls, message",
    [
        (WrongShape, "returned ids of shape \\(1,\\) where \\(5\\) was due"),
        (FloatIds, "returned ids with dtype float64"),
        (OffByOne, "outside the vocabulary \\[0, 12\\)"),
        (Unseeded, "different ids for the same seed when run twice"),
        (NeverResets, "reset per-run state when context.step == 0"),
        (Scribbler, "modified the logits it was given"),
        (Rewriter, "'honest' .* failed at step 0: ValueError: .*read-only"),
        (PrimeRewriter, "'prime-rewriter' .* failed: ValueError: .*read-only"),
        (IgnoresLogits, "did not pick the most likely character at temperature 0.001"),
        (ForgetsOption, "has no attribute 'k'"),
        (DriftingDefault, "declares default 3 but the constructor's default is 4"),
        (Chatty, "`description` must be one non-empty line"),
        (ShortSequences, "returned ids of shape \\(1, 15\\) where \\(1, 16\\) was due"),
        (int, "is not a subclass of chargen.sampling.TokenSampler"),
    ],
)
def test_catches_a_broken_strategy(cls, message):
    with pytest.raises(AssertionError, match=message):
        check_strategy(cls)


def test_reports_options_the_constructor_refuses():
    message = "could not be built with options \\{'k': 0\\}: ChargenError: .*Received: k=0"
    with pytest.raises(AssertionError, match=message):
        check_strategy(TopK, {"k": 0})
