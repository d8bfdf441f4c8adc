"""Memory a command will need, estimated before anything is allocated, against what the machine has.

A size far beyond memory (`--batch-size 1000000000`, `--length 10**12`) would otherwise make numpy or
TensorFlow allocate until the machine swaps to a standstill, or fail deep inside them; refused up front it
costs one line. The estimates are rough upper bounds, within a small factor: they catch requests that are
orders of magnitude too large, and leave everything near the machine's size to the machine.

TensorFlow-free: the commands check before they import it.
"""

from __future__ import annotations

import os

from chargen.config import CELL_KINDS, TrainingConfig
from chargen.errors import ChargenError

FLOAT_BYTES = 4
# Per parameter while training: the weight, its gradient, and Adam's two moments.
TRAINING_COPIES = 4
# Per activation of a training window: the forward value kept for the backward pass, its error, and scratch.
ACTIVATION_COPIES = 3
# Per generated character and row: its int64 id, and its share of the decoded text and the temporaries.
GENERATION_BYTES_PER_CHAR = 24
# Per character of a synthetic corpus: the symbols drawn, their ids and the text.
SYNTHETIC_BYTES_PER_CHAR = 24


def machine_bytes() -> int:
    """The machine's physical memory (a generous ceiling: what a request may never exceed)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # a platform without these names: do not refuse anything
        return 1 << 62


def require(needed: int, what: str, advice: str) -> None:
    """Refuse `what` with one line when it needs more than the machine's memory."""
    available = machine_bytes()
    if needed > available:
        raise ChargenError(f"{what} needs about {_size(needed)} of memory and this machine has {_size(available)}; "
                           f"{advice}")


def parameter_count(config: TrainingConfig, vocab_size: int) -> int:
    """The model's weights: embedding, each layer's kernels and biases per gate, and the output layer."""
    gates = len(CELL_KINDS[config.cell].gate_names)
    units, biases = config.units, 2 if config.reset_after else 1
    first = gates * (config.embedding_dim * units + units * units + biases * units)
    deeper = gates * (2 * units * units + biases * units)  # each layer above reads the one below: units inputs
    layers = first + (config.num_layers - 1) * deeper  # a formula, not a loop: --layers may be absurd
    return vocab_size * config.embedding_dim + layers + units * vocab_size + vocab_size


def training_bytes(config: TrainingConfig, vocab_size: int) -> int:
    """Weights with their gradients and optimizer slots, and one step's activations and logits."""
    gates = len(CELL_KINDS[config.cell].gate_names)
    states = CELL_KINDS[config.cell].num_states
    positions = config.batch_size * config.seq_len
    per_position = config.embedding_dim + config.num_layers * (gates + states + 1) * config.units + vocab_size
    weights = parameter_count(config, vocab_size) * FLOAT_BYTES * TRAINING_COPIES
    return weights + positions * per_position * FLOAT_BYTES * ACTIVATION_COPIES


def check_training(config: TrainingConfig, vocab_size: int) -> None:
    """Refuse a model or batch that cannot fit, naming the options that size it."""
    require(training_bytes(config, vocab_size),
            f"training {config.cell} x{config.num_layers}x{config.units} (embedding {config.embedding_dim}) on "
            f"batches of {config.batch_size} windows of {config.seq_len} characters",
            "lower --units, --layers, --embedding-dim, --batch-size or --seq-len")


def check_recorded_model(config: TrainingConfig, vocab_size: int, run_path) -> None:
    """Refuse a run whose config.json records a model no machine could have trained: the file is damaged.

    Without this, `chargen info` would list the weights of, say, 10**18 layers one by one, forever.
    """
    weights = parameter_count(config, vocab_size) * FLOAT_BYTES
    if weights > machine_bytes():
        raise ChargenError(f"run {run_path} has a config.json that records a model of {_size(weights)} of weights "
                           f"({config.num_layers:,} layers of {config.units:,} units), more than this machine's "
                           "memory; the file is damaged: restore it or delete the run")


def check_generation(length: int, num_samples: int, prime_length: int = 0) -> None:
    """Refuse a generation whose ids and text cannot be held (they are kept whole, to cut at --stop)."""
    require((prime_length + length) * num_samples * GENERATION_BYTES_PER_CHAR,
            f"generating {num_samples:,} sample(s) of {length:,} characters",
            "lower --length or --num-samples")


def check_synthetic(length: int) -> None:
    """Refuse a synthetic corpus longer than memory (it is drawn whole, then written)."""
    require(length * SYNTHETIC_BYTES_PER_CHAR, f"making a synthetic corpus of {length:,} characters", "lower --length")


def _size(count: int) -> str:
    for unit, scale in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count:,} bytes"
