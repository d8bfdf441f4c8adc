"""Inputs at the edges: every numeric option of every command at 0, -1, huge, NaN and infinity; primes the model
never saw; sizes beyond memory."""

from __future__ import annotations

import math

import click
import pytest

from chargen import budget
from chargen import cli as cli_module
from chargen.cli import FiniteFloat, Integer, cli
from chargen.config import TrainingConfig
from chargen.run_info import weight_shapes

from helpers import TINY, assert_user_error, run_cli

EDGES = ["0", "-1", str(2**63 - 1), "9" * 30, "1e400", "nan", "inf", "-inf"]
NOT_FINITE = {"1e400", "nan", "inf", "-inf"}
NEVER_ACCEPTED = {Integer: NOT_FINITE | {"9" * 30}, FiniteFloat: NOT_FINITE}  # beyond int64, or not finite


def numeric_options(command=cli, path=()):
    """(command path, option) for every int or float option of every command, found by walking the CLI."""
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from numeric_options(sub, (*path, name))
        return
    for param in command.params:
        if isinstance(param, click.Option) and not param.is_flag and (
                isinstance(param.type, (Integer, FiniteFloat, click.types.IntParamType, click.types.FloatParamType))):
            yield path, param


REACHED_TENSORFLOW = 99  # the exit status of a command whose every check before TensorFlow accepted the value


def _base_arguments(path, trained, tmp_path):
    """A valid, tiny invocation of each command with numeric options, for one option to be changed in."""
    checkpoints = ["--checkpoint-dir", trained["checkpoint_dir"]]
    return {
        ("train",): ["train", trained["corpus"], *TINY, "--checkpoint-dir", tmp_path / "runs"],
        ("sample",): ["sample", "tiny", *checkpoints],
        ("gradients",): ["gradients", "--text", trained["corpus"]],
        ("inspect",): ["inspect", "tiny", "amber birch", *checkpoints],
        ("compare",): ["compare", "--cells", "rnn", "--lags", "5"],
        ("plot",): ["plot", "tiny", *checkpoints, "--output", tmp_path / "plot.png"],
        ("corpus", "synth"): ["corpus", "synth", "markov", "--length", "2000", "--output", tmp_path / "synth.txt"],
    }[path]


def test_every_numeric_option_is_bounded_by_its_type():
    """int64-bounded integers and finite floats: a new option declared with a bare int or float fails here."""
    options = list(numeric_options())
    assert len(options) > 30
    for path, option in options:
        assert isinstance(option.type, (Integer, FiniteFloat)), f"{' '.join(path)} {option.opts[0]}: {option.type}"


def test_every_numeric_option_refuses_or_accepts_each_edge_value_cleanly(trained, tmp_path, monkeypatch):
    def reached(debug):
        raise SystemExit(REACHED_TENSORFLOW)

    monkeypatch.setattr(cli_module, "_load_tensorflow", reached)
    accepted = []
    for path, option in numeric_options():
        base = _base_arguments(path, trained, tmp_path)
        for value in EDGES:
            result = run_cli(*base, option.opts[0], value)
            case = f"{' '.join(path)} {option.opts[0]} {value}"
            if result.exit_code in (0, REACHED_TENSORFLOW):
                assert value not in NEVER_ACCEPTED[type(option.type)], case
                accepted.append(case)
            elif result.exit_code == 2:  # refused by the option's type
                errors = [line for line in result.output.splitlines() if line.startswith("Error")]
                assert errors == [errors[0]] and option.opts[0] in errors[0], (case, result.output)
                assert "Traceback" not in result.output, case
            else:
                assert_user_error(result)
    assert "train --eval-every 0" in accepted and "train --seed 0" in accepted


@pytest.mark.slow
def test_extreme_values_that_are_accepted_train_a_run(tmp_path, trained):
    """The largest limits and seed: the run trains its steps and stops, nothing overflows."""
    largest = str(2**63 - 1)
    result = run_cli("train", trained["corpus"], *TINY, "--checkpoint-dir", tmp_path, "--run-name", "edges",
                     "--seed", str(2**32 - 1), "--eval-every", largest, "--val-chars", largest,
                     "--epochs", "1e300", "--time-limit", "1e300", "--steps", "2")
    assert result.exit_code == 0, result.output
    assert "step 2" in result.output


@pytest.mark.parametrize("arguments, fragments", [
    (["--batch-size", "1000000000"], ["--batch-size", "memory"]),
    (["--units", str(2**40)], ["--units", "memory"]),
])
def test_a_model_beyond_memory_is_refused_before_tensorflow_loads(trained, tmp_path, monkeypatch, arguments,
                                                                 fragments):
    monkeypatch.setattr(cli_module, "_load_tensorflow", lambda debug: pytest.fail("TensorFlow was loaded"))
    result = run_cli("train", trained["corpus"], *TINY, "--checkpoint-dir", tmp_path, *arguments)
    assert_user_error(result, *fragments)


def test_compare_with_a_model_beyond_memory_is_one_line():
    assert_user_error(run_cli("compare", "--cells", "rnn", "--lags", "5", "--units", str(2**40)), "memory")


def test_sample_refuses_no_samples_and_a_length_beyond_memory(trained):
    where = ["--checkpoint-dir", trained["checkpoint_dir"]]
    assert_user_error(run_cli("sample", "tiny", *where, "--num-samples", "0"), "num_samples must be at least 1")
    assert_user_error(run_cli("sample", "tiny", *where, "--length", str(10**15)), "--length", "memory")


def test_a_prime_with_characters_the_model_never_saw_is_refused_listing_them(trained):
    where = ["--checkpoint-dir", trained["checkpoint_dir"], "--length", "5", "--seed", "0"]
    assert_user_error(run_cli("sample", "tiny", *where, "--prime", "amber ☃é"), "2 character(s)", "☃", "é",
                      "--drop-unknown")
    result = run_cli("sample", "tiny", *where, "--prime", "amber ☃é", "--drop-unknown")
    assert result.exit_code == 0, result.output
    assert "left 2 character(s)" in result.stderr and "é☃" in result.stderr
    assert result.stdout.startswith("amber ") and "☃" not in result.stdout


@pytest.mark.parametrize("settings", [{"num_layers": 3, "units": 7, "embedding_dim": 5},
                                      {"cell": "gru", "reset_after": True, "num_layers": 2, "units": 4},
                                      {"cell": "rnn", "num_layers": 1}])
def test_the_memory_budget_counts_the_weights_the_model_has(settings):
    """The budget's closed form (no loop over --layers) against the weight list `chargen info` shows."""
    config = TrainingConfig(**settings)
    shapes = weight_shapes(config, vocab_size=11)
    assert budget.parameter_count(config, 11) == sum(math.prod(weight["shape"]) for weight in shapes)
