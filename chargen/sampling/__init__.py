"""Sampling strategies: the contracts plugins implement, the helpers they share, and the registry.

Plugins import from here only. Behind these names: `contract` (what a strategy declares, receives and
returns), `functional` (the numpy helpers), `guard` (the checks on what a strategy returns), `registry`
(the entry points) and `builtin` (the built-in strategies). Pure numpy: no TensorFlow, so a strategy can
be written and tested without a model.
"""

from chargen.errors import ChargenError
from chargen.sampling.contract import (
    Option,
    SamplingContext,
    SequenceResult,
    SequenceSampler,
    StepFunction,
    Strategy,
    StrategyError,
    TokenSampler,
    class_problems,
    parse_options,
)
from chargen.sampling.functional import (
    categorical,
    check_logits,
    keep_min_p,
    keep_top_k,
    keep_top_p,
    keep_typical,
    log_softmax,
    softmax,
)
from chargen.sampling.guard import GuardedStrategy, check_sequence_output, check_token_output
from chargen.sampling.registry import (
    LoadedStrategy,
    StrategyDescription,
    StrategyInfo,
    available,
    describe_all,
    load,
)

__all__ = [
    "ChargenError",
    "GuardedStrategy",
    "LoadedStrategy",
    "Option",
    "SamplingContext",
    "SequenceResult",
    "SequenceSampler",
    "StepFunction",
    "Strategy",
    "StrategyDescription",
    "StrategyError",
    "StrategyInfo",
    "TokenSampler",
    "available",
    "categorical",
    "check_logits",
    "check_sequence_output",
    "check_token_output",
    "class_problems",
    "describe_all",
    "keep_min_p",
    "keep_top_k",
    "keep_top_p",
    "keep_typical",
    "load",
    "log_softmax",
    "parse_options",
    "softmax",
]
