"""`chargen gradients`: the measurement against the Jacobians chained by hand, and the three statements of the theory.

1. On a fresh SimpleRNN the gradient shrinks about geometrically with k, at a rate near the spectral radius
   of W_hh times the activation's mean slope.
2. An LSTM's gradient at long k, relative to its k = 0, is larger than a SimpleRNN's once the SimpleRNN's units
   work in the curved part of the tanh, as a trained one's do; the LSTM's rate hardly depends on that scale.
3. Under teacher forcing nothing reaches beyond k = 0: the norms there are exactly zero.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from chargen import gradients
from chargen.model import CharModel

from helpers import assert_user_error, run_cli, write_corpus

VOCAB_SIZE = 20


def random_windows(count=16, window=30, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB_SIZE, size=(count, window + 1))


def fresh(cell, units=32, num_layers=1, seed=0, **extra):
    return gradients.fresh_model(VOCAB_SIZE, seed, cell=cell, num_layers=num_layers, units=units,
                                 embedding_dim=16, **extra)


def by_hand(model: CharModel, windows: np.ndarray) -> np.ndarray:
    """A one-layer SimpleRNN's mean |dL_T/dh_(T-k)| in float64 numpy: the forward pass, then the chain
    g_(t-1) = (g_t * act'(a_t)) W_hh^T from g_T = (softmax - onehot) W_hy^T / n."""
    cell = model.recurrent_layers[0].cell
    act, slope = {"tanh": (np.tanh, lambda h: 1 - h * h),
                  "sigmoid": (lambda a: 1 / (1 + np.exp(-a)), lambda h: h * (1 - h))}[cell.activation]
    weights = {name: np.asarray(value, np.float64) for name, value in (
        ("E", model.embedding.embeddings), ("W_x", cell.input_kernel), ("W_h", cell.recurrent_kernel),
        ("b", cell.bias), ("W_y", model.head.kernel), ("b_y", model.head.bias))}
    n, steps = windows.shape[0], windows.shape[1] - 1
    h, hs = np.zeros((n, cell.units)), []
    for t in range(steps):
        h = act(weights["E"][windows[:, t]] @ weights["W_x"] + h @ weights["W_h"] + weights["b"])
        hs.append(h)
    logits = h @ weights["W_y"] + weights["b_y"]
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    p[np.arange(n), windows[:, -1]] -= 1.0
    g = p @ weights["W_y"].T / n
    norms = []
    for t in reversed(range(steps)):
        norms.append(np.linalg.norm(g, axis=-1).mean())
        g = (g * slope(hs[t])) @ weights["W_h"].T
    return np.array(norms)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_the_measurement_equals_the_jacobians_chained_by_hand(activation):
    model = fresh("rnn", units=12, activation=activation)
    windows = random_windows(count=5, window=12)
    [layer] = gradients.measure(model, windows, through_time=True)
    np.testing.assert_allclose(layer.norms, by_hand(model, windows), rtol=2e-4)


def with_larger_inputs(model: CharModel, scale: float) -> CharModel:
    """The model with its character vectors `scale` times larger: Keras starts them within +-0.05, where a tanh
    is nearly linear (slope 0.99); larger inputs bring the units into the curved part, as training does."""
    model.embedding.embeddings.assign(model.embedding.embeddings * scale)
    return model


def log_linearity(norms: np.ndarray) -> float:
    """R^2 of a straight line through log(norm) against k >= 1: 1 for an exactly geometric decay."""
    k, log_norms = np.arange(1, len(norms)), np.log(norms[1:])
    fit = np.polyval(np.polyfit(k, log_norms, 1), k)
    return 1 - np.sum((log_norms - fit) ** 2) / np.sum((log_norms - log_norms.mean()) ** 2)


@pytest.mark.parametrize("activation, input_scale", [("tanh", 10.0), ("sigmoid", 1.0)])
def test_a_fresh_simple_rnn_decays_geometrically_at_the_predicted_rate(activation, input_scale):
    model = with_larger_inputs(fresh("rnn", activation=activation), input_scale)
    [layer] = gradients.measure(model, random_windows(), through_time=True)
    assert log_linearity(layer.norms) > 0.97  # a straight line on a log scale: geometric
    assert layer.measured_rate < 0.9 and layer.norms[-1] < 0.05 * layer.norms[0]
    assert 0.99 < layer.spectral_radius < 1.01  # the orthogonal initializer's W_hh
    # The prediction is exact for a normal W_hh with one slope for every unit and step; here the slopes
    # vary (measured: 0.859 predicted against 0.871 for tanh, 0.235 against 0.236 for sigmoid). Within 5%.
    assert layer.predicted_rate == pytest.approx(layer.measured_rate, rel=0.05)


def test_the_lstm_keeps_more_gradient_at_long_k_once_the_simple_rnns_units_curve():
    # Keras's initial character vectors lie within +-0.05, where a tanh is nearly linear: a fresh SimpleRNN is an
    # almost orthogonal linear map and keeps nearly all of its gradient (rate 0.99), more than a fresh LSTM, whose
    # forget gates start near sigmoid(1) = 0.73 (rate 0.82). Training moves the SimpleRNN's units into the curved
    # part of the tanh (a trained one's mean slope is about 0.5). Give both cells, as built (forget bias 1), the same
    # inputs 40 times larger: the SimpleRNN's rate falls to about 0.66 with its slope, and the LSTM's, which along
    # the cell state is a product of forget gates and not of W_hh and tanh slopes, barely moves (measured: 0.66 and
    # 0.79; ratios at k = 23 of 5.3e-4 against 7.1e-5, 7 times, a factor that grows by 0.79 / 0.66 per step).
    windows = random_windows(count=8, window=24)
    [rnn_as_built] = gradients.measure(fresh("rnn"), windows, through_time=True)
    [lstm_as_built] = gradients.measure(fresh("lstm"), windows, through_time=True)
    assert rnn_as_built.measured_rate > lstm_as_built.measured_rate  # the fresh SimpleRNN is ahead, honestly
    [rnn] = gradients.measure(with_larger_inputs(fresh("rnn"), 40.0), windows, through_time=True)
    [lstm] = gradients.measure(with_larger_inputs(fresh("lstm"), 40.0), windows, through_time=True)
    assert rnn.mean_slope < 0.7 and rnn.measured_rate < rnn_as_built.measured_rate - 0.2
    assert abs(lstm.measured_rate - lstm_as_built.measured_rate) < 0.06
    assert lstm.measured_rate > rnn.measured_rate + 0.08
    # Relative to each cell's own k = 0, so the cells' different output scales do not count.
    assert lstm.ratios()[-1] > 4 * rnn.ratios()[-1]
    # The cell-state path: nothing at k = 0 (no later step reads c_T), then the same geometric decay.
    assert lstm.cell_norms[0] == 0 and np.all(lstm.cell_norms[1:] > 0)
    assert gradients.fitted_rate(lstm.cell_norms) == pytest.approx(lstm.measured_rate, abs=0.05)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_under_teacher_forcing_nothing_reaches_beyond_k_zero(cell):
    layers = gradients.measure(fresh(cell, units=8, num_layers=2), random_windows(count=4, window=6),
                               through_time=False)
    for layer in layers:
        assert layer.norms[0] > 0
        assert np.all(layer.norms[1:] == 0.0)
        assert layer.measured_rate == 0.0


def test_the_command_prints_a_row_per_k_and_the_rates(tmp_path):
    corpus = write_corpus(tmp_path / "words.txt")
    result = run_cli("gradients", "--cell", "rnn", "--units", "8", "--layers", "2", "--embedding-dim", "4",
                     "--window", "6", "--windows", "4", "--text", corpus)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "fresh rnn x2x8 (tanh), bptt" in lines[0]
    assert [line.split()[0] for line in lines[2:8]] == [str(k) for k in range(6)]
    assert lines[-1].startswith("layer1: measured rate") and "spectral radius of W_hh" in lines[-1]
    as_json = json.loads(run_cli("gradients", "--cell", "lstm", "--units", "8", "--layers", "1", "--window", "6",
                                 "--windows", "4", "--text", corpus, "--json", "--mode", "teacher-forcing").output)
    [layer] = as_json["layers"]
    assert as_json["mode"] == "teacher-forcing" and layer["spectral_radius"] is None
    assert len(layer["norms"]) == 6 and layer["norms"][0] > 0 and not any(layer["norms"][1:])
    assert len(layer["cell_norms"]) == 6 and not any(layer["cell_norms"])  # c reaches nothing either


def test_the_command_measures_a_trained_run_and_draws_a_plot(trained, tmp_path):
    pytest.importorskip("matplotlib")
    output = tmp_path / "gradients.png"
    result = run_cli("gradients", trained["run"], "--text", trained["corpus"], "--window", "5", "--windows", "3",
                     "--plot", output, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["cell"] == "lstm" and report["mode"] == "bptt" and len(report["layers"]) == 1
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_with_fresh_model_options_is_refused(trained):
    result = run_cli("gradients", trained["run"], "--cell", "rnn", "--units", "8")
    assert_user_error(result, "--cell, --units", "leave them out")


def test_a_text_shorter_than_the_window_is_refused(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("abc", encoding="utf-8")
    result = run_cli("gradients", "--cell", "rnn", "--units", "4", "--text", short, "--window", "10")
    assert_user_error(result, "too few for a window of 10", "--window")
