"""The character model: embedding -> stacked recurrent layers -> logits.

y_t = W_hy h_t + b_y on top of the last recurrent layer, where h_t comes from the cells in
`cells.py` run by the loop in `recurrent.py`. The model is a registered Keras model, so a saved
`.keras` file loads back with `keras.saving.load_model` alone.
"""

from __future__ import annotations

import keras

from chargen.cells import CELLS, make_cell
from chargen.recurrent import Recurrent


@keras.saving.register_keras_serializable(package="chargen")
class CharModel(keras.Model):
    """Next-character model.

    Args:
        vocab_size: number of distinct characters.
        cell: "rnn", "gru" or "lstm".
        num_layers: recurrent layers stacked on each other.
        units: hidden size of every recurrent layer.
        embedding_dim: size of the learned character vectors fed to the first layer.
        dropout: dropout rate between layers (and before the output layer) while training.
        reset_after: GRU only: the candidate form with the reset gate after the recurrent product.
        activation: SimpleRNN only: "tanh", "sigmoid" or "relu" (`config.ACTIVATIONS`).
        dtype: the dtype policy of the embedding and the recurrent layers ("float32", "mixed_bfloat16" or
            "mixed_float16", see `config.PRECISIONS`): their weights are float32 and they compute in the
            policy's dtype. The output layer is always float32, so the logits (and the loss) are too.

    Call arguments:
        ids: `(batch, time)` int character ids.
        states: one state list per layer (see `initial_states`), or None for zeros.
        training: enables dropout.
        through_time: True for backpropagation through time, False for teacher forcing.

    Returns `(logits, final_states)`: logits `(batch, time, vocab_size)`.

    Example:
        >>> model = CharModel(vocab_size=40, cell="gru", num_layers=2, units=64)
        >>> logits, states = model(ops.zeros((8, 100), dtype="int32"))
    """

    def __init__(
        self,
        vocab_size: int,
        cell: str = "lstm",
        num_layers: int = 2,
        units: int = 256,
        embedding_dim: int = 64,
        dropout: float = 0.0,
        reset_after: bool = False,
        activation: str = "tanh",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if cell not in CELLS:
            raise ValueError(f"unknown cell; choose one of {', '.join(CELLS)}. Received: cell={cell!r}")
        sizes = {"vocab_size": vocab_size, "num_layers": num_layers, "units": units, "embedding_dim": embedding_dim}
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout}")
        self.vocab_size, self.cell_kind, self.num_layers = vocab_size, cell, num_layers
        self.units, self.embedding_dim, self.dropout_rate = units, embedding_dim, dropout
        self.reset_after, self.activation = bool(reset_after), activation
        # Each layer gets the model's policy (never the global one, which other code in the process may use).
        policy = self.dtype_policy
        self.embedding = keras.layers.Embedding(vocab_size, embedding_dim, name="embedding", dtype=policy)
        self.recurrent_layers = [
            Recurrent(make_cell(cell, units, reset_after=self.reset_after, activation=activation,
                                name=f"{cell}_cell_{i}", dtype=policy),
                      name=f"recurrent_{i}", dtype=policy)
            for i in range(num_layers)
        ]
        self.dropout = keras.layers.Dropout(dropout, name="dropout", dtype=policy)
        self.head = keras.layers.Dense(vocab_size, name="logits", dtype="float32")

    def build(self, input_shape=None):
        self.embedding.build((None, None))
        features = self.embedding_dim
        for layer in self.recurrent_layers:
            layer.build((None, None, features))
            features = self.units
        self.head.build((None, None, features))
        self.built = True

    def initial_states(self, batch_size: int):
        """Zero states: a list per layer of `(batch_size, units)` tensors, in the dtype the layers compute in."""
        return [layer.cell.get_initial_state(batch_size) for layer in self.recurrent_layers]

    def with_precision(self, dtype) -> CharModel:
        """This model under another dtype policy (see `dtype` above), with the same float32 weights."""
        if keras.dtype_policies.get(dtype).name == self.dtype_policy.name:
            return self
        other = CharModel.from_config({**self.get_config(), "dtype": dtype})
        other.build()
        other.set_weights(self.get_weights())
        return other

    def call(self, ids, states=None, training=False, through_time=True):
        x = self.embedding(ids)  # (batch, time, embedding_dim)
        if states is None:
            states = [None] * self.num_layers
        final_states = []
        for layer, state in zip(self.recurrent_layers, states):
            x, final = layer(x, initial_state=state, training=training, through_time=through_time)
            x = self.dropout(x, training=training)  # (batch, time, units)
            final_states.append(final)
        return self.head(x), final_states  # (batch, time, vocab_size)

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "cell": self.cell_kind,
            "num_layers": self.num_layers,
            "units": self.units,
            "embedding_dim": self.embedding_dim,
            "dropout": self.dropout_rate,
            "reset_after": self.reset_after,
            "activation": self.activation,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

