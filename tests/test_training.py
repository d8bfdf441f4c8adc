"""The trainer: what the two modes can learn, how close to a source's entropy rate, and its limits."""

import math

import numpy as np
import pytest

from chargen import corpus, synthetic
from chargen.config import TrainingConfig
from chargen.training import Callback, Evaluator, Trainer, build_model, scheduled_learning_rate
from chargen.vocab import Vocabulary


def train(text: str, **overrides):
    """Train a small model on `text` at a constant learning rate; returns (trainer, progress)."""
    settings = dict(cell="lstm", num_layers=1, units=32, embedding_dim=8, seq_len=32, batch_size=32,
                    eval_every=0, learning_rate=1e-2, lr_schedule="constant", seed=0)
    config = TrainingConfig(**{**settings, **overrides})
    vocab = Vocabulary.from_text(text)
    train_ids, val_ids = corpus.split_ids(vocab.encode(text), config.val_fraction, config.seq_len)
    trainer = Trainer(build_model(config, len(vocab)), config, train_ids, val_ids, vocab=vocab, xla=False)
    return trainer, trainer.fit()


@pytest.mark.slow
def test_bptt_learns_a_long_range_recall_that_teacher_forcing_cannot():
    # Records "K" + 6 random fillers + "K" + newline: the second key is predictable only by a model
    # whose state was trained to keep the first one for 7 steps, which needs the gradient through time.
    source = synthetic.recall_source(lag=6, num_keys=4, filler_size=2, length=60_000, seed=1)
    _, bptt = train(source.text, mode="bptt", steps=250)
    _, forced = train(source.text, mode="teacher-forcing", steps=250)
    floor, without_recall = source.entropy_bits_per_char, source.no_recall_bits_per_char
    assert bptt.last_val_bpc < floor + 0.08, (bptt.last_val_bpc, floor)
    assert forced.last_val_bpc > floor + 0.15, (forced.last_val_bpc, floor)
    assert forced.last_val_bpc - bptt.last_val_bpc > 0.15
    # Teacher forcing does no better than a model that cannot recall at all.
    assert forced.last_val_bpc > without_recall - 0.05


@pytest.mark.slow
def test_lstm_reaches_the_entropy_rate_of_a_markov_source():
    source = synthetic.markov_source(order=2, alphabet_size=6, length=60_000, seed=3, concentration=0.3)
    _, progress = train(source.text, steps=400)
    # Stated margin: within 0.06 bits per character of the exact entropy rate (the validation
    # text is a finite sample, about +-0.015 of noise, and training is brief).
    assert abs(progress.last_val_bpc - source.entropy_bits_per_char) < 0.06


def test_loss_is_reported_in_nats_and_bits():
    recorded = []

    class Record(Callback):
        def on_step_end(self, trainer, logs):
            recorded.append(logs)

    text = "abcd" * 400
    config = TrainingConfig(num_layers=1, units=8, embedding_dim=4, seq_len=16, batch_size=4, steps=3, eval_every=0,
                            val_fraction=0.0)  # no validation text: the evaluation at the end has nothing to trace
    vocab = Vocabulary.from_text(text)
    train_ids, val_ids = corpus.split_ids(vocab.encode(text), config.val_fraction, config.seq_len)
    trainer = Trainer(build_model(config, len(vocab)), config, train_ids, val_ids, callbacks=[Record()], xla=False)
    trainer.fit()
    assert [logs["step"] for logs in recorded] == [1, 2, 3]
    first = recorded[0]
    assert first["bpc"] == pytest.approx(first["loss"] / math.log(2))
    # An untrained model over 4 characters starts near the uniform log(4) nats.
    assert abs(first["loss"] - math.log(4)) < 0.3


def test_epochs_set_the_step_limit_and_the_smaller_limit_wins():
    text = "".join(np.random.default_rng(0).choice(list("abcdefgh"), 5000))
    small = dict(units=8, seq_len=16, batch_size=8, val_fraction=0.0)  # no validation text: nothing more to trace
    trainer, progress = train(text, epochs=1, **small)
    assert progress.step == corpus.steps_per_epoch(len(trainer.train_ids), 16, 8)
    _, progress = train(text, epochs=1, steps=3, **small)
    assert progress.step == 3


