"""Scoring a text: how surprised a model is by each character, as numbers and as a coloured page.

The surprisal of character t is -log2 p(x_t | x_<t) in bits, with the state carried through the whole text
(one stream, never reset). The first character is scored from the model's initial state after a newline
prime, the way `chargen sample` starts, when the vocabulary has a newline; otherwise it is the context of
the second and unscored. So a text's bits per character is the mean over its scored characters, and it
equals `chargen eval`'s figure for the newline-primed text scored as one stream (eval cuts a text into
`--batch-size` streams, each starting from a zero state, so its figure differs slightly: tests hold both
relations). Computed in float32 whatever the run trained in, like `chargen eval` by default.

`to_html` writes a static page (`textpage.py`) colouring each character on a fixed scale (`COLOUR_STOPS`), so
pages of different runs and texts compare at a glance.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from chargen import textpage
from chargen.errors import ChargenError
from chargen.training import LN2
from chargen.vocab import Vocabulary

PRIME = "\n"
WINDOW = 256  # characters run through the model at a time (the state carries from window to window)
# Surprisal in bits -> background colour, linear between stops; above the last stop, the last colour.
COLOUR_STOPS = (
    (0.0, (255, 255, 255)),
    (1.0, (255, 243, 176)),
    (3.0, (253, 186, 116)),
    (6.0, (239, 68, 68)),
    (10.0, (127, 29, 29)),
)


@dataclass(frozen=True)
class TextScore:
    """Each character's surprisal under a model, and the text's bits per character and perplexity."""

    text: str
    bits: np.ndarray  # float64[len(text)]: surprisal in bits; NaN for an unscored first character
    first_scored: bool  # False when the vocabulary has no newline to prime with

    @property
    def characters(self) -> int:
        """How many characters were scored."""
        return len(self.text) - (0 if self.first_scored else 1)

    @property
    def bits_per_char(self) -> float:
        return float(np.nanmean(self.bits))

    @property
    def perplexity(self) -> float:
        """2 ** bits per character: the per-character perplexity `chargen eval` reports."""
        return 2.0 ** self.bits_per_char

    def to_dict(self) -> dict:
        return {"bits_per_char": self.bits_per_char, "perplexity": self.perplexity, "characters": self.characters,
                "first_scored": self.first_scored, "prime": PRIME if self.first_scored else None,
                "text": self.text,
                "surprisal_bits": [None if math.isnan(b) else round(float(b), 6) for b in self.bits]}


def score_text(model, vocab: Vocabulary, text: str, window: int = WINDOW) -> TextScore:
    """The surprisal of every character of `text` under `model` (a `CharModel`), in float32."""
    ids = vocab.encode(text)
    first_scored = PRIME in vocab.chars
    if first_scored:
        inputs, targets = np.concatenate([vocab.encode(PRIME), ids[:-1]]), ids
    else:
        inputs, targets = ids[:-1], ids[1:]
    if len(targets) == 0:
        raise ChargenError("scoring needs at least one character after the first (the vocabulary has no newline "
                           f"to prime with). Received: {len(text)} character(s)")
    model = model.with_precision("float32")
    nats = _surprisal_nats(model, inputs, targets, window)
    bits = nats / LN2
    return TextScore(text, bits if first_scored else np.concatenate([[np.nan], bits]), first_scored)


def _surprisal_nats(model, inputs: np.ndarray, targets: np.ndarray, window: int) -> np.ndarray:
    """-ln p(target_t | inputs_<=t) for each t, one stream, in windows of `window` (the last one padded)."""
    padded = -(-len(inputs) // window) * window
    inputs = np.pad(inputs, (0, padded - len(inputs)))[None, :]  # (1, padded)
    targets_padded = np.pad(targets, (0, padded - len(targets)))[None, :]

    @tf.function(reduce_retracing=True)
    def score_window(window_inputs, window_targets, states):
        logits, final_states = model(window_inputs, states=states, training=False)
        losses = keras.ops.sparse_categorical_crossentropy(window_targets, logits, from_logits=True)
        return losses, final_states  # (1, window)

    states, pieces = model.initial_states(1), []
    for start in range(0, padded, window):
        losses, states = score_window(inputs[:, start:start + window], targets_padded[:, start:start + window], states)
        pieces.append(np.asarray(losses, np.float64)[0])
    return np.concatenate(pieces)[:len(targets)]


# The page -----------------------------------------------------------------------------------------

def colour(bits: float) -> tuple[int, int, int]:
    """The background of a character with this surprisal: linear between `COLOUR_STOPS`, clamped at the ends."""
    return COLOUR_STOPS[0][1] if math.isnan(bits) else textpage.colour_at(bits, COLOUR_STOPS)


def _span(char: str, bits: float) -> str:
    label = "not scored (the context of the next)" if math.isnan(bits) else f"{bits:.2f} bits"
    return textpage.character_span(char, colour(bits), f"{char!r} {label}")


def to_html(score: TextScore, title: str) -> str:
    """A static page: a summary, the colour legend and the text with each character coloured by its surprisal."""
    first = ("the first character scored after a newline prime" if score.first_scored
             else "the first character unscored (the vocabulary has no newline)")
    summary = (f"{html.escape(title)}: {score.bits_per_char:.4f} bits per character, perplexity "
               f"{score.perplexity:.3f} over {score.characters:,} characters; {first}.")
    top = int(COLOUR_STOPS[-1][0])
    legend = "".join(textpage.swatch(f"{bits}{'+' if bits == top else ''}", bits, colour(bits))
                     for bits in range(top + 1))
    spans = "".join(_span(char, bits) for char, bits in zip(score.text, score.bits.tolist()))
    return textpage.page(title, f'<p class="summary">{summary}</p>\n<div class="legend">surprisal in bits '
                                f'(hover a character for its value): {legend}</div>\n<div class="text">{spans}</div>')


def most_surprising(score: TextScore, count: int = 5, context: int = 20) -> list[tuple[int, float, str]]:
    """The `count` most surprising positions, each as (index, bits, the text around it with the character
    in brackets)."""
    order = np.argsort(-np.nan_to_num(score.bits, nan=-1.0), kind="stable")[:count]
    text, after = score.text, context // 2
    return [(int(i), float(score.bits[i]), f"{text[max(0, i - context):i]}[{text[i]}]{text[i + 1:i + 1 + after]}")
            for i in order]
