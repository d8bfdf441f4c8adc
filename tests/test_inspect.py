"""`chargen inspect`: the gate values against the equations recomputed in numpy, the features and correlations
against hand-written expectations, the page, and the command with its mistakes."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from chargen import inspection
from chargen.cells import make_cell
from chargen.config import CELL_KINDS
from chargen.model import CharModel
from chargen.vocab import Vocabulary

from cell_cases import ACTIVATION_CASES, CASES, random_states, randomize
from helpers import ColouredPage, assert_user_error, run_cli


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


ACTIVATIONS = {"tanh": np.tanh, "sigmoid": sigmoid, "relu": lambda a: np.maximum(a, 0.0)}


def numpy_step(cell, x: np.ndarray, states: list[np.ndarray]) -> dict[str, np.ndarray]:
    """One step of `cell` from the equations in its docstring, in float64 numpy: every signal by name."""
    W_x, W_h, b = (np.asarray(v, np.float64) for v in (cell.input_kernel, cell.recurrent_kernel, cell.bias))
    if cell.kind == "rnn":
        return {"h": ACTIVATIONS[cell.activation](x @ W_x + states[0] @ W_h + b)}
    if cell.kind == "lstm":
        h, c = states
        a_i, a_f, a_g, a_o = np.split(x @ W_x + h @ W_h + b, 4, axis=-1)
        i, f, g, o = sigmoid(a_i), sigmoid(a_f), np.tanh(a_g), sigmoid(a_o)
        c = f * c + i * g
        return {"h": o * np.tanh(c), "c": c, "i": i, "f": f, "g": g, "o": o}
    (h,) = states
    (W_xz, W_xr, W_xh), (W_hz, W_hr, W_hh), (b_z, b_r, b_h) = (np.split(w, 3, axis=-1) for w in (W_x, W_h, b))
    if cell.reset_after:
        b2_z, b2_r, b2_h = np.split(np.asarray(cell.recurrent_bias, np.float64), 3)
        z = sigmoid(x @ W_xz + b_z + h @ W_hz + b2_z)
        r = sigmoid(x @ W_xr + b_r + h @ W_hr + b2_r)
        candidate = np.tanh(x @ W_xh + b_h + r * (h @ W_hh + b2_h))
    else:
        z = sigmoid(x @ W_xz + h @ W_hz + b_z)
        r = sigmoid(x @ W_xr + h @ W_hr + b_r)
        candidate = np.tanh(x @ W_xh + (r * h) @ W_hh + b_h)
    return {"h": z * h + (1 - z) * candidate, "z": z, "r": r, "h~": candidate}


# The cells' gate values ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, kwargs", CASES + ACTIVATION_CASES)
def test_a_step_returns_its_gate_values_as_the_equations_give_them(kind, kwargs):
    rng = np.random.default_rng(0)
    cell = make_cell(kind, 5, **kwargs)
    cell.build((3, 4))
    randomize(cell, rng)
    x, states = rng.normal(size=(3, 4)).astype("float32"), random_states(cell, rng, 3)
    output, new_states, gates = cell(x, states, return_gates=True)
    expected = numpy_step(cell, x.astype(np.float64), [np.asarray(s, np.float64) for s in states])
    assert tuple(gates) == cell.gate_values
    got = {"h": output, **dict(zip(("h", "c"), new_states)), **gates}
    assert set(got) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(np.asarray(got[name]), value, rtol=1e-5, atol=1e-6, err_msg=name)
    plain_output, plain_states = cell(x, states)  # not asked: the same step, without the gates
    np.testing.assert_array_equal(plain_output, output)
    assert len(plain_states) == len(new_states)


@pytest.mark.parametrize("cell, num_layers", [("rnn", 1), ("gru", 1), ("lstm", 2)])
def test_every_signal_of_every_layer_equals_numpy_stepping_through_the_text(cell, num_layers):
    """A second layer reads the first's h; the logits from the top h equal the model's own."""
    vocab = Vocabulary.from_text("ab\"( )\n")
    text = "".join(np.random.default_rng(1).choice(list(vocab.chars), size=40))
    keras.utils.set_random_seed(0)
    model = CharModel(len(vocab), cell=cell, num_layers=num_layers, units=6, embedding_dim=4)
    model.build()
    randomize(model, np.random.default_rng(2))
    looked = inspection.inspect_text(model, vocab, text)
    below = np.asarray(model.embedding.embeddings, np.float64)[vocab.encode(text)]  # (time, embedding_dim)
    for layer, traced in zip(model.recurrent_layers, looked.layers):
        states = [np.zeros((1, 6)) for _ in layer.cell.state_size]
        steps = []
        for x in below:
            steps.append(numpy_step(layer.cell, x[None], states))
            states = [steps[-1][name] for name in ("h", "c")[:len(states)]]
        assert tuple(traced) == looked.signals
        for name, values in traced.items():
            assert values.shape == (len(text), 6)
            np.testing.assert_allclose(values, np.concatenate([s[name] for s in steps]), atol=2e-5, err_msg=name)
        below = traced["h"].astype(np.float64)
    if num_layers > 1:  # the stack as the model itself runs it (its fused path): the same logits
        logits, _ = model(tf.constant(vocab.encode(text)[None]))
        np.testing.assert_allclose(np.asarray(model.head(looked.layers[-1]["h"])), logits[0], atol=1e-5)


# Features and correlations --------------------------------------------------------------------------

def test_the_features_of_a_text_written_out_by_hand():
    features = inspection.text_features('ab "c d" (e)\nf')
    #                                        a  b  _  "  c  _  d  "  _  (  e  )  \n f
    assert features["in quotes"].tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert features["in brackets"].tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0]
    assert features["column"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0, 1]
    assert features["after newline"].tolist() == [0] * 12 + [1, 0]
    assert features["after space"].tolist() == [0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0]
    assert features["in word"].tolist() == [1, 1, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 1]
    assert features["word position"].tolist() == [1, 2, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 1]
    assert set(features) == set(inspection.FEATURES)


def synthetic(text: str, cell: str = "lstm", units: int = 4, seed: int = 0) -> inspection.Inspection:
    """An inspection with random signals, no model: unit 2 of layer 1's c follows the quotes, minus noise."""
    rng = np.random.default_rng(seed)
    names = CELL_KINDS[cell].signals
    layers = [{name: rng.uniform(0.05, 0.95, size=(len(text), units)).astype(np.float32) for name in names}
              for _ in range(2)]
    if cell == "lstm":
        layers[1]["c"][:, 2] = 3.0 * inspection.text_features(text)["in quotes"] - 1.2 + rng.normal(0, 0.01, len(text))
        layers[1]["c"][:, 3] = 0.0  # a unit that never moves
    return inspection.Inspection(text, cell, "tanh", layers)


