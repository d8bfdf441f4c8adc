"""Generation: the numpy fast path held equal to the Keras model, and what `generate` promises.

`NumpyStepper` computes the cells a second way (numpy, weights pulled out of the model), so every
cell, including the GRU's reset-after form, is checked step by step against the Keras model, which
is the reference. `generate` is checked against an argmax decoder written independently on the Keras
model (re-running the whole sequence per character: slow, but obviously right).
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from chargen.errors import ChargenError
from chargen.generation import GenerationRequest, NumpyStepper, generate, generate_candidates
from chargen.model import CharModel
from chargen.sampling import SamplingContext, TokenSampler, registry
from chargen.vocab import Vocabulary

KINDS = ["rnn", "gru", "lstm"]
VOCAB = Vocabulary(list("\n abcdefghijklmnopqrstu.,"))  # 25 characters, with a newline
ATOL = 1e-5


def random_model(cell="lstm", num_layers=2, units=16, embedding_dim=8, seed=0, scale=0.4, vocab_size=None,
                 reset_after=False):
    """A built CharModel with every weight (biases included) drawn at random, so no term hides behind a zero."""
    model = CharModel(vocab_size or len(VOCAB), cell=cell, num_layers=num_layers, units=units,
                      embedding_dim=embedding_dim, reset_after=reset_after)
    model.build()
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign(rng.normal(0.0, scale, size=tuple(weight.shape)).astype("float32"))
    return model


def flat_states(model_states):
    """The model's per-layer state lists as NumpyStepper's flat list (layer by layer; LSTM h then c)."""
    return [np.asarray(s) for layer in model_states for s in layer]


def nested_states(model, flat):
    """NumpyStepper's flat state list as the model's per-layer lists."""
    nested, position = [], 0
    for layer in model.recurrent_layers:
        count = len(layer.cell.state_size)
        nested.append([tf.constant(s) for s in flat[position:position + count]])
        position += count
    return nested


def assert_stepper_matches_model(model, batch=3, time=12, seed=1, start_from_zero=True):
    """Feed random ids one step at a time through NumpyStepper; compare to one model call over the window."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, model.vocab_size, size=(batch, time))
    stepper = NumpyStepper(model)
    if start_from_zero:
        state = stepper.initial_state(batch)
        model_states = None
    else:
        state = [rng.normal(0.0, 0.5, size=s.shape).astype(np.float32) for s in stepper.initial_state(batch)]
        model_states = nested_states(model, state)
    expected_logits, expected_final = model(tf.constant(ids, "int32"), states=model_states)
    expected_logits = np.asarray(expected_logits)  # (batch, time, vocab)
    assert np.abs(expected_logits).max() > 0.5  # the comparison is not between near-zero numbers
    for t in range(time):
        logits, state = stepper.step(ids[:, t], state)
        assert logits.shape == (batch, model.vocab_size)
        assert logits.dtype == np.float32
        np.testing.assert_allclose(logits, expected_logits[:, t], rtol=0, atol=ATOL, err_msg=f"logits at step {t}")
    expected_flat = flat_states(expected_final)
    assert len(state) == len(expected_flat)
    for index, (got, want) in enumerate(zip(state, expected_flat)):
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=f"final state entry {index}")


# ----------------------------------------------------------------------------------------------------
# NumpyStepper against the Keras model


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("cell", KINDS)
def test_stepper_equals_keras_model(cell, num_layers):
    model = random_model(cell, num_layers=num_layers, units=16, embedding_dim=8, seed=num_layers)
    assert_stepper_matches_model(model)


@pytest.mark.parametrize("cell", KINDS)
def test_stepper_equals_keras_model_from_given_states(cell):
    model = random_model(cell, num_layers=2, units=24, embedding_dim=5, seed=7)
    assert_stepper_matches_model(model, batch=2, time=9, seed=3, start_from_zero=False)


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_stepper_equals_keras_model_gru_reset_after(num_layers):
    """A CharModel whose GRU cells use the reset-after (cuDNN) form."""
    model = random_model("gru", num_layers=num_layers, units=16, embedding_dim=8, seed=10 + num_layers,
                         reset_after=True)
    assert all(layer.cell.reset_after for layer in model.recurrent_layers)
    stepper = NumpyStepper(model)
    assert all(layer.reset_after and layer.recurrent_bias is not None for layer in stepper.layers)
    assert_stepper_matches_model(model)
    assert_stepper_matches_model(model, seed=5, start_from_zero=False)


