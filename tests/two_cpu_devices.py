"""Run by tests/test_distribution.py in a process of its own: the CPU split into two logical devices.

Splitting the CPU must happen before TensorFlow initialises its devices, which is why this is a separate
process; everything that needs two devices is done in this one process, so TensorFlow starts once. The job,
JSON on the command line, has two parts, and one JSON line is printed per item:

- "cases": for each, the same tiny model trained a few steps once on one device and once on two replicas
  (MirroredStrategy) at the same global batch; the line gives the largest differences of the step losses,
  of the weights and of the carried states, and the largest weight change (so a test can tell the steps
  did something).
- "commands": `chargen` command lines run in this process; the line gives the exit code and stderr.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from click.testing import CliRunner  # noqa: E402

from chargen.cli import cli  # noqa: E402  (after the devices are split)
from chargen.config import TrainingConfig  # noqa: E402
from chargen.training import Callback, Trainer, build_model  # noqa: E402

VOCAB_SIZE = 7


class RecordLosses(Callback):
    def __init__(self):
        self.losses = []

    def on_step_end(self, trainer, logs):
        self.losses.append(logs["loss"])


def train(strategy, config: TrainingConfig, train_ids: np.ndarray, xla: bool):
    """Losses of each step, final weights, final carried states (all rows) and initial weights."""
    with strategy.scope():
        model = build_model(config, VOCAB_SIZE)
        initial = [np.array(w) for w in model.get_weights()]
        record = RecordLosses()
        trainer = Trainer(model, config, train_ids, np.zeros(0, np.int32), callbacks=[record], xla=xla)
        trainer.fit()
        states = trainer.batch_states()
    flat_states = [np.asarray(s) for layer in states for s in layer] if states is not None else []
    return record.losses, [np.array(w) for w in model.get_weights()], flat_states, initial


def largest_difference(first, second) -> float:
    return max((float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(first, second)), default=0.0)


def compare(case: dict) -> dict:
    xla = case.pop("xla", False)
    config = TrainingConfig(**{"num_layers": 1, "units": 8, "embedding_dim": 4, "seq_len": 6, "batch_size": 4,
                               "steps": 3, "eval_every": 0, "learning_rate": 0.01, **case})
    train_ids = np.random.default_rng(0).integers(0, VOCAB_SIZE, 600).astype(np.int32)
    one = train(tf.distribute.OneDeviceStrategy("/cpu:0"), config, train_ids, xla)
    adding_on_one = tf.distribute.ReductionToOneDevice()
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], cross_device_ops=adding_on_one)
    two = train(mirrored, config, train_ids, xla)
    return {**case, "xla": xla, "replicas": 2, "steps": len(two[0]),
            "loss": largest_difference(one[0], two[0]), "weights": largest_difference(one[1], two[1]),
            "states": largest_difference(one[2], two[2]), "state_rows": [len(s) for s in two[2]],
            "weight_change": largest_difference(one[1], one[3])}


def run_command(arguments: list[str]) -> dict:
    result = CliRunner().invoke(cli, arguments)
    return {"command": arguments, "exit_code": result.exit_code, "stderr": result.stderr}


if __name__ == "__main__":
    job = json.loads(sys.argv[1])
    for given in job.get("cases", []):
        print(json.dumps(compare(given)), flush=True)
    for arguments in job.get("commands", []):
        print(json.dumps(run_command(arguments)), flush=True)