def test_pearson_agrees_with_numpy_and_a_constant_unit_scores_zero():
    rng = np.random.default_rng(0)
    feature, values = rng.normal(size=50), rng.normal(size=(50, 3))
    values[:, 2] = 1.5
    expected = [np.corrcoef(feature, values[:, j])[0, 1] for j in range(2)]
    np.testing.assert_allclose(inspection.pearson(feature, values), [*expected, 0.0], atol=1e-12)


def test_the_unit_that_follows_the_quotes_comes_first():
    text = 'say "yes" or "no" (and) then\n"again" now\n' * 3
    looked = synthetic(text)
    found = inspection.correlations(looked, count=2)
    quotes = [c for c in found if c.feature == "in quotes"]
    assert len(quotes) == 2 and (quotes[0].layer, quotes[0].unit, quotes[0].signal) == (1, 2, "c")
    assert quotes[0].r > 0.99 and abs(quotes[1].r) < 0.9
    assert {c.feature for c in found} == set(inspection.FEATURES)
    assert inspection.strongest_unit(looked, "c") == (1, 2)
    # a feature that never changes in the text is left out: no newline, no bracket here
    assert {c.feature for c in inspection.correlations(synthetic('"ab" cd'), 1)} == \
        {"in quotes", "column", "after space", "in word", "word position"}