def test_stepper_feed_equals_stepping():
    model = random_model("lstm", units=8)
    stepper = NumpyStepper(model)
    ids = np.random.default_rng(0).integers(0, model.vocab_size, size=(2, 6))
    state = stepper.initial_state(2)
    for t in range(6):
        _, state = stepper.step(ids[:, t], state)
    fed = stepper.feed(ids, stepper.initial_state(2))
    for a, b in zip(fed, state):
        np.testing.assert_array_equal(a, b)


def test_stepper_does_not_change_the_state_it_is_given():
    """Sequence-level strategies reuse and reorder state rows, so a step must never write into its input."""
    model = random_model("lstm", units=8)
    stepper = NumpyStepper(model)
    state = [np.full(s.shape, 0.25, np.float32) for s in stepper.initial_state(3)]
    copies = [s.copy() for s in state]
    ids = np.array([1, 2, 3])
    first, _ = stepper.step(ids, state)
    second, _ = stepper.step(ids, state)
    for a, b in zip(state, copies):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("cell", KINDS)
def test_step_results_are_not_overwritten_by_later_steps(cell):
    """The stepper reuses scratch arrays; what it returned must stay as it was (strategies may keep it)."""
    model = random_model(cell, num_layers=2, units=8)
    stepper = NumpyStepper(model)
    logits, state = stepper.step(np.array([1, 2]), stepper.initial_state(2))
    kept = [logits.copy()] + [s.copy() for s in state]
    for ids in ([3, 4], [5, 6], [0, 0]):
        stepper.step(np.array(ids), state)
    for a, b in zip([logits, *state], kept):
        np.testing.assert_array_equal(a, b)


