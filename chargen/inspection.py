"""Looking inside a model: each unit's state and gate values at every character of a text, and which units
follow simple features of the text.

The model reads the text as one stream from its zero state (no prime: the values at character t are those
after reading characters 0..t). Every layer's cell runs on the generic path (`recurrent.trace_cell`), whose
steps return their gate values on request, so the numbers are the cells' own equations; the training path
is untouched. Per layer and unit the signals are the hidden state h (the layer's output), the LSTM's cell
state c, and the gates after their sigmoid or tanh (`config.CELL_KINDS[kind].signals`). Float32 whatever
the run trained in, like `chargen score`.

A feature is a number per character that the text alone decides (inside double quotes, the column, ...);
a unit follows it when its values over the text correlate with it (Pearson's r). `to_html` colours the text
by one unit's signal on a page shared in style with `chargen score`'s (`textpage.py`).
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from chargen import textpage
from chargen.config import CELL_KINDS
from chargen.errors import ChargenError
from chargen.recurrent import trace_cell
from chargen.vocab import Vocabulary

SIGMOID_VALUED = {"z", "r", "i", "f", "o"}  # the gates: values in (0, 1)
TANH_VALUED = {"g", "h~"}  # the candidates: values in (-1, 1)
# Value / the scale's top -> background: blue below zero, white at zero, red above (a gate uses the upper half).
COLOUR_STOPS = (
    (-1.0, (29, 78, 216)),
    (-0.5, (147, 197, 253)),
    (0.0, (255, 255, 255)),
    (0.5, (252, 165, 165)),
    (1.0, (185, 28, 28)),
)


@dataclass(frozen=True)
class Inspection:
    """Every layer's signals at every character of `text`."""

    text: str
    cell: str  # a key of config.CELL_KINDS
    activation: str  # the SimpleRNN's; "tanh" for the gated cells
    layers: list[dict[str, np.ndarray]]  # per layer: signal name -> float32[len(text), units]

    @property
    def signals(self) -> tuple[str, ...]:
        return CELL_KINDS[self.cell].signals

    @property
    def units(self) -> int:
        return self.layers[0]["h"].shape[1]

    def bounds(self, signal: str, layer: int, unit: int) -> tuple[float, float]:
        """The range of `signal`'s values: what its activation allows, or for the unbounded (the LSTM's c, a
        relu's h) the largest magnitude this unit reaches in the text."""
        if signal in SIGMOID_VALUED or (signal == "h" and self.activation == "sigmoid"):
            return 0.0, 1.0
        if signal in TANH_VALUED or (signal == "h" and self.activation == "tanh"):
            return -1.0, 1.0
        top = float(np.abs(self.layers[layer][signal][:, unit]).max()) or 1.0
        return (0.0, top) if signal == "h" else (-top, top)  # relu's h is never negative


def inspect_text(model, vocab: Vocabulary, text: str) -> Inspection:
    """Run `model` (a `CharModel`) over `text` from its zero state and keep every layer's signals."""
    if not text:
        raise ChargenError("the text to inspect is empty; give TEXT or a non-empty --file")
    ids = tf.constant(vocab.encode(text)[None, :], tf.int32)  # (1, time); an unknown character is a ChargenError
    model = model.with_precision("float32")

    @tf.function
    def trace(ids):
        below, layers = model.embedding(ids), []  # (1, time, embedding_dim)
        for layer in model.recurrent_layers:
            signals = trace_cell(layer.cell, below, layer.cell.get_initial_state(1))  # each (1, time, units)
            layers.append(signals)
            below = signals["h"]
        return layers

    layers = [{name: value.numpy()[0] for name, value in signals.items()} for signals in trace(ids)]
    return Inspection(text, model.cell_kind, model.activation, layers)


# Features of the text --------------------------------------------------------------------------------

def _toggled_by_quotes(text: str) -> list[float]:
    inside, values = False, []
    for char in text:
        inside ^= char == '"'
        values.append(float(inside))
    return values


