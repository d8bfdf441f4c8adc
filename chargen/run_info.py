"""What `chargen info` shows about a run, from its files alone: no model is loaded, no TensorFlow imported.

Storage is `checkpoints.py`'s job; this module only presents what a run holds, naming the weights as the
cells' equations do (W_x*, W_h*, b_* per layer and gate) with the gate names from `config.CELL_KINDS`.
"""

from __future__ import annotations

import math

from chargen.checkpoints import Run
from chargen.config import CELL_KINDS, TrainingConfig


def weight_shapes(config: TrainingConfig, vocab_size: int) -> list[dict]:
    """The model's matrices by their names in the equations, with their shapes, in model order."""
    units = config.units
    weights = [{"name": "embedding", "shape": [vocab_size, config.embedding_dim]}]
    features = config.embedding_dim
    for layer in range(config.num_layers):
        for gate in CELL_KINDS[config.cell].gate_names:
            weights += [
                {"name": f"layer{layer}.W_x{gate}", "shape": [features, units]},
                {"name": f"layer{layer}.W_h{gate}", "shape": [units, units]},
                {"name": f"layer{layer}.b_{gate}", "shape": [units]},
            ]
            if config.reset_after:  # the GRU's second bias, inside the reset gate's product
                weights.append({"name": f"layer{layer}.b'_{gate}", "shape": [units]})
        features = units
    weights += [{"name": "W_hy", "shape": [units, vocab_size]}, {"name": "b_y", "shape": [vocab_size]}]
    return weights


def describe_run(run: Run) -> dict:
    """Everything `chargen info` prints (and `--json` gives) about `run`."""
    saved = run.config
    config = TrainingConfig.from_saved(saved["training"])
    vocab_size = len(run.vocabulary())
    weights = weight_shapes(config, vocab_size)
    progress = run.load_progress("last")
    return {
        "run": str(run.path),
        "cell": config.cell,
        "reset_after": config.reset_after,
        "activation": config.activation,
        "layers": config.num_layers,
        "units": config.units,
        "embedding_dim": config.embedding_dim,
        "mode": config.mode,
        "stateful": bool(config.stateful),
        "precision": config.precision,
        "parameters": sum(math.prod(weight["shape"]) for weight in weights),
        "vocab_size": vocab_size,
        "steps": progress["step"],
        "chars_seen": progress["chars_seen"],
        "best_val_bpc": progress["best_val_bpc"],
        "last_val_bpc": progress["last_val_bpc"],
        "weights": weights,
        "training": config.to_dict(),
        "corpus": saved.get("corpus"),
        "parent": saved.get("parent"),  # the run it was fine-tuned from, if any
        "versions": saved.get("versions"),
    }