def test_the_cosine_schedule_falls_from_the_learning_rate_to_a_tenth_of_it():
    cosine, constant = TrainingConfig(learning_rate=0.01), TrainingConfig(learning_rate=0.01, lr_schedule="constant")
    # 0.01 * (0.1 + 0.9 * (1 + cos(pi * f)) / 2), worked by hand at f = 0, 1/3, 1/2, 1
    for fraction, expected in ((0.0, 0.01), (1 / 3, 0.00775), (0.5, 0.0055), (1.0, 0.001), (1.5, 0.001)):
        assert scheduled_learning_rate(cosine, fraction) == pytest.approx(expected)
        assert scheduled_learning_rate(constant, fraction) == 0.01
    assert scheduled_learning_rate(cosine, None) == 0.01  # no limit: nothing to fall toward


@pytest.mark.parametrize("xla", [False, True])
def test_each_step_applies_the_scheduled_learning_rate(xla):
    """Keras's Adam moves a weight by lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps): from the slots
    after the last step, the weights must have moved by exactly that at the scheduled rate, so the compiled
    step reads the rate the schedule set."""
    import tensorflow as tf

    class Record(Callback):
        def __init__(self):
            self.rates, self.before = [], None

        def on_step_end(self, trainer, logs):
            self.rates.append(logs["learning_rate"])
            if logs["step"] == 2:
                self.before = [np.asarray(v) for v in trainer.model.trainable_variables]

    text = "".join(np.random.default_rng(0).choice(list("abcdefgh"), 3000))
    config = TrainingConfig(num_layers=1, units=8, embedding_dim=4, seq_len=16, batch_size=4, steps=3, eval_every=0,
                            learning_rate=0.01, clip_norm=0.0, val_fraction=0.0)  # no evaluation to trace
    vocab = Vocabulary.from_text(text)
    train_ids, val_ids = corpus.split_ids(vocab.encode(text), config.val_fraction, config.seq_len)
    record = Record()
    trainer = Trainer(build_model(config, len(vocab)), config, train_ids, val_ids, callbacks=[record], xla=xla)
    trainer.fit()
    expected = [scheduled_learning_rate(config, step / 3) for step in range(3)]
    assert record.rates == pytest.approx(expected) and expected[2] < 0.5 * expected[0]
    optimizer = trainer.optimizer
    beta1, beta2, step = optimizer.beta_1, optimizer.beta_2, 3
    for variable, before in zip(trainer.model.trainable_variables, record.before, strict=True):
        m = np.asarray(optimizer._momentums[optimizer._get_variable_index(variable)])
        v = np.asarray(optimizer._velocities[optimizer._get_variable_index(variable)])
        alpha = expected[2] * np.sqrt(1 - beta2**step) / (1 - beta1**step)
        predicted = before - alpha * m / (np.sqrt(v) + optimizer.epsilon)
        np.testing.assert_allclose(np.asarray(variable), predicted, rtol=0, atol=1e-6)
    assert float(tf.convert_to_tensor(optimizer.learning_rate)) == pytest.approx(expected[2])


def test_stop_request_ends_training_and_is_reported():
    class StopAtTwo(Callback):
        def on_step_end(self, trainer, logs):
            if logs["step"] == 2:
                trainer.stop_requested = True

    text = "abcdefgh" * 300
    config = TrainingConfig(num_layers=1, units=8, embedding_dim=4, seq_len=16, batch_size=4, steps=50, eval_every=0)
    vocab = Vocabulary.from_text(text)
    train_ids, val_ids = corpus.split_ids(vocab.encode(text), config.val_fraction, config.seq_len)
    trainer = Trainer(build_model(config, len(vocab)), config, train_ids, val_ids, callbacks=[StopAtTwo()], xla=False)
    progress = trainer.fit()
    assert progress.step == 2 and trainer.stopped_by == "interrupt"
    assert progress.last_val_bpc is not None  # the end of training always evaluates


def test_evaluations_during_training_score_the_first_val_chars_of_the_validation_text():
    text = "".join(np.random.default_rng(3).choice(list("abcdefgh"), 4000))
    trainer, progress = train(text, num_layers=1, units=8, seq_len=16, batch_size=4, steps=2, val_chars=150)
    assert len(trainer.val_ids) == 400 and len(trainer.scored_val_ids) == 150
    capped = Evaluator(trainer.model, 16, 4)(trainer.val_ids[:150]) / math.log(2)
    whole = Evaluator(trainer.model, 16, 4)(trainer.val_ids) / math.log(2)
    assert progress.last_val_bpc == pytest.approx(capped, abs=1e-6)
    assert abs(capped - whole) > 1e-4  # the cap changed what was scored


