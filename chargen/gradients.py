"""`chargen gradients`: how far back in a window the gradient reaches, measured on a model.

For windows of text, the norm of the gradient of the loss at a window's last step T with respect to each
layer's hidden state h_{T-k}, k = 0 (the last step's own state) .. window - 1, averaged over the windows.
Backpropagation through time multiplies one Jacobian per step, dh_t/dh_{t-1} = W_hh diag(act'(a_t)) for
the SimpleRNN (rows multiply on the left: h = act(x W_xh + h W_hh + b)), so the norm there shrinks about
geometrically, at a rate near the spectral radius of W_hh times the activation's mean slope; both are
reported beside the rate fitted to the measured norms. The LSTM's cell state carries the gradient through
the forget gate instead (c_t = f_t * c_{t-1} + ...), which can keep it far larger. Under teacher forcing
the state entering each step is a constant for the gradient, so nothing reaches beyond k = 0.

Computed on the generic (reference) path with `tf.GradientTape`: each layer's cell runs one step at a time
through `recurrent.Recurrent(cell, fused=False)`, sharing the model's weights, so every step's state is a
tensor the tape can differentiate against, and the teacher-forcing cut is recurrent.py's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from chargen.atomic import atomic_file
from chargen.errors import ChargenError
from chargen.model import CharModel
from chargen.recurrent import Recurrent

# The SimpleRNN's activations, each slope act'(a) read from the output h = act(a), and how to say it.
SLOPES = {
    "tanh": (lambda h: 1.0 - h * h, "1 - h^2"),
    "sigmoid": (lambda h: h * (1.0 - h), "h (1 - h)"),
    "relu": (lambda h: (h > 0).astype(h.dtype), "[h > 0]"),
}


@dataclass(frozen=True)
class LayerGradients:
    """One layer's measurement: the gradient norm at each distance, and for a SimpleRNN what predicts its decay."""

    norms: np.ndarray  # float64[window]: mean over the windows of |dL_T / dh_{T-k}|, k = 0 .. window - 1
    spectral_radius: float | None  # SimpleRNN: the largest |eigenvalue| of W_hh; None for a gated cell
    mean_slope: float | None  # SimpleRNN: act'(a) averaged over units, steps and windows
    cell_norms: np.ndarray | None = None  # LSTM: mean |dL_T / dc_{T-k}| along the carried cell state; 0 at k = 0

    @property
    def predicted_rate(self) -> float | None:
        """The SimpleRNN's decay per step that the theory predicts: spectral radius x mean slope."""
        return None if self.spectral_radius is None else self.spectral_radius * self.mean_slope

    @property
    def measured_rate(self) -> float:
        """The decay per step fitted to the norms: exp of the slope of log |g| against k over k >= 1 (0 if none
        reaches back)."""
        return fitted_rate(self.norms)

    def ratios(self) -> np.ndarray:
        """Each norm over the norm at k = 0."""
        return self.norms / self.norms[0] if self.norms[0] > 0 else np.zeros_like(self.norms)


@dataclass(frozen=True)
class GradientReport:
    """What `chargen gradients` prints: the model, how it was measured, and each layer's gradients."""

    model: str  # e.g. "rnn (tanh) x1x64" or a run's name
    cell: str
    activation: str
    mode: str  # one of config.MODES
    windows: int
    window: int
    text: str  # where the windows come from
    layers: list[LayerGradients]

    def to_dict(self) -> dict:
        return {
            "model": self.model, "cell": self.cell, "activation": self.activation, "mode": self.mode,
            "windows": self.windows, "window": self.window, "text": self.text,
            "layers": [{"norms": layer.norms.tolist(), "ratios": layer.ratios().tolist(),
                        "cell_norms": None if layer.cell_norms is None else layer.cell_norms.tolist(),
                        "spectral_radius": layer.spectral_radius, "mean_slope": layer.mean_slope,
                        "predicted_rate": layer.predicted_rate, "measured_rate": layer.measured_rate}
                       for layer in self.layers],
        }