def test_one_stepper_serves_several_batch_sizes():
    model = random_model("gru", num_layers=2, units=8)
    stepper = NumpyStepper(model)
    single, _ = stepper.step(np.array([4]), stepper.initial_state(1))
    triple, _ = stepper.step(np.array([4, 4, 4]), stepper.initial_state(3))
    again, _ = stepper.step(np.array([4]), stepper.initial_state(1))
    np.testing.assert_allclose(triple, np.repeat(single, 3, axis=0), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(again, single)


# ----------------------------------------------------------------------------------------------------
# generate()


@pytest.fixture(scope="module")
def model():
    return random_model("lstm", num_layers=2, units=32, embedding_dim=8, seed=42, scale=0.5)


@pytest.fixture(scope="module")
def stepper(model):
    return NumpyStepper(model)


def strategy(name, **options):
    return registry.load(name).create(options)


def keras_argmax_decode(model, prime, length):
    """Greedy decoding on the Keras model alone: re-run the whole sequence for every new character."""
    ids = list(VOCAB.encode(prime))
    for _ in range(length):
        logits, _ = model(tf.constant([ids], "int32"))
        ids.append(int(np.argmax(np.asarray(logits)[0, -1])))
    return VOCAB.decode(ids)


def run(stepper, name="random", on_text=None, options=None, **request):
    return generate(stepper, VOCAB, strategy(name, **(options or {})), GenerationRequest(**request), on_text=on_text)


@pytest.mark.parametrize("prime", ["the ", "q"])
def test_greedy_equals_argmax_decoding_on_the_keras_model(model, stepper, prime):
    [text] = run(stepper, "greedy", prime=prime, length=20)
    assert text == keras_argmax_decode(model, prime, 20)


def test_output_starts_with_the_prime_and_has_the_length(stepper):
    texts = run(stepper, prime="abc", length=30, num_samples=3, seed=0)
    assert len(texts) == 3
    for text in texts:
        assert text.startswith("abc")
        assert len(text) == 3 + 30
        assert set(text) <= set(VOCAB.chars)


def test_no_prime_gives_just_the_generated_text(stepper):
    [text] = run(stepper, prime="", length=25, seed=0)
    assert len(text) == 25


def test_same_seed_same_text_different_seed_different_text(stepper):
    first = run(stepper, prime="a", length=60, seed=123)
    again = run(stepper, prime="a", length=60, seed=123)
    other = run(stepper, prime="a", length=60, seed=124)
    assert first == again
    assert first != other


def test_stop_text_truncates_and_is_not_included(stepper):
    prime = "ab"
    [full] = run(stepper, prime=prime, length=200, seed=5)
    generated = full[len(prime):]
    stop = generated[40:42]  # two characters that surely occur, maybe earlier too
    [stopped] = run(stepper, prime=prime, length=200, seed=5, stop=stop)
    assert stopped == prime + generated.split(stop, 1)[0]
    assert stop not in stopped[len(prime):]
    assert len(stopped) <= len(prime) + 40


def test_stop_text_that_never_occurs_changes_nothing(stepper):
    without = run(stepper, prime="ab", length=50, seed=5, num_samples=2)
    never = run(stepper, prime="ab", length=50, seed=5, num_samples=2, stop="zz")  # "z" is not in the vocabulary
    assert never == without


class RecordingStepper:
    """Wraps a stepper and records the batch size of every step call."""

    def __init__(self, inner):
        self.inner = inner
        self.batches = []

    def initial_state(self, batch):
        return self.inner.initial_state(batch)

    def step(self, ids, state):
        self.batches.append(len(ids))
        return self.inner.step(ids, state)

    def feed(self, ids, state):
        for t in range(ids.shape[1]):
            _, state = self.step(ids[:, t], state)
        return state


def test_num_samples_are_generated_as_one_batch(stepper):
    recorder = RecordingStepper(stepper)
    texts = generate(recorder, VOCAB, strategy("random"), GenerationRequest(prime="abc", length=40, num_samples=5,
                                                                            seed=9))
    assert len(texts) == 5
    assert len(set(texts)) == 5  # random rows differ
    assert recorder.batches == [5] * (2 + 40)  # prime minus its last character, then one step per character


@pytest.mark.parametrize("stop", [None, "e", "a "])
@pytest.mark.parametrize("prime", ["", "the "])
def test_streaming_concatenates_to_the_first_row(stepper, stop, prime):
    pieces = []
    texts = run(stepper, prime=prime, length=120, seed=11, num_samples=3, stop=stop, on_text=pieces.append)
    assert "".join(pieces) == texts[0]
    assert texts == run(stepper, prime=prime, length=120, seed=11, num_samples=3, stop=stop)


def test_streaming_with_a_stop_found_in_every_row(stepper):
    """When every row has stopped, generation ends early; the stream must still hold the whole first row."""
    [full] = run(stepper, prime="b", length=300, seed=2)
    stop = full[1:][10]  # one character, found by step 11 at the latest
    pieces = []
    [stopped] = run(stepper, prime="b", length=300, seed=2, stop=stop, on_text=pieces.append)
    assert "".join(pieces) == stopped == "b" + full[1:].split(stop, 1)[0]


def test_streaming_with_a_sequence_level_strategy(stepper):
    pieces = []
    [text] = run(stepper, "beam", options={"width": 2}, prime="ab", length=15, on_text=pieces.append)
    assert "".join(pieces) == text


def test_temperature_near_zero_with_random_equals_greedy(stepper):
    greedy = run(stepper, "greedy", prime="the", length=40, num_samples=2)
    cold = run(stepper, "random", prime="the", length=40, num_samples=2, temperature=1e-4, seed=3)
    assert cold == greedy


def test_temperature_does_not_change_greedy(stepper):
    assert run(stepper, "greedy", prime="a", length=20, temperature=0.3) == run(stepper, "greedy", prime="a", length=20)


def test_beam_width_one_equals_greedy(stepper):
    greedy = run(stepper, "greedy", prime="ab", length=30, num_samples=2)
    beam = run(stepper, "beam", options={"width": 1}, prime="ab", length=30, num_samples=2)
    assert beam == greedy


def test_beam_finds_a_sequence_at_least_as_likely_as_greedy(model, stepper):
    def log_probability(text, prime):
        ids = VOCAB.encode(text)
        logits, _ = model(tf.constant([ids[:-1]], "int32"))
        logits = np.asarray(logits, np.float64)[0]
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        positions = np.arange(len(prime) - 1, len(ids) - 1)
        return log_probs[positions, ids[positions + 1]].sum()

    [greedy] = run(stepper, "greedy", prime="ab", length=12)
    [beam] = run(stepper, "beam", options={"width": 4}, prime="ab", length=12)
    assert log_probability(beam, "ab") >= log_probability(greedy, "ab") - 1e-6


def test_unknown_prime_character_is_a_chargen_error(stepper):
    with pytest.raises(ChargenError, match="the prime holds 3 character.s. the model never saw: .xyz."):
        run(stepper, prime="xyz", length=5)


@pytest.mark.parametrize("request_options", [{"length": 0}, {"num_samples": 0}, {"temperature": 0.0}, {"stop": ""}])
def test_bad_requests_are_chargen_errors(stepper, request_options):
    with pytest.raises(ChargenError):
        run(stepper, **{"prime": "a", "length": 5, **request_options})


class OutOfRange(TokenSampler):
    name = "out-of-range"
    description = "returns an id one past the vocabulary"

    def sample(self, logits, context: SamplingContext):
        return np.full(logits.shape[0], logits.shape[-1])


class Raises(TokenSampler):
    name = "raises"
    description = "fails at the third step"

    def sample(self, logits, context: SamplingContext):
        if context.step == 2:
            raise RuntimeError("boom")
        return logits.argmax(axis=-1)


class WrongShape(TokenSampler):
    name = "wrong-shape"
    description = "returns one id too many"

    def sample(self, logits, context: SamplingContext):
        return np.zeros(logits.shape[0] + 1, np.int64)


@pytest.mark.parametrize(
    ("name", "message"),
    [("out-of-range", "outside the vocabulary"), ("raises", "RuntimeError: boom"), ("wrong-shape", "shape")],
)
def test_broken_strategy_is_a_chargen_error_naming_it(stepper, name, message):
    strategies = {"out-of-range": OutOfRange, "raises": Raises, "wrong-shape": WrongShape}
    with registry.registered(strategies, distribution="broken-samplers", version="9.9"):
        broken = registry.load(name).create({})
        with pytest.raises(ChargenError, match=message) as caught:
            generate(stepper, VOCAB, broken, GenerationRequest(prime="ab", length=10, num_samples=2, seed=0))
    assert f"'{name}'" in str(caught.value)
    assert "broken-samplers" in str(caught.value)


# ----------------------------------------------------------------------------------------------------
# generate_candidates(): every beam with its log-probability


def keras_log_probability(model, text, prime):
    """Log-probability in nats of `text` after `prime` under the Keras model, over one full window."""
    ids = VOCAB.encode(text)
    logits, _ = model(tf.constant([ids[:-1]], "int32"))
    log_probabilities = tf.nn.log_softmax(np.asarray(logits, np.float64)[0]).numpy()  # (time, vocab)
    start = len(prime) - 1  # the first generated character is predicted at the prime's last position
    return float(sum(log_probabilities[t, ids[t + 1]] for t in range(start, len(ids) - 1)))


def test_beam_candidates_are_ranked_and_scored_by_the_model(model, stepper):
    request = GenerationRequest(prime="the ", length=12, num_samples=2)
    rows = generate_candidates(stepper, VOCAB, strategy("beam", width=3), request)
    assert len(rows) == 2 and all(len(row) == 3 for row in rows)
    best_text = generate(stepper, VOCAB, strategy("beam", width=3), request)[0]
    for row in rows:
        texts, scores = zip(*row)
        assert texts[0] == best_text and len(set(texts)) == 3
        assert list(scores) == sorted(scores, reverse=True)
        for text, score in row:
            assert score == pytest.approx(keras_log_probability(model, text, "the "), abs=1e-3)


def test_candidates_of_a_token_level_strategy_are_refused(stepper):
    with pytest.raises(ChargenError, match="keeps no candidates"):
        generate_candidates(stepper, VOCAB, strategy("top-k"), GenerationRequest(length=5))