def _bracket_depth_above_zero(text: str) -> list[float]:
    depth, values = 0, []
    for char in text:
        depth = depth + 1 if char in "([{" else max(0, depth - 1) if char in ")]}" else depth
        values.append(float(depth > 0))
    return values


def _count_since(text: str, restarts) -> list[float]:
    """Characters read since the last one for which `restarts(char)` held (0 right after it)."""
    count, values = 0, []
    for char in text:
        count = 0 if restarts(char) else count + 1
        values.append(float(count))
    return values


# name -> (what it is, per character of a text); each is what a state could know after reading that character.
FEATURES = {
    "in quotes": ("inside double quotes (the opening quote counts, the closing one not)", _toggled_by_quotes),
    "in brackets": ("inside (), [] or {}", _bracket_depth_above_zero),
    "column": ("characters since the last newline", lambda text: _count_since(text, lambda c: c == "\n")),
    "after newline": ("the character is a newline", lambda text: [float(c == "\n") for c in text]),
    "after space": ("the character is a space", lambda text: [float(c == " ") for c in text]),
    "in word": ("the character is a letter or digit", lambda text: [float(c.isalnum()) for c in text]),
    "word position": ("letters or digits read since the last other character",
                      lambda text: _count_since(text, lambda c: not c.isalnum())),
}


def text_features(text: str) -> dict[str, np.ndarray]:
    """Each of `FEATURES` for every character of `text`, float64[len(text)]."""
    return {name: np.array(compute(text), np.float64) for name, (_, compute) in FEATURES.items()}


@dataclass(frozen=True)
class Correlation:
    """How closely one unit's signal follows a feature over the text."""

    feature: str
    layer: int
    unit: int
    signal: str
    r: float  # Pearson's correlation coefficient, in [-1, 1]

    def to_dict(self) -> dict:
        return {"feature": self.feature, "layer": self.layer, "unit": self.unit, "signal": self.signal,
                "r": round(self.r, 6)}


