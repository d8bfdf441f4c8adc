"""Sampling strategies: the contracts plugins implement, the helpers they share, and the registry.

Plugins import from here only. Pure numpy: no TensorFlow, so a strategy can be written and tested
without a model.
"""

from chargen.errors import ChargenError
from chargen.sampling.base import (
    GuardedStrategy,
    Option,
    SamplingContext,
    SequenceResult,
    SequenceSampler,
    StepFunction,
    Strategy,
    StrategyError,
    TokenSampler,
    categorical,
    check_logits,
    check_sequence_output,
    check_token_output,
    class_problems,
    keep_min_p,
    keep_top_k,
    keep_top_p,
    keep_typical,
    log_softmax,
    parse_options,
    softmax,
)
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
