"""`--activation` for the SimpleRNN: the option's path from the command line to the cell and back.

The equations of each activation (against Keras's own cell, finite differences, the fused path) are
checked in test_cells.py and test_fused.py through `cell_cases.ACTIVATION_CASES`; here: the numpy
generation engine, the refusals, and a run that records and shows its activation.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_generation import assert_stepper_matches_model

from chargen.cells import make_cell
from chargen.checkpoints import Run
from chargen.config import ACTIVATIONS
from chargen.model import CharModel

from helpers import TINY, assert_user_error, run_cli, write_corpus


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_the_numpy_stepper_computes_each_activation_as_the_model_does(activation):
    model = CharModel(25, cell="rnn", num_layers=2, units=16, embedding_dim=8, activation=activation)
    model.build()
    rng = np.random.default_rng(3)
    for weight in model.weights:  # small enough that relu's unbounded units stay within float32's 1e-5 here
        weight.assign(rng.normal(0.0, 0.25, size=tuple(weight.shape)).astype("float32"))
    assert all(layer.cell.activation == activation for layer in model.recurrent_layers)
    assert_stepper_matches_model(model)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_gated_cells_refuse_another_activation(kind):
    with pytest.raises(ValueError, match="SimpleRNN only"):
        make_cell(kind, 4, activation="relu")
    assert make_cell(kind, 4, activation="tanh").units == 4  # their own, stated, is accepted


def test_an_unknown_activation_is_refused_by_the_cell():
    with pytest.raises(ValueError, match="Received: activation='softplus'"):
        make_cell("rnn", 4, activation="softplus")


def test_the_cli_refuses_an_activation_for_a_gated_cell(tmp_path):
    corpus = write_corpus(tmp_path / "words.txt")
    result = run_cli("train", corpus, *TINY, "--cell", "gru", "--activation", "sigmoid",
                     "--checkpoint-dir", tmp_path / "ck")
    assert_user_error(result, "activation", "--cell rnn", "Received: cell='gru', activation='sigmoid'")
    assert not (tmp_path / "ck").exists()


@pytest.mark.slow
def test_a_run_records_its_activation_and_info_shows_it(tmp_path):
    corpus = write_corpus(tmp_path / "words.txt")
    checkpoint_dir = tmp_path / "ck"
    result = run_cli("train", corpus, *TINY, "--cell", "rnn", "--activation", "sigmoid",
                     "--checkpoint-dir", checkpoint_dir, "--run-name", "sig")
    assert result.exit_code == 0, result.output
    run = checkpoint_dir / "sig"
    assert json.loads((run / "config.json").read_text(encoding="utf-8"))["training"]["activation"] == "sigmoid"
    info = run_cli("info", run, "--checkpoint-dir", checkpoint_dir)
    assert "rnn (sigmoid), 1 layer(s) of 16 units" in info.output
    assert json.loads(run_cli("info", run, "--json").output)["activation"] == "sigmoid"
    model = Run.open(run).load_model("last")
    assert [layer.cell.activation for layer in model.recurrent_layers] == ["sigmoid"]
    sampled = run_cli("sample", run, "--length", "20", "--seed", "1")
    assert sampled.exit_code == 0, sampled.output