def fitted_rate(norms: np.ndarray) -> float:
    """exp of the least-squares slope of log(norm) against k, over k >= 1 where the norm is positive."""
    k = np.arange(len(norms))
    keep = (k >= 1) & (norms > 0)
    if keep.sum() < 2:
        return 0.0
    return float(np.exp(np.polyfit(k[keep], np.log(norms[keep]), 1)[0]))


def sample_windows(ids: np.ndarray, window: int, count: int, seed: int) -> np.ndarray:
    """`count` windows of `window + 1` ids (the inputs and the last step's target) at seeded, distinct starts."""
    if window < 2 or count < 1:
        raise ChargenError(f"--window must be at least 2 and --windows at least 1. "
                           f"Received: --window {window}, --windows {count}")
    starts = len(ids) - window
    if starts < 1:
        raise ChargenError(f"the text has {len(ids)} characters, too few for a window of {window}; "
                           "give a longer --text or a smaller --window")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(starts, size=min(count, starts), replace=False))
    return np.stack([ids[start:start + window + 1] for start in chosen])  # (windows, window + 1)


def fresh_model(vocab_size: int, seed: int, **model_arguments) -> CharModel:
    """An untrained CharModel, its initial weights fixed by `seed`."""
    keras.utils.set_random_seed(seed)
    model = CharModel(vocab_size, **model_arguments)
    model.build()
    return model


def measure(model: CharModel, windows: np.ndarray, through_time: bool) -> list[LayerGradients]:
    """Each layer's mean |dL_T / dh_{T-k}| over `windows` `(n, window + 1)`, L_T the cross-entropy at the last step;
    for an LSTM also |dL_T / dc_{T-k}|, the gradient reaching the cell state along the state carried forward.

    h_{T-k} reaches the loss two ways: as the layer's output at that step (to the layer above, or the logits
    at k = 0) and as the state entering the next step. A zero probe is added to both, and the gradient with
    respect to the probe is the gradient with respect to h through every way it is used, whatever tensors
    the loop hands out for the two. The LSTM's c_{T-k} gets its own probe where it enters step T-k+1: the
    gradient there is what the cell-state path carries back (zero at k = 0, whose c no later step reads).
    """
    model = model.with_precision("float32")
    inputs, target = tf.constant(windows[:, :-1], tf.int32), tf.constant(windows[:, -1], tf.int32)
    generic = [Recurrent(layer.cell, fused=False) for layer in model.recurrent_layers]
    steps, batch = inputs.shape[1], inputs.shape[0]
    # per layer, per step, one zero probe per state entry: h, and the LSTM's c
    probes = [[[tf.zeros((batch, layer.cell.units)) for _ in range(layer.cell.num_states)] for _ in range(steps)]
              for layer in generic]
    hidden = [[] for _ in generic]  # per layer, per step: h (n, units)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(tf.nest.flatten(probes))
        x = model.embedding(inputs)  # (n, window, embedding_dim)
        states = model.initial_states(batch)
        for t in range(steps):
            below = x[:, t:t + 1]  # (n, 1, features)
            for index, layer in enumerate(generic):
                below, (h, *rest) = layer(below, initial_state=states[index], through_time=through_time)
                h_probe, *rest_probes = probes[index][t]
                below = below + h_probe[:, None]
                states[index] = [h + h_probe, *(state + probe for state, probe in zip(rest, rest_probes))]
                hidden[index].append(h)
        logits = model.head(below[:, 0])  # (n, vocab)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(target, logits, from_logits=True))
    layers = []
    for index, layer in enumerate(model.recurrent_layers):
        found = tape.gradient(loss, probes[index], unconnected_gradients=tf.UnconnectedGradients.ZERO)
        norms = [_mean_norms([step[entry] for step in found]) for entry in range(layer.cell.num_states)]
        radius, slope = _simple_rnn_prediction(layer.cell, np.stack([h.numpy() for h in hidden[index]]))
        layers.append(LayerGradients(norms[0], radius, slope, cell_norms=norms[1] if len(norms) > 1 else None))
    return layers


