"""A strategy that bans or constrains characters may refuse the most likely one even at a temperature near 0:
it declares `greedy_when_cold = False`, and `check_strategy` then drops that one rule and keeps every other."""

import numpy as np
import pytest

from chargen.sampling import ChargenError, Option, TokenSampler, categorical, class_problems, softmax
from chargen.testing import check_strategy


class Whitelist(TokenSampler):
    """Random sampling among the allowed characters only (the stub model's are "a" to "l")."""

    name = "whitelist"
    description = "random sampling among the characters given by -o allowed=..."
    options = (Option("allowed", str, "abcdef", "the characters that may be generated"),)
    greedy_when_cold = False

    def __init__(self, allowed: str = "abcdef"):
        if not allowed:
            raise ChargenError("whitelist needs at least one allowed character. Received: allowed=''")
        self.allowed = allowed

    def sample(self, logits, context):
        allowed = np.isin(np.array(context.vocab.chars), list(self.allowed))
        return categorical(softmax(np.where(allowed, logits, -np.inf)), context.rng)


class ClaimsGreedy(Whitelist):
    greedy_when_cold = True


class WhitelistThatScribbles(Whitelist):
    """Declares the exemption but breaks another rule: it edits the host's logits in place."""

    def sample(self, logits, context):
        logits[:, np.isin(np.array(context.vocab.chars), list(self.allowed), invert=True)] = -np.inf
        return categorical(softmax(logits), context.rng)


def test_a_declared_constraining_strategy_passes():
    check_strategy(Whitelist)
    check_strategy(Whitelist, {"allowed": "aeiou"})


def test_without_the_declaration_the_same_strategy_fails_the_rule():
    """So the stub model does make the whitelist refuse the most likely character: the exemption is exercised."""
    with pytest.raises(AssertionError, match="did not pick the most likely character"):
        check_strategy(ClaimsGreedy)


def test_the_other_rules_still_apply_to_a_declared_strategy():
    with pytest.raises(AssertionError, match="modified the logits"):
        check_strategy(WhitelistThatScribbles)


def test_the_declaration_must_be_a_bool():
    class Vague(Whitelist):
        greedy_when_cold = "sometimes"

    assert any("greedy_when_cold" in problem for problem in class_problems(Vague))
    with pytest.raises(AssertionError, match="greedy_when_cold"):
        check_strategy(Vague)