@pytest.mark.parametrize(("cell", "mode", "fused", "layers"), [
    # Every fused unit, each mode's backward pass on two units, two layers where a layer reads the one
    # below, and the generic path: each case compiles for seconds, so each one covers something new.
    ("rnn", "teacher-forcing", True, 1),
    ("gru", "bptt", True, 1),
    ("gru-reset-after", "teacher-forcing", True, 1),
    ("lstm", "bptt", True, 2),
    ("lstm", "bptt", False, 1),
])
def test_xla_compiled_training_equals_the_uncompiled_step(cell, mode, fused, layers):
    """XLA is on by default; it may only reorder float rounding, never change what a step computes."""
    text = "".join(np.random.default_rng(2).choice(list("abcdefgh \n"), 3000))
    config = TrainingConfig(cell=cell.removesuffix("-reset-after"), reset_after=cell.endswith("-reset-after"),
                            num_layers=layers, units=12, embedding_dim=6, seq_len=20, batch_size=8,
                            mode=mode, steps=4, eval_every=0, seed=3, val_fraction=0.0)  # evaluation never compiles
    vocab = Vocabulary.from_text(text)
    train_ids, val_ids = corpus.split_ids(vocab.encode(text), config.val_fraction, config.seq_len)
    results = []
    for xla in (True, False):

        class Losses(Callback):
            def __init__(self):
                self.values = []

            def on_step_end(self, trainer, logs):
                self.values.append(logs["loss"])

        losses = Losses()
        model = build_model(config, len(vocab))
        for layer in model.recurrent_layers:
            layer.fused = fused
        trainer = Trainer(model, config, train_ids, val_ids, callbacks=[losses], xla=xla)
        initial = [np.asarray(w) for w in trainer.model.weights]
        trainer.fit()
        results.append((losses.values, [np.asarray(w) for w in trainer.model.weights]))
    (xla_losses, xla_weights), (plain_losses, plain_weights) = results
    assert len(xla_losses) == 4
    np.testing.assert_allclose(xla_losses, plain_losses, rtol=1e-5)
    for compiled, plain, start in zip(xla_weights, plain_weights, initial, strict=True):
        assert np.abs(plain - start).max() > 1e-3  # every weight moved: the steps did train
        np.testing.assert_allclose(compiled, plain, rtol=0, atol=1e-5)


def test_stateful_training_feeds_each_window_the_state_the_previous_window_ended_with():
    text = "".join(np.random.default_rng(1).choice(list("abcdefgh"), 4000))
    config = TrainingConfig(num_layers=2, units=8, embedding_dim=4, seq_len=8, batch_size=4, steps=2,
                            eval_every=0, stateful=True, val_fraction=0.0)  # no evaluation to trace
    vocab = Vocabulary.from_text(text)
    train_ids, val_ids = corpus.split_ids(vocab.encode(text), config.val_fraction, config.seq_len)
    after_first_step = {}

    class Keep(Callback):
        def on_step_end(self, trainer, logs):
            if logs["step"] == 1:
                after_first_step["weights"] = [np.asarray(w) for w in trainer.model.weights]
                after_first_step["states"] = [[np.asarray(s) for s in layer] for layer in trainer.carried_states]

    trainer = Trainer(build_model(config, len(vocab)), config, train_ids, val_ids, callbacks=[Keep()], xla=False)
    trainer.fit()
    # Replay step 2's forward pass with the weights it ran with: from the carried state it must end where
    # the trainer's state ended; from a zero state (what a trainer that forgot to pass it would use) it must not.
    model = build_model(config, len(vocab))
    model.set_weights(after_first_step["weights"])
    inputs, _ = corpus.training_batch(train_ids, config.seq_len, config.batch_size, config.seed, step=1,
                                      stateful=True)
    _, from_carried = model(inputs, states=after_first_step["states"])
    _, from_zero = model(inputs)
    for layer, carried, zero in zip(trainer.carried_states, from_carried, from_zero, strict=True):
        for final, expected, unexpected in zip(layer, carried, zero, strict=True):
            np.testing.assert_allclose(np.asarray(final), np.asarray(expected), rtol=0, atol=1e-6)
            assert np.abs(np.asarray(final) - np.asarray(unexpected)).max() > 1e-4