def pearson(feature: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Pearson's r between `feature` (time,) and each column of `values` (time, units); 0 for a constant column."""
    centred_feature = feature - feature.mean()
    centred = values.astype(np.float64) - values.mean(axis=0)
    spread = np.sqrt((centred_feature ** 2).sum() * (centred ** 2).sum(axis=0))
    covariance = centred_feature @ centred
    return np.divide(covariance, spread, out=np.zeros_like(covariance), where=spread > 1e-12)


def correlations(inspection: Inspection, count: int = 3, signals=None) -> list[Correlation]:
    """For each feature that varies in the text, the `count` strongest (by |r|) unit signals of any layer,
    among `signals` (default: all of the cell's)."""
    chosen = []
    for name, feature in text_features(inspection.text).items():
        if feature.std() == 0:
            continue  # constant in this text: nothing to follow
        found = [Correlation(name, layer, unit, signal, float(r))
                 for layer, values in enumerate(inspection.layers)
                 for signal in (signals or inspection.signals)
                 for unit, r in enumerate(pearson(feature, values[signal]))]
        chosen += sorted(found, key=lambda c: -abs(c.r))[:count]
    return chosen


def strongest_unit(inspection: Inspection, signal: str) -> tuple[int, int]:
    """The (layer, unit) whose `signal` follows some feature most closely; (0, 0) when no feature varies."""
    found = correlations(inspection, count=1, signals=(signal,))
    best = max(found, key=lambda c: abs(c.r), default=None)
    return (best.layer, best.unit) if best else (0, 0)


# Reports ----------------------------------------------------------------------------------------------

def to_dict(inspection: Inspection, found: list[Correlation]) -> dict:
    """Every number: each layer's signals per character (a list of `units` values each), the features and the
    correlations."""
    return {
        "cell": inspection.cell, "activation": inspection.activation, "layers": len(inspection.layers),
        "units": inspection.units, "signals": list(inspection.signals), "text": inspection.text,
        "values": [{name: (np.round(values.astype(np.float64), 6) + 0.0).tolist()  # + 0.0: no -0.0
                    for name, values in layer.items()} for layer in inspection.layers],
        "features": {name: values.tolist() for name, values in text_features(inspection.text).items()},
        "correlations": [c.to_dict() for c in found],
    }


def format_table(inspection: Inspection, layer: int, unit: int, found: list[Correlation]) -> str:
    """One row per character with every signal of unit `layer:unit`, then the correlations."""
    signals = inspection.signals
    lines = [f"unit {layer}:{unit} at each character ({', '.join(signals)}; the values after reading it)",
             "char    " + "".join(f"{name:>9}" for name in signals)]
    for t, char in enumerate(inspection.text):
        shown = repr(char)[1:-1] if char != " " else "' '"
        lines.append(f"{shown:<8}" + "".join(f"{inspection.layers[layer][name][t, unit]:9.4f}" for name in signals))
    lines.append(f"units most correlated with features of the text (Pearson's r over {len(inspection.text)} "
                 "characters):")
    lines.append(f"{'feature':<15} {'r':>7}  {'unit':>6}  signal")
    for c in found:
        lines.append(f"{c.feature:<15} {c.r:+7.3f}  {f'{c.layer}:{c.unit}':>6}  {c.signal}")
    return "\n".join(lines)


def _position(value: float, low: float, high: float) -> float:
    """Where `value` sits on `COLOUR_STOPS`: -1 .. 1, or 0 .. 1 for a range starting at 0."""
    return value / high if low == 0 else value / max(abs(low), abs(high))


def colour(value: float, low: float, high: float) -> tuple[int, int, int]:
    return textpage.colour_at(_position(value, low, high), COLOUR_STOPS)


def to_html(inspection: Inspection, layer: int, unit: int, signal: str, found: list[Correlation],
            title: str) -> str:
    """A static page: the text coloured by `signal` of unit `layer:unit` (hover a character for all its signals),
    its legend, and the table of correlations."""
    low, high = inspection.bounds(signal, layer, unit)
    values = inspection.layers[layer][signal][:, unit]
    spans = []
    for t, char in enumerate(inspection.text):
        every = " ".join(f"{name} {inspection.layers[layer][name][t, unit]:.3f}" for name in inspection.signals)
        spans.append(textpage.character_span(char, colour(float(values[t]), low, high),
                                             f"{char!r} {signal} = {values[t]:.3f}; {every}"))
    legend = "".join(textpage.swatch(f"{value:.2g}", value, colour(value, low, high))
                     for value in np.linspace(low, high, 5 if low < 0 else 3).tolist())
    rows = "".join(f"<tr><td>{html.escape(c.feature)}</td><td class=\"number\">{c.r:+.3f}</td>"
                   f"<td>{c.layer}:{c.unit}</td><td>{html.escape(c.signal)}</td></tr>" for c in found)
    described = "".join(f"<li><b>{html.escape(name)}</b>: {html.escape(description)}</li>"
                        for name, (description, _) in FEATURES.items())
    kind = CELL_KINDS[inspection.cell].title
    summary = (f"{html.escape(title)}: {kind}, {len(inspection.layers)} layer(s) of {inspection.units} units, "
               f"{len(inspection.text):,} characters read from the zero state. Coloured by "
               f"<b>{html.escape(signal)}</b> of unit <b>{layer}:{unit}</b> (layer:index).")
    body = (f'<p class="summary">{summary}</p>\n'
            f'<div class="legend">{html.escape(signal)} from {low:.3g} to {high:.3g} (hover a character for '
            f'every signal of the unit): {legend}</div>\n<div class="text">{"".join(spans)}</div>\n'
            f"<h3>Units most correlated with features of the text (Pearson's r)</h3>\n"
            f"<table><tr><th>feature</th><th>r</th><th>unit</th><th>signal</th></tr>{rows}</table>\n"
            f"<ul>{described}</ul>")
    return textpage.page(title, body)
