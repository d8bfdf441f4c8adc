"""Fine-tuning (`chargen train --init-from RUN`): weights carried over, vocabulary reconciled, parent recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from chargen import finetune, synthetic
from chargen.checkpoints import Run
from chargen.config import TrainingConfig
from chargen.errors import ChargenError
from chargen.training import build_model
from chargen.vocab import Vocabulary

from helpers import TINY, assert_user_error, run_cli


def write_text(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def words_with(run_copy, tmp_path, extra: str):
    """The shared run's corpus with `extra` appended to every line (characters the run may lack)."""
    lines = run_copy["corpus"].read_text(encoding="utf-8").splitlines()
    return write_text(tmp_path / "new.txt", "\n".join(line + extra for line in lines) + "\n")


def train_from(run_copy, corpus, *extra):
    return run_cli("train", corpus, *TINY, "--checkpoint-dir", run_copy["checkpoint_dir"], "--init-from", "tiny",
                   *extra)


# Vocabulary: error, drop, grow (no TensorFlow needed) ---------------------------------------------------

def adapt(text: str, parent: Vocabulary, new_chars: str) -> finetune.AdaptedVocabulary:
    """`adapt_vocabulary` on `text` as the encoded cache holds it: ids in the text's own vocabulary."""
    own = Vocabulary.from_text(text)
    return finetune.adapt_vocabulary(own.encode(text), own, parent, new_chars, "p")


def test_missing_characters_are_listed_with_their_count(monkeypatch):
    monkeypatch.setattr(finetune, "COUNT_CHUNK", 2)  # counted across chunks, as a corpus larger than memory is
    parent = Vocabulary.from_text("abc \n")
    with pytest.raises(ChargenError, match=r"2 distinct character\(s\) of the corpus \(3 occurrences\) are not in "
                                           r"the vocabulary of run p: 'XY'; pass --new-chars drop .* --new-chars grow"):
        adapt("abXcYX", parent, "error")
    many = "".join(chr(0x4E00 + i) for i in range(25))
    with pytest.raises(ChargenError, match=f"25 distinct.*'{many[:20]}' and 5 more;"):
        adapt("a" + many, parent, "error")


def test_drop_counts_every_occurrence_and_keeps_the_parents_vocabulary():
    parent = Vocabulary.from_text("abc \n")
    adapted = adapt("a\u00e9b\u00e9c X\n", parent, "drop")
    assert (adapted.dropped, adapted.missing, adapted.vocab) == (3, "X\u00e9", parent)


def test_grow_adds_the_missing_characters_to_the_vocabulary():
    parent = Vocabulary.from_text("abc \n")
    adapted = adapt("aZb\u00e9", parent, "grow")
    assert adapted.vocab.chars == sorted("abc \nZ\u00e9")
    assert (adapted.dropped, adapted.missing) == (0, "Z\u00e9")
    assert adapt("abc", parent, "error").vocab is parent  # nothing missing: nothing changes


def test_model_options_come_from_the_parent_and_a_different_one_is_refused():
    parent = TrainingConfig(cell="gru", num_layers=1, units=16, embedding_dim=8)
    options = TrainingConfig(learning_rate=0.01, seq_len=20).to_dict()  # defaults for the model options
    config = finetune.inherited_config(parent, options, {"units": 16, "seq_len": 20}, "p")
    assert (config.cell, config.num_layers, config.units, config.embedding_dim) == ("gru", 1, 16, 8)
    assert (config.learning_rate, config.seq_len) == (0.01, 20)
    with pytest.raises(ChargenError, match=r"--cell lstm differs from the --init-from run p's gru; .*--layers"):
        finetune.inherited_config(parent, options, {"cell": "lstm"}, "p")


# Weights ---------------------------------------------------------------------------------------------

def test_a_grown_model_keeps_every_old_row_exactly_and_starts_new_rows_as_a_fresh_model(trained):
    parent = Run.open(trained["run"])
    parent_model, parent_vocab = parent.load_model("best"), parent.vocabulary()
    adapted = adapt("Zebra \u00e9\n", parent_vocab, "grow")
    config = TrainingConfig.from_saved(parent.config["training"])
    fresh = build_model(config, len(adapted.vocab))
    model = build_model(config, len(adapted.vocab))
    finetune.transplant_weights(parent_model, model, parent_vocab, adapted.vocab)

    old = adapted.vocab.encode("".join(parent_vocab.chars))
    new = adapted.vocab.encode("Z\u00e9")
    embedding, parent_embedding = np.asarray(model.embedding.embeddings), np.asarray(parent_model.embedding.embeddings)
    np.testing.assert_array_equal(embedding[old], parent_embedding)
    np.testing.assert_array_equal(embedding[new], np.asarray(fresh.embedding.embeddings)[new])
    np.testing.assert_array_equal(np.asarray(model.head.kernel)[:, old], np.asarray(parent_model.head.kernel))
    np.testing.assert_array_equal(np.asarray(model.head.bias)[old], np.asarray(parent_model.head.bias))
    np.testing.assert_array_equal(np.asarray(model.head.kernel)[:, new], np.asarray(fresh.head.kernel)[:, new])
    for layer, parent_layer in zip(model.recurrent_layers, parent_model.recurrent_layers):
        for weight, parent_weight in zip(layer.get_weights(), parent_layer.get_weights()):
            np.testing.assert_array_equal(weight, parent_weight)
    # So on old text the grown model predicts the old characters as the parent does.
    text = "heron grove\namber"
    logits, _ = model(adapted.vocab.encode(text)[None, :])
    parent_logits, _ = parent_model(parent_vocab.encode(text)[None, :])
    np.testing.assert_allclose(np.asarray(logits)[..., old], np.asarray(parent_logits), rtol=0, atol=1e-5)


