"""Export a run for serving: a TensorFlow SavedModel that loads with TensorFlow alone, no chargen, no Keras.

The export holds the model's float32 weights (a mixed-precision run is exported in float32) and two
signatures, both traced with the batch dimension unknown, so a reloaded model accepts any batch (a
signature traced with one example's shape would accept that batch size only):

- `step(ids, layer0_h, ...) -> logits, layer0_h, ...`: one character per row, the recurrent state passed
  in and returned as named tensors, one per layer and state entry (an LSTM layer carries h and c), so a
  server keeps nothing between requests. It computes with the cells' own equations (`cells.py`).
- `generate(prime, length, temperature, seed) -> text`: the whole loop in the graph. The prime is split
  into characters and looked up in a table of the run's vocabulary, fed through the network, then
  `length` characters are drawn one at a time by `tf.random.stateless_categorical` from the logits
  divided by the temperature, with the seed pair (seed, step): a fixed seed gives fixed text. The text
  returned is the continuation, without the prime. Its random numbers are TensorFlow's, so its text
  differs from `chargen sample --seed` with the same seed.

`--format litert` also converts `step` to a LiteRT (TensorFlow Lite) flatbuffer, `step.tflite`. The folder
also holds `vocab.json`, the characters in id order, for callers of `step` (and of the LiteRT file).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import tensorflow as tf

from chargen.atomic import TEMPORARY_PREFIX, atomic_folder
from chargen.errors import ChargenError
from chargen.generation import start_ids
from chargen.vocab import Vocabulary

FORMATS = ("savedmodel", "litert")
STATE_ENTRIES = ("h", "c")  # the names of a layer's state tensors, in the cells' order
LITERT_FILE = "step.tflite"
VOCAB_FILE = "vocab.json"


@dataclass(frozen=True)
class Exported:
    """What `export_run` wrote: the folder and, for the report, each signature's inputs and outputs."""

    path: Path
    signatures: dict[str, tuple[list[str], list[str]]]  # name -> (inputs, outputs), each "name dtype shape"
    litert: Path | None  # the LiteRT file, if one was asked for


def state_names(model) -> list[str]:
    """The `step` signature's state tensors, layer by layer: layer0_h (and layer0_c for an LSTM), layer1_h, ..."""
    return [f"layer{index}_{STATE_ENTRIES[entry]}"
            for index, layer in enumerate(model.recurrent_layers) for entry in range(len(layer.cell.state_size))]


class StepModule(tf.Module):
    """The weights and the stateless `step`: all that the LiteRT file holds.

    Args:
        model: a built float32 `CharModel`.
    """

    def __init__(self, model):
        super().__init__(name="network")
        # The module tracks the layers' TensorFlow variables, not the Keras layers: the SavedModel stores each
        # weight once, and the LiteRT converter folds them into constants (Keras's wrappers it leaves unset).
        self._layers = SimpleNamespace(model=model)  # not a trackable: kept out of the SavedModel
        self.weights = [weight.value for weight in model.weights]  # float32, so `value` is the tf.Variable itself
        self.state_names = state_names(model)
        self.state_sizes = [layer.cell.units for layer in model.recurrent_layers for _ in layer.cell.state_size]
        state_specs = [tf.TensorSpec([None, size], tf.float32, name=name)
                       for name, size in zip(self.state_names, self.state_sizes)]
        self.step = tf.function(self._step, input_signature=[tf.TensorSpec([None], tf.int32, name="ids"),
                                                             *state_specs], autograph=False)

    def advance(self, ids, states):
        """One step of the network: ids `(batch,)`, states a flat list; returns logits `(batch, vocab)` and states."""
        x = self._layers.model.embedding(ids)  # (batch, embedding_dim)
        new_states, position = [], 0
        for layer in self._layers.model.recurrent_layers:
            count = len(layer.cell.state_size)
            x, layer_states = layer.cell(x, list(states[position:position + count]))  # x (batch, units)
            new_states.extend(layer_states)
            position += count
        return self._layers.model.head(x), new_states

    def _step(self, ids, *states):
        logits, new_states = self.advance(ids, states)
        return {"logits": logits, **dict(zip(self.state_names, new_states))}


