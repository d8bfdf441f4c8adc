"""CharModel: saving and loading, carried state, dropout, configuration and argument checks."""

from __future__ import annotations

import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from chargen.model import CharModel

# Keras's own `model.save` converts variables with np.array(x), which NumPy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

KINDS = ["rnn", "gru", "lstm"]
VOCAB = 7


def small_model(cell, seed=0, **kwargs):
    """A built two-layer model with random weights (biases included)."""
    options = dict(vocab_size=VOCAB, cell=cell, num_layers=2, units=4, embedding_dim=3)
    options.update(kwargs)
    model = CharModel(**options)
    model.build()
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign(rng.normal(0.0, 0.5, size=tuple(weight.shape)).astype(weight.dtype))
    return model


def random_ids(seed, batch=2, time=8):
    return tf.constant(np.random.default_rng(seed).integers(0, VOCAB, size=(batch, time)), dtype="int32")


def random_model_states(model, seed, batch=2):
    rng = np.random.default_rng(seed)
    return [
        [tf.constant(rng.normal(0.0, 0.5, size=(batch, s)).astype("float32")) for s in layer.cell.state_size]
        for layer in model.recurrent_layers
    ]


def assert_states_close(a, b, atol):
    assert len(a) == len(b)
    for layer_a, layer_b in zip(a, b):
        assert len(layer_a) == len(layer_b)
        for x, y in zip(layer_a, layer_b):
            np.testing.assert_allclose(x, y, rtol=0, atol=atol)


@pytest.mark.parametrize("cell", KINDS)
def test_save_and_load_without_custom_objects(tmp_path, cell):
    model = small_model(cell, seed=1)
    ids = random_ids(2)
    states = random_model_states(model, 3)
    logits, final = model(ids, states=states)
    assert logits.shape == (2, 8, VOCAB)
    assert [[tuple(s.shape) for s in layer] for layer in final] == [[(2, 4)] * (2 if cell == "lstm" else 1)] * 2

    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)

    assert type(loaded) is CharModel
    assert loaded.get_config() == model.get_config()
    assert len(loaded.weights) == len(model.weights)
    for saved, restored in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(saved.numpy(), restored.numpy())
    loaded_logits, loaded_final = loaded(ids, states=states)
    np.testing.assert_allclose(loaded_logits, logits, rtol=0, atol=1e-7)
    assert_states_close(loaded_final, final, atol=1e-7)
    # And from zero states.
    np.testing.assert_allclose(loaded(ids)[0], model(ids)[0], rtol=0, atol=1e-7)


@pytest.mark.parametrize("cell", KINDS)
@pytest.mark.parametrize("through_time", [True, False], ids=["bptt", "teacher_forcing"])
def test_carried_state_continues_the_window(cell, through_time):
    model = small_model(cell, seed=4)
    ids = random_ids(5, time=10)
    full, full_states = model(ids, through_time=through_time)
    first, states = model(ids[:, :4], through_time=through_time)
    second, second_states = model(ids[:, 4:], states=states, through_time=through_time)
    np.testing.assert_allclose(tf.concat([first, second], axis=1), full, rtol=0, atol=1e-6)
    assert_states_close(second_states, full_states, atol=1e-6)
    # Starting the second half from zeros instead gives something else: the state matters.
    assert np.abs(model(ids[:, 4:], through_time=through_time)[0] - second).max() > 1e-3


def test_teacher_forcing_gives_the_same_logits():
    model = small_model("lstm", seed=6)
    ids = random_ids(7)
    bptt, bptt_states = model(ids)
    forced, forced_states = model(ids, through_time=False)
    np.testing.assert_allclose(forced, bptt, rtol=0, atol=1e-6)
    assert_states_close(forced_states, bptt_states, atol=1e-6)