# The page ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("layer, unit, signal", [(1, 2, "c"), (0, 1, "f"), (1, 0, "g")])
def test_the_page_colours_the_text_by_the_chosen_signal_on_its_legend(layer, unit, signal):
    text = 'x <b>&"q"\n(y) z\n' * 2
    looked = synthetic(text)
    found = inspection.correlations(looked, count=2)
    page_text = inspection.to_html(looked, layer, unit, signal, found, "a <title> & more")
    page = ColouredPage(page_text)
    assert "".join(c["char"] for c in page.characters) == text and len(page.characters) == len(text)
    values = looked.layers[layer][signal][:, unit].astype(np.float64)
    low, high = min(page.swatches), max(page.swatches)
    assert (low, high) == {"c": (-np.abs(values).max(), np.abs(values).max()), "f": (0, 1), "g": (-1, 1)}[signal]
    points = sorted(page.swatches)
    for character, value in zip(page.characters, values):
        legend = [np.interp(value, points, [page.swatches[p][k] for p in points]) for k in range(3)]
        assert np.abs(np.array(character["rgb"]) - legend).max() <= 1, (character, value)
        assert f"{signal} = {value:.3f}" in character["title"]
    assert page.swatches[0.0] == (255, 255, 255)
    assert [row for row in page.rows if row][0] == ["in quotes", f"{found[0].r:+.3f}", "1:2", "c"]
    assert "<title>a &lt;title&gt; &amp; more</title>" in page_text


# The command ---------------------------------------------------------------------------------------

def test_the_table_shows_every_signal_of_the_unit_at_each_character_then_the_correlations():
    text = 'a "b"\n c'
    looked = synthetic(text)
    found = inspection.correlations(looked, count=1)
    lines = inspection.format_table(looked, 1, 2, found).splitlines()
    assert lines[1].split() == ["char", "h", "c", "i", "f", "g", "o"]
    for line, t in zip(lines[2:2 + len(text)], range(len(text))):
        shown, values = line[:8].rstrip(), line[8:].split()  # the character's column is 8 wide
        assert shown == {" ": "' '", "\n": "\\n"}.get(text[t], text[t])
        expected = [looked.layers[1][name][t, 2] for name in looked.signals]
        np.testing.assert_allclose([float(v) for v in values], expected, atol=5e-5)
    assert lines[2 + len(text)].startswith("units most correlated with features of the text")
    assert lines[4 + len(text)].split() == ["in", "quotes", f"{found[0].r:+.3f}", "1:2", "c"]
    assert len(lines) == 4 + len(text) + len(found)


def test_the_command_reads_a_file_and_writes_the_numbers_and_the_page(trained, tmp_path):
    text = "amber birch cedar\ndelta"
    (tmp_path / "passage.txt").write_text(text, encoding="utf-8")
    page = tmp_path / "page.html"
    result = run_cli("inspect", trained["run"], "--file", tmp_path / "passage.txt", "--json", "--html", page,
                     "--unit", "0:3", "--signal", "f")
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.stdout)
    assert numbers["cell"] == "lstm" and numbers["signals"] == ["h", "c", "i", "f", "g", "o"]
    assert numbers["unit"] == [0, 3] and numbers["text"] == text and numbers["layers"] == 1
    assert np.array(numbers["values"][0]["f"]).shape == (len(text), 16)
    correlated = {c["feature"] for c in numbers["correlations"]}  # no quote or bracket in the text: left out
    assert correlated == {"column", "after newline", "after space", "in word", "word position"}
    assert len(numbers["correlations"]) == 3 * len(correlated)  # --top 3 by default
    shown = ColouredPage(page.read_text(encoding="utf-8")).characters
    assert "".join(c["char"] for c in shown) == text
    assert f"f = {numbers['values'][0]['f'][5][3]:.3f}" in shown[5]["title"]


@pytest.mark.parametrize("arguments, fragments", [
    ([], ["TEXT or with --file"]),
    (["amber", "--file", "x.txt"], ["TEXT or with --file"]),
    (["amber", "--unit", "3"], ["LAYER:INDEX", "--unit 3"]),
    (["--file", "absent.txt"], ["absent.txt"]),
])
def test_mistakes_before_the_model_loads_are_one_line(trained, arguments, fragments):
    assert_user_error(run_cli("inspect", trained["run"], *arguments), *fragments)


def test_mistakes_about_the_model_are_one_line(trained):
    assert_user_error(run_cli("inspect", trained["run"], "amber BIRCH"), "not in the model's vocabulary", "'BCHIR'")
    assert_user_error(run_cli("inspect", trained["run"], "amber", "--unit", "0:16"),
                      "1 layer(s) of 16 units", "INDEX 0..15", "Received: --unit 0:16")
    assert_user_error(run_cli("inspect", trained["run"], "amber", "--signal", "z"),
                      "--signal z", "h, c, i, f, g, o")
