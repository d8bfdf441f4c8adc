"""chargen-mirostat's own tests: chargen's conformance check, then Mirostat's promise on fixed distributions."""

import importlib.metadata

import numpy as np
import pytest

from chargen.errors import ChargenError
from chargen.sampling import SamplingContext
from chargen.testing import check_strategy
from chargen.vocab import Vocabulary
from chargen_mirostat import Mirostat

VOCAB = Vocabulary("abcdefghijklmnopqrstuvwxyz0123")
RANKS = np.arange(1, len(VOCAB) + 1, dtype=np.float64)
# Two stationary Zipf-like rows: a peaked one (entropy 3.9 bits, best character 1.8 bits of surprise)
# and a flat one (entropy 4.6 bits, best character 3.0 bits). One shared cut-off could not serve both.
LOGITS = np.stack([-1.1 * np.log(RANKS), -0.6 * np.log(RANKS)])


def run(sampler: Mirostat, logits: np.ndarray, steps: int, seed: int = 0) -> np.ndarray:
    """Sample `steps` characters per row from the same logits every step; returns int[batch, steps]."""
    rng = np.random.default_rng(seed)
    chosen = np.zeros((logits.shape[0], steps), dtype=np.int64)
    for step in range(steps):
        context = SamplingContext(step=step, ids=chosen[:, :step], rng=rng, vocab=VOCAB)
        chosen[:, step] = sampler.sample(logits, context)
    return chosen


@pytest.mark.parametrize("options", [{}, {"tau": 1.0, "eta": 0.5}, {"tau": 6.0}])
def test_keeps_the_chargen_contract(options):
    check_strategy(Mirostat, options)


@pytest.mark.parametrize("tau", [3.5, 4.0])
def test_each_rows_average_surprise_approaches_tau(tau):
    logits = np.repeat(LOGITS, 8, axis=0)  # rows alternate peaked, flat
    chosen = run(Mirostat(tau=tau), logits, steps=1500)
    log_probabilities = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    surprise = -np.take_along_axis(log_probabilities, chosen, axis=-1) / np.log(2)
    settled = surprise[:, 200:]  # once mu has moved from its start at 2 * tau
    for shape in (0, 1):
        assert abs(settled[shape::2].mean() - tau) < 0.1


def test_a_new_run_starts_from_a_fresh_cut_off():
    sampler = Mirostat(tau=3.0)
    first = run(sampler, LOGITS, steps=60, seed=7)
    assert np.array_equal(run(sampler, LOGITS, steps=60, seed=7), first)
    assert np.array_equal(run(Mirostat(tau=3.0), LOGITS, steps=60, seed=7), first)


@pytest.mark.parametrize("options, message", [({"tau": 0.0}, "Received: tau=0.0"), ({"eta": -1}, "Received: eta=-1")])
def test_rejects_non_positive_options(options, message):
    with pytest.raises(ChargenError, match=message):
        Mirostat(**options)


def test_is_registered_under_its_name_and_declares_chargen_as_its_host():
    (entry_point,) = importlib.metadata.entry_points(group="chargen.samplers", name="mirostat")
    assert entry_point.load() is Mirostat
    assert entry_point.dist.requires == ["chargen"]