def test_dropout_only_while_training():
    keras.utils.set_random_seed(8)
    model = small_model("gru", seed=9, dropout=0.5)
    plain = CharModel(vocab_size=VOCAB, cell="gru", num_layers=2, units=4, embedding_dim=3, dropout=0.0)
    plain.build()
    plain.set_weights(model.get_weights())
    ids = random_ids(10)

    inference = model(ids, training=False)[0]
    np.testing.assert_array_equal(model(ids)[0], inference)  # training defaults to False
    np.testing.assert_array_equal(model(ids, training=False)[0], inference)
    np.testing.assert_allclose(plain(ids, training=False)[0], inference, rtol=0, atol=1e-7)
    # Without dropout, training mode changes nothing.
    np.testing.assert_allclose(plain(ids, training=True)[0], inference, rtol=0, atol=1e-7)

    trained_a = model(ids, training=True)[0]
    trained_b = model(ids, training=True)[0]
    assert np.abs(trained_a - inference).max() > 1e-3
    assert np.abs(trained_a - trained_b).max() > 1e-3  # a fresh mask each call


@pytest.mark.parametrize("cell", KINDS)
def test_config_round_trip(cell):
    model = CharModel(vocab_size=VOCAB, cell=cell, num_layers=3, units=5, embedding_dim=2, dropout=0.25, name="tiny")
    config = model.get_config()
    json.dumps(config)
    for key, value in dict(vocab_size=VOCAB, cell=cell, num_layers=3, units=5, embedding_dim=2, dropout=0.25).items():
        assert config[key] == value
    assert config["name"] == "tiny"

    clone = CharModel.from_config(config)
    assert type(clone) is CharModel
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert type(revived) is CharModel
    assert revived.get_config() == config

    model.build()
    clone.build()
    assert [tuple(w.shape) for w in clone.weights] == [tuple(w.shape) for w in model.weights]
    rng = np.random.default_rng(11)
    model.set_weights([rng.normal(0.0, 0.5, size=tuple(w.shape)).astype("float32") for w in model.weights])
    clone.set_weights(model.get_weights())
    ids = random_ids(12)
    np.testing.assert_array_equal(clone(ids)[0], model(ids)[0])


def test_layers_and_initial_biases():
    model = CharModel(vocab_size=VOCAB, cell="lstm", num_layers=2, units=3, embedding_dim=2)
    model.build()
    assert len(model.recurrent_layers) == 2
    for layer in model.recurrent_layers:
        bias = layer.cell.bias.numpy()
        np.testing.assert_array_equal(bias[3:6], np.ones(3))  # forget gate, order i, f, g, o
        np.testing.assert_array_equal(np.concatenate([bias[:3], bias[6:]]), np.zeros(9))
    np.testing.assert_array_equal(model.head.bias.numpy(), np.zeros(VOCAB))

    zeros = model.initial_states(4)
    assert [[tuple(s.shape) for s in layer] for layer in zeros] == [[(4, 3), (4, 3)]] * 2
    for layer in zeros:
        for s in layer:
            np.testing.assert_array_equal(s, 0.0)


@pytest.mark.parametrize(
    "argument, value",
    [
        ("cell", "transformer"),
        ("cell", None),
        ("vocab_size", 0),
        ("num_layers", 0),
        ("units", 0),
        ("units", -2),
        ("units", 2.5),
        ("embedding_dim", 0),
        ("dropout", 1.0),
        ("dropout", -0.1),
    ],
)
def test_invalid_arguments_raise_value_error(argument, value):
    options = dict(vocab_size=VOCAB, num_layers=2, units=4, embedding_dim=3)
    options[argument] = value
    with pytest.raises(ValueError, match=re.escape(f"{argument}={value!r}")):
        CharModel(**options)



@pytest.mark.parametrize("argument", ["num_layers", "vocab_size", "embedding_dim"])
def test_non_integer_sizes_raise_value_error_naming_them(argument):
    options = dict(vocab_size=VOCAB, num_layers=2, embedding_dim=3, units=4)
    options[argument] = 2.5
    with pytest.raises(ValueError, match=f"{argument}=2.5"):
        CharModel(**options)