def _mean_norms(gradients: list) -> np.ndarray:
    """Per step, the mean over the windows of each gradient's norm, reversed so that index k is T-k."""
    return np.array([np.linalg.norm(g.numpy().astype(np.float64), axis=-1).mean() for g in gradients])[::-1]


def _simple_rnn_prediction(cell, h: np.ndarray) -> tuple[float | None, float | None]:
    """The spectral radius of W_hh and the mean slope of the activation over `h`, for a SimpleRNN; else Nones."""
    if cell.kind != "rnn":
        return None, None
    radius = float(np.max(np.abs(np.linalg.eigvals(np.asarray(cell.recurrent_kernel, np.float64)))))
    slope = SLOPES[cell.activation][0](h.astype(np.float64))
    return radius, float(slope.mean())


def format_table(report: GradientReport) -> str:
    """The report as text: a row per k with each layer's norm and its ratio to k = 0 (and, for an LSTM, the norm
    along its cell state), then the rates."""
    lines = [f"|dL_T / dh_(T-k)|: the gradient of the loss at a window's last step with respect to the hidden "
             f"state k steps earlier, mean over {report.windows} windows of {report.window} characters of "
             f"{report.text}; {report.model}, {report.mode}"]
    header = "    k"
    for index, layer in enumerate(report.layers):
        header += f"  {f'layer{index} norm':>12}  {'ratio':>9}"
        if layer.cell_norms is not None:
            header += f"  {f'layer{index} c norm':>14}"
    lines.append(header)
    ratios = [layer.ratios() for layer in report.layers]
    for k in range(report.window):
        row = f"{k:5d}"
        for layer, ratio in zip(report.layers, ratios):
            row += f"  {layer.norms[k]:12.4e}  {ratio[k]:9.3e}"
            if layer.cell_norms is not None:
                row += f"  {layer.cell_norms[k]:14.4e}"
        lines.append(row)
    for index, layer in enumerate(report.layers):
        line = f"layer{index}: measured rate {layer.measured_rate:.4f} per step (fit of log norm over k >= 1)"
        if layer.predicted_rate is not None:
            line += (f"; spectral radius of W_hh {layer.spectral_radius:.4f} x mean slope of {report.activation} "
                     f"{layer.mean_slope:.4f} (mean of {SLOPES[report.activation][1]}) = predicted "
                     f"{layer.predicted_rate:.4f}")
        if layer.cell_norms is not None:
            line += f"; along the cell state c {fitted_rate(layer.cell_norms):.4f}"
        lines.append(line)
    if any(layer.cell_norms is not None for layer in report.layers):
        lines.append("c norm: |dL_T / dc_(T-k)| along the cell state carried into step T-k+1 (none at k = 0)")
    return "\n".join(lines)


def plot(report: GradientReport, output) -> None:
    """A PNG of the norms against k, one curve per layer, on a log scale; needs matplotlib (the plot extra)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ChargenError("--plot needs matplotlib, an optional extra: pip install 'chargen[plot]'") from None
    figure = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for index, layer in enumerate(report.layers):
        positive = layer.norms > 0
        axes.semilogy(np.arange(report.window)[positive], layer.norms[positive], marker=".", label=f"layer {index}")
    axes.set_xlabel("k (steps before the last)")
    axes.set_ylabel("|dL_T / dh_(T-k)|")
    axes.set_title(f"{report.model}, {report.mode}", fontsize="medium")
    axes.grid(alpha=0.3)
    axes.legend()
    try:
        with atomic_file(output, binary=True) as file:
            figure.savefig(file, format="png")
    except OSError as error:
        raise ChargenError(f"cannot write --plot {output} ({error.strerror}); choose a writable path") from None
