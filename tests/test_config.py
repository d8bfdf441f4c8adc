"""The one source of configuration: everything that offers or stores an option agrees with `config.py`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import pytest

from chargen import config
from chargen.cells import CELLS
from chargen.cli import train
from chargen.config import OPTIONS, TrainingConfig
from chargen.errors import ChargenError
from chargen.sessions import resumed_limits

README = Path(__file__).resolve().parents[1] / "README.md"


def test_training_config_holds_exactly_the_run_options_with_their_defaults():
    fields = {field.name: field.default for field in dataclasses.fields(TrainingConfig)}
    run_options = {o.name: o.default for o in config.TRAINING_OPTIONS if o.kind != config.SESSION}
    assert fields == run_options


def test_the_train_command_offers_every_option_with_its_default_and_help():
    parameters = {p.name: p for p in train.params if isinstance(p, click.Option)}
    assert set(parameters) == set(OPTIONS)
    for name, option in OPTIONS.items():
        assert parameters[name].default == option.default, name
        assert parameters[name].help == option.help, name
        assert option.flag_name in parameters[name].opts, name


def test_the_readme_table_is_the_one_config_makes():
    assert config.option_table() in README.read_text(encoding="utf-8")


def test_cells_take_their_gate_names_and_states_from_the_config():
    assert set(CELLS) == set(config.CELL_KINDS)
    for kind, cell_class in CELLS.items():
        cell = cell_class(3)
        assert cell.gate_names == config.CELL_KINDS[kind].gate_names
        assert cell.gate_values == config.CELL_KINDS[kind].gate_values
        assert len(cell.state_size) == config.CELL_KINDS[kind].num_states


def test_a_resumed_run_may_change_only_its_limits():
    saved = TrainingConfig(steps=10, eval_every=5)
    assert resumed_limits(saved, {"eval_every": 2}) == {"eval_every": 2}
    assert resumed_limits(saved, {"units": 256}) == {}  # given, but equal to the run's: no change
    with pytest.raises(ChargenError, match=r"--units 32 differs from the resumed run's 256.*only --steps, --epochs"):
        resumed_limits(saved, {"units": 32})
    with pytest.raises(ChargenError, match="--learning-rate"):
        resumed_limits(saved, {"learning_rate": 0.1})


def test_giving_one_stop_limit_on_resume_lifts_the_others():
    saved = TrainingConfig(steps=10, epochs=2.0)
    assert resumed_limits(saved, {"time_limit": 30.0}) == {"steps": None, "epochs": None, "time_limit": 30.0}
    assert resumed_limits(saved, {}) == {}


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"units": 0}, "units"),
        ({"units": True}, "units"),
        ({"cell": "transformer"}, "cell"),
        ({"mode": "guess"}, "mode"),
        ({"dropout": 1.0}, "dropout"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"mode": "teacher-forcing", "stateful": True}, "stateful"),
        ({"cell": "lstm", "reset_after": True}, "reset_after"),
        ({"activation": "softplus"}, "activation"),
        ({"cell": "gru", "activation": "relu"}, "activation"),
        ({"precision": "float64"}, "precision"),
        ({"val_chars": 1}, "val_chars"),
        ({"val_chars": -5}, "val_chars"),
    ],
)
def test_invalid_settings_name_the_option_and_the_value(overrides, named):
    with pytest.raises(ChargenError, match=f"{named}.*Received: .*{named}="):
        TrainingConfig(**overrides)


def test_a_run_saved_before_an_option_existed_keeps_its_behaviour_then():
    older = {"reset_after", "lr_schedule", "precision", "val_chars", "activation"}
    saved = {k: v for k, v in TrainingConfig(cell="gru").to_dict().items() if k not in older}
    restored = TrainingConfig.from_saved(saved)
    assert restored.reset_after is False
    assert restored.precision == "float32"
    assert restored.lr_schedule == "constant"  # new runs default to cosine; older ones trained at a constant rate
    assert TrainingConfig.from_saved({**saved, "lr_schedule": "cosine"}).lr_schedule == "cosine"
    assert restored.val_chars == 0  # older runs evaluated on the whole validation text
    assert restored.activation == "tanh"  # the one activation there was