class ServingModule(tf.Module):
    """The exported object: the network, the vocabulary and its table, `generate` (see the module docstring).

    Args:
        model: a built float32 `CharModel`.
        vocab: the run's vocabulary.
    """

    def __init__(self, model, vocab: Vocabulary):
        super().__init__(name="chargen")
        self.network = StepModule(model)
        self.vocabulary = tf.Variable(vocab.chars, trainable=False, name="vocabulary")  # id -> character
        self.char_ids = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(vocab.chars), tf.range(len(vocab), dtype=tf.int32)),
            default_value=-1,
        )
        self._start_id = int(start_ids("", vocab)[0])  # where an empty prime starts, as in `chargen sample`
        self.generate = tf.function(self._generate, input_signature=[
            tf.TensorSpec([], tf.string, name="prime"),
            tf.TensorSpec([], tf.int32, name="length"),
            tf.TensorSpec([], tf.float32, name="temperature"),
            tf.TensorSpec([], tf.int64, name="seed"),
        ], autograph=False)

    def _generate(self, prime, length, temperature, seed):
        prime_ids = self.char_ids.lookup(tf.strings.unicode_split(prime, "UTF-8"))
        checks = [
            tf.debugging.assert_non_negative(prime_ids, message="the prime has characters outside the vocabulary"),
            tf.debugging.assert_non_negative(length, message="length must not be negative"),
            tf.debugging.assert_positive(temperature, message="temperature must be above 0"),
        ]
        with tf.control_dependencies(checks):
            prime_ids = tf.cond(tf.size(prime_ids) > 0, lambda: prime_ids, lambda: tf.constant([self._start_id]))
        states = [tf.zeros([1, size], tf.float32) for size in self.network.state_sizes]

        def feed(t, states):
            _, states = self.network.advance(prime_ids[t][None], states)
            return t + 1, states

        _, states = tf.while_loop(lambda t, _: t < tf.size(prime_ids) - 1, feed, (tf.constant(0), states))

        def sample(t, previous, states, drawn):
            logits, states = self.network.advance(previous, states)  # logits (1, vocab)
            next_id = tf.random.stateless_categorical(
                logits / temperature, 1, seed=tf.stack([seed, tf.cast(t, tf.int64)]), dtype=tf.int32
            )[:, 0]  # (1,)
            return t + 1, next_id, states, drawn.write(t, next_id[0])

        _, _, _, drawn = tf.while_loop(
            lambda t, *_: t < length, sample,
            (tf.constant(0), prime_ids[-1][None], states, tf.TensorArray(tf.int32, size=length)),
        )
        return {"text": tf.strings.reduce_join(tf.gather(self.vocabulary, drawn.stack()))}


def export_run(run, output: Path | None = None, which: str = "best", fmt: str = "savedmodel",
               force: bool = False) -> Exported:
    """Export `run`'s `which` model into `output` (default `<run>/export`), written whole or not at all.

    An existing non-empty `output` is refused unless `force`, which replaces it.
    """
    if fmt not in FORMATS:
        raise ChargenError(f"unknown export format; choose one of {', '.join(FORMATS)}. Received: format={fmt!r}")
    output = Path(output) if output is not None else run.path / "export"
    if output.exists() and not output.is_dir():
        raise ChargenError(f"--output {output} is a file; name a folder")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise ChargenError(f"--output {output} already exists and is not empty; pass --force to replace it "
                           "or choose another --output")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ChargenError(f"cannot create the folder for --output {output} ({error.strerror}); "
                           "choose a writable place") from None
    vocab = run.vocabulary()
    module = ServingModule(run.load_model(which).with_precision("float32"), vocab)
    shutil.rmtree(output.with_name(TEMPORARY_PREFIX + output.name), ignore_errors=True)  # a killed export's
    replaced = output.with_name(TEMPORARY_PREFIX + "replaced-" + output.name)
    with atomic_folder(output) as temporary:
        signatures = {"step": module.network.step, "generate": module.generate}
        tf.saved_model.save(module, str(temporary), signatures=signatures)
        (temporary / VOCAB_FILE).write_text(vocab.to_json(), encoding="utf-8")
        if fmt == "litert":
            (temporary / LITERT_FILE).write_bytes(convert_step_to_litert(module.network))
        if output.is_dir() and any(output.iterdir()):  # --force: the old export stays whole until now
            shutil.rmtree(replaced, ignore_errors=True)
            output.rename(replaced)
    shutil.rmtree(replaced, ignore_errors=True)
    return Exported(output, _describe(module), output / LITERT_FILE if fmt == "litert" else None)


def convert_step_to_litert(network: StepModule) -> bytes:
    """The `step` signature as a LiteRT flatbuffer; a converter that cannot is a ChargenError.

    Converted from the step's own module, not the SavedModel folder: the folder also holds `generate`'s
    vocabulary table (a string hash table), which LiteRT's built-in operations do not cover.
    """
    try:
        converter = tf.lite.TFLiteConverter.from_concrete_functions([network.step.get_concrete_function()], network)
        return converter.convert()
    except Exception as error:  # the converter raises many types; its first line says what it could not handle
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ChargenError(f"TensorFlow's LiteRT converter could not convert the step ({first_line[:200]}); "
                           "export with --format savedmodel") from None


def _describe(module: ServingModule) -> dict[str, tuple[list[str], list[str]]]:
    def spec(name, tensor_spec):
        shape = ", ".join("batch" if size is None else str(size) for size in tensor_spec.shape)
        return f"{name} {tensor_spec.dtype.name} ({shape})"

    described = {}
    for name, traced in (("step", module.network.step), ("generate", module.generate)):
        function = traced.get_concrete_function()
        inputs = [spec(s.name, s) for s in function.structured_input_signature[0]]
        outputs = [spec(key, value) for key, value in function.structured_outputs.items()]
        described[name] = (inputs, outputs)
    return described