# The command end to end --------------------------------------------------------------------------------

def test_grow_trains_a_new_run_that_records_its_parent(run_copy, tmp_path):
    corpus = words_with(run_copy, tmp_path, " Z\u00e9")
    result = train_from(run_copy, corpus, "--new-chars", "grow", "--steps", "2", "--run-name", "child")
    assert result.exit_code == 0, result.output
    parent_path = run_copy["run"].resolve()
    step = Run.open(parent_path).load_progress("best")["step"]
    assert f"starting from {parent_path} (best snapshot, step {step}); grew its vocabulary by 2 character(s): " \
           "'Z\u00e9'" in result.stderr
    child = Run.open(run_copy["checkpoint_dir"] / "child")
    assert child.vocabulary().chars == sorted(set(Run.open(run_copy["run"]).vocabulary().chars) | {"Z", "\u00e9"})
    parent = child.config["parent"]
    assert (parent["run"], parent["snapshot"], parent["step"]) == (str(parent_path), "best", step)
    assert parent["snapshot_folder"] == Run.open(parent_path).snapshot_path("best").name
    assert (parent["new_chars"], parent["missing_chars"]) == ("grow", "Z\u00e9")

    info = run_cli("info", child.path)
    assert f"fine-tuned   from {parent_path} (best snapshot, step {step}); grew its vocabulary" in info.output
    details = json.loads(run_cli("info", child.path, "--json").output)
    assert details["steps"] == 2  # a new step counter
    assert details["parent"] == parent


def test_drop_trains_without_the_missing_characters_and_drops_them_again_on_resume(run_copy, tmp_path):
    corpus = words_with(run_copy, tmp_path, "X")
    lines = corpus.read_text(encoding="utf-8").count("\n")
    result = train_from(run_copy, corpus, "--new-chars", "drop", "--run-name", "child", "--init-checkpoint", "last",
                        "--steps", "2")
    assert result.exit_code == 0, result.output
    assert f"(last snapshot, step 4); dropped {lines:,} occurrence(s) of 1 character(s) not in its vocabulary: " \
           "'X'" in result.stderr
    child = Run.open(run_copy["checkpoint_dir"] / "child")
    assert child.vocabulary() == Run.open(run_copy["run"]).vocabulary()
    resumed = run_cli("train", corpus, "--resume", "--run-name", "child", "--checkpoint-dir",
                      run_copy["checkpoint_dir"], "--steps", "3", "--quiet", "--no-xla", "--no-histograms")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(run_cli("info", child.path, "--json").output)["steps"] == 3


def test_missing_characters_stop_the_command_before_a_run_is_made(run_copy, tmp_path):
    corpus = words_with(run_copy, tmp_path, "Q")
    result = train_from(run_copy, corpus)
    assert_user_error(result, "1 distinct character(s)", "not in the vocabulary of run tiny: 'Q'", "--new-chars grow")
    assert sorted(p.name for p in run_copy["checkpoint_dir"].iterdir()) == ["tiny"]


def test_a_model_option_that_differs_from_the_parent_is_refused(run_copy):
    result = train_from(run_copy, run_copy["corpus"], "--units", "32")
    assert_user_error(result, "--units 32 differs from the --init-from run tiny's 16", "leave the option out")


@pytest.mark.parametrize(("extra", "fragment"), [
    (["--resume"], "--init-from starts a new run and --resume continues one"),
    (["--new-chars", "drop"], "--new-chars applies to fine-tuning only"),
    (["--init-checkpoint", "last"], "--init-checkpoint applies to fine-tuning only"),
])
def test_options_that_do_not_go_with_fine_tuning_are_refused(run_copy, extra, fragment):
    init = ["--init-from", "tiny"] if extra == ["--resume"] else []
    result = run_cli("train", run_copy["corpus"], *TINY, "--checkpoint-dir", run_copy["checkpoint_dir"], *init, *extra)
    assert_user_error(result, fragment)


@pytest.mark.slow
def test_a_run_fine_tuned_on_a_new_source_reaches_its_floor_faster_than_a_fresh_run(tmp_path):
    """Two order-2 chains over the same 8 symbols with different transitions: the parent learned to carry
    the last two characters, so the child has only the new transition table left to learn."""
    first = synthetic.markov_source(order=2, alphabet_size=8, length=30_000, seed=1)
    second = synthetic.markov_source(order=2, alphabet_size=8, length=30_000, seed=2)
    first_path, second_path = write_text(tmp_path / "first.txt", first.text), write_text(tmp_path / "second.txt",
                                                                                         second.text)
    model = ["--cell", "gru", "--units", "48", "--layers", "1", "--embedding-dim", "8"]
    training = ["--seq-len", "24", "--batch-size", "32", "--learning-rate", "0.01", "--lr-schedule", "constant",
                "--eval-every", "0", "--quiet", "--no-xla", "--no-histograms", "--checkpoint-dir", tmp_path / "runs"]
    # 200 steps: measured, the child's distance to the floor is 0.39 of the fresh run's (0.36 after 400 steps)
    parent = run_cli("train", first_path, *model, *training, "--steps", "200", "--run-name", "parent")
    assert parent.exit_code == 0, parent.output

    def bits_after(steps, *start):
        name = f"{'child' if start else 'fresh'}-{steps}"
        result = run_cli("train", second_path, *training, "--steps", steps, "--run-name", name, *start,
                         *([] if start else model))
        assert result.exit_code == 0, result.output
        return Run.open(tmp_path / "runs" / name).load_progress("last")["last_val_bpc"]

    fine_tuned, fresh = bits_after(60, "--init-from", "parent"), bits_after(60)
    floor = second.entropy_bits_per_char
    assert fine_tuned - floor < 0.5 * (fresh - floor), (fine_tuned, fresh, floor)
