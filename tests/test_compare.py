"""`chargen compare`: the grid, one table of trials against their sources' floors, repeatable with a seed."""

from __future__ import annotations

import json

import pytest

from chargen import compare, synthetic

from helpers import assert_user_error, run_cli


def test_the_grid_gives_gated_cells_their_own_activation_only():
    trials = compare.grid(["rnn", "lstm"], ["bptt"], ["tanh", "sigmoid"], [5, 20])
    assert [(t.cell, t.activation, t.lag) for t in trials] == [
        ("rnn", "tanh", 5), ("rnn", "tanh", 20), ("rnn", "sigmoid", 5), ("rnn", "sigmoid", 20),
        ("lstm", "tanh", 5), ("lstm", "tanh", 20)]


def test_a_tiny_grid_reports_each_trial_against_its_floors_and_repeats_with_its_seed():
    arguments = ["compare", "--cells", "rnn,gru", "--lags", "3", "--steps", "3", "--units", "4", "--json"]
    result = run_cli(*arguments)
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    source = synthetic.recall_source(3, compare.NUM_KEYS, compare.FILLER_SIZE, compare.SOURCE_LENGTH, 0)
    assert [(r["cell"], r["lag"], r["steps"]) for r in records] == [("rnn", 3, 3), ("gru", 3, 3)]
    for record in records:
        assert record["floor"] == pytest.approx(source.entropy_bits_per_char)
        assert record["no_recall"] == pytest.approx(source.no_recall_bits_per_char)
        assert record["val_bpc"] > record["floor"] and record["parameters"] > 0
        assert record["recalled"] == pytest.approx(
            (record["no_recall"] - record["val_bpc"]) / (record["no_recall"] - record["floor"]))
    again = json.loads(run_cli(*arguments).stdout)
    assert [r["val_bpc"] for r in again] == pytest.approx([r["val_bpc"] for r in records], abs=1e-6)
    table = run_cli(*arguments[:-1])
    assert table.stdout.splitlines()[0].split()[:4] == ["cell", "mode", "activation", "lag"]
    assert len(table.stdout.splitlines()) == 3


@pytest.mark.parametrize("option, value", [("--cells", "rnn,transformer"), ("--lags", "5,x"), ("--lags", "0"),
                                           ("--modes", "")])
def test_a_bad_list_is_one_line(option, value):
    assert_user_error(run_cli("compare", option, value), option, "comma-separated")
