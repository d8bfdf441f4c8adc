"""Corpus reading, splits and batches: what is read, what is refused, and that batches follow the step."""

import hashlib

import numpy as np
import pytest

from chargen.corpus import (
    BUILTIN_CORPORA,
    SEPARATOR,
    builtin_corpus,
    evaluation_batches,
    read_corpus,
    resolve_corpus,
    split_ids,
    steps_per_epoch,
    training_batch,
    training_dataset,
)
from chargen.errors import ChargenError


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


# Reading


def test_one_file_is_read_as_is(tmp_path):
    file = write(tmp_path / "one.txt", "naïve café\nline two\n")
    corpus = read_corpus(file)
    assert corpus.text == "naïve café\nline two\n"
    assert corpus.sources == ((str(file), 20),)
    assert corpus.num_bytes == len("naïve café\nline two\n".encode()) == 22
    assert corpus.sha256 == hashlib.sha256(file.read_bytes()).hexdigest()


def test_several_files_are_one_stream_joined_by_the_separator(tmp_path):
    first = write(tmp_path / "b.txt", "first")
    second = write(tmp_path / "a.txt", "second")
    corpus = read_corpus([first, str(second)])
    assert corpus.text == "first" + SEPARATOR + "second"
    assert [source for source, _ in corpus.sources] == [str(first), str(second)]
    assert corpus.sha256 == hashlib.sha256(b"firstsecond").hexdigest()
    assert corpus.num_bytes == 11


def test_a_folder_gives_its_files_recursively_sorted_and_skips_hidden_ones(tmp_path):
    write(tmp_path / "b.txt", "B")
    write(tmp_path / "a.txt", "A")
    write(tmp_path / "b" / "c.txt", "C")
    write(tmp_path / "b" / "d" / "e.txt", "E")
    write(tmp_path / ".hidden.txt", "hidden file")
    write(tmp_path / ".git" / "config", "hidden folder")
    corpus = read_corpus(tmp_path)
    assert corpus.text == SEPARATOR.join("ACEB")
    assert [source for source, _ in corpus.sources] == [
        str(tmp_path / "a.txt"), str(tmp_path / "b" / "c.txt"), str(tmp_path / "b" / "d" / "e.txt"),
        str(tmp_path / "b.txt"),
    ]


def test_latin_1_is_read_when_asked_for(tmp_path):
    file = write(tmp_path / "old.txt", "déjà vu".encode("latin-1"))
    assert read_corpus(file, encoding="latin-1").text == "déjà vu"


def test_undecodable_bytes_name_the_file_the_offset_and_the_fix(tmp_path):
    file = write(tmp_path / "old.txt", "abc déjà".encode("latin-1"))
    with pytest.raises(ChargenError) as raised:
        _ = read_corpus(file).text  # the files are read when the text is asked for
    message = str(raised.value)
    assert str(file) in message and "byte 0xe9 at byte offset 5" in message
    assert "--encoding latin-1" in message and "--encoding-errors replace" in message
    assert "\n" not in message


def test_replace_and_ignore_policies(tmp_path):
    file = write(tmp_path / "mixed.txt", b"ab\xffcd")
    assert read_corpus(file, errors="replace").text == "ab\ufffdcd"
    assert read_corpus(file, errors="ignore").text == "abcd"


def test_unknown_encoding_and_policy_are_refused(tmp_path):
    file = write(tmp_path / "a.txt", "text")
    with pytest.raises(ChargenError, match="unknown text encoding.*Received: encoding='utf-9'"):
        read_corpus(file, encoding="utf-9")
    with pytest.raises(ChargenError, match="unknown text encoding.*Received: encoding='base64'"):
        read_corpus(file, encoding="base64")
    with pytest.raises(ChargenError, match="unknown text encoding.*Received: encoding=.rot13."):
        read_corpus(file, encoding="rot13")
    with pytest.raises(ChargenError, match="strict, replace, ignore. Received: errors='lenient'"):
        read_corpus(file, errors="lenient")


def test_missing_paths_and_empty_folders_are_refused(tmp_path):
    with pytest.raises(ChargenError, match="corpus path not found: .*nowhere.txt"):
        read_corpus(tmp_path / "nowhere.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ChargenError, match="folder .*empty has no files"):
        read_corpus(tmp_path / "empty")
    write(tmp_path / "only-hidden" / ".notes", "hidden")
    with pytest.raises(ChargenError, match="has no files"):
        read_corpus(tmp_path / "only-hidden")


@pytest.mark.parametrize("content", ["", " \n\t\n"])
def test_empty_or_blank_corpora_are_refused(tmp_path, content):
    file = write(tmp_path / "blank.txt", content)
    with pytest.raises(ChargenError, match="the corpus is empty: .*blank.txt"):
        _ = read_corpus(file).text


def test_builtin_python_docs_is_large_and_stable():
    corpus = builtin_corpus("python-docs")
    assert len(corpus.text) > 300_000
    assert corpus.sources == (("builtin:python-docs", len(corpus.text)),)
    assert corpus.sha256 == hashlib.sha256(corpus.text.encode("utf-8")).hexdigest()
    assert corpus == builtin_corpus("python-docs")


def test_unknown_builtin_lists_the_builtins():
    with pytest.raises(ChargenError, match="builtin:python-docs. Received: name='shakespeare'"):
        builtin_corpus("shakespeare")
    assert "python-docs" in BUILTIN_CORPORA


def test_resolve_reads_builtins_and_paths_in_order(tmp_path):
    file = write(tmp_path / "extra.txt", "extra text")
    corpus = resolve_corpus(["builtin:python-docs", str(file)])
    docs = builtin_corpus("python-docs")
    assert corpus.text == docs.text + SEPARATOR + "extra text"
    assert corpus.sources == docs.sources + ((str(file), 10),)
    assert corpus.sha256 == hashlib.sha256(docs.text.encode("utf-8") + b"extra text").hexdigest()
    assert resolve_corpus(str(file)).text == "extra text"
    with pytest.raises(ChargenError, match="unknown built-in corpus"):
        resolve_corpus(["builtin:nothing"])


# Splitting


def test_validation_is_the_tail():
    ids = np.arange(1_000, dtype=np.int32)
    train, val = split_ids(ids, 0.1, seq_len=10)
    np.testing.assert_array_equal(train, np.arange(900))
    np.testing.assert_array_equal(val, np.arange(900, 1_000))


def test_each_side_keeps_at_least_one_window():
    ids = np.arange(100, dtype=np.int32)
    assert [len(part) for part in split_ids(ids, 0.01, seq_len=10)] == [89, 11]
    assert [len(part) for part in split_ids(ids, 0.95, seq_len=10)] == [11, 89]
    assert [len(part) for part in split_ids(ids, 0.0, seq_len=10)] == [100, 0]


def test_too_short_corpus_names_the_minimum():
    with pytest.raises(ChargenError, match="has 41 characters; .* need at least 42"):
        split_ids(np.arange(41), 0.1, seq_len=20)
    with pytest.raises(ChargenError, match="has 20 characters; .* need at least 21"):
        split_ids(np.arange(20), 0.0, seq_len=20)
    assert [len(part) for part in split_ids(np.arange(42), 0.1, seq_len=20)] == [21, 21]


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_validation_fraction_must_be_below_one(fraction):
    with pytest.raises(ChargenError, match=f"Received: val_fraction={fraction}"):
        split_ids(np.arange(1_000), fraction, seq_len=10)


# Training batches


def test_steps_per_epoch_counts_predictions():
    assert steps_per_epoch(6_401, seq_len=100, batch_size=64) == 1
    assert steps_per_epoch(64_001, seq_len=100, batch_size=64) == 10
    assert steps_per_epoch(64_000, seq_len=100, batch_size=64) == 9
    assert steps_per_epoch(50, seq_len=100, batch_size=64) == 1


@pytest.mark.parametrize("stateful", [False, True])
def test_targets_are_the_inputs_one_character_ahead(stateful):
    ids = np.arange(5_000, dtype=np.int32)  # ids equal positions, so windows show where they come from
    for step in range(3):
        inputs, targets = training_batch(ids, seq_len=16, batch_size=8, seed=0, step=step, stateful=stateful)
        assert inputs.shape == targets.shape == (8, 16) and inputs.dtype == targets.dtype == np.int32
        np.testing.assert_array_equal(np.diff(inputs, axis=1), 1)
        np.testing.assert_array_equal(targets, inputs + 1)


def test_random_windows_follow_seed_and_step():
    ids = np.arange(100_000, dtype=np.int32)
    batch = training_batch(ids, seq_len=50, batch_size=32, seed=1, step=4)
    np.testing.assert_array_equal(batch[0], training_batch(ids, 50, 32, seed=1, step=4)[0])
    assert not np.array_equal(batch[0], training_batch(ids, 50, 32, seed=2, step=4)[0])
    assert not np.array_equal(batch[0], training_batch(ids, 50, 32, seed=1, step=5)[0])
    starts = np.concatenate([training_batch(ids, 50, 32, seed=1, step=step)[0][:, 0] for step in range(200)])
    assert starts.min() >= 0 and starts.max() <= len(ids) - 51
    assert len(np.unique(starts)) > 0.95 * len(starts)
    assert abs(starts.mean() - (len(ids) - 51) / 2) < 0.05 * len(ids)


def test_stateful_rows_continue_where_they_stopped_and_an_epoch_predicts_each_character_once():
    ids = np.arange(1_000, dtype=np.int32)
    seq_len, batch_size = 10, 4
    windows_per_stream = steps_per_epoch(len(ids), seq_len, batch_size)  # 24
    batches = [training_batch(ids, seq_len, batch_size, 0, step, stateful=True)
               for step in range(windows_per_stream + 1)]
    for (_, targets), (next_inputs, _) in zip(batches[:-2], batches[1:-1]):
        np.testing.assert_array_equal(next_inputs[:, 0], targets[:, -1])
    epoch_targets = np.concatenate([targets for _, targets in batches[:-1]], axis=1).ravel()
    np.testing.assert_array_equal(epoch_targets, np.arange(1, batch_size * windows_per_stream * seq_len + 1))
    np.testing.assert_array_equal(batches[-1][0], batches[0][0])  # the next epoch starts over


def test_stateful_needs_a_window_per_row():
    with pytest.raises(ChargenError, match="4,001 characters for batch_size 4 .* has 4,000"):
        training_batch(np.arange(4_000), seq_len=1_000, batch_size=4, seed=0, step=0, stateful=True)
    with pytest.raises(ChargenError, match="needs 1,001"):
        training_batch(np.arange(1_000), seq_len=1_000, batch_size=4, seed=0, step=0)


@pytest.mark.parametrize("stateful", [False, True])
def test_dataset_equals_numpy_and_resumes_at_any_step(stateful):
    ids = np.random.default_rng(0).integers(0, 60, size=20_000).astype(np.int32)
    seq_len, batch_size, seed = 25, 16, 12345
    from_start = list(training_dataset(ids, seq_len, batch_size, seed, stateful=stateful).take(60).as_numpy_iterator())
    resumed = list(training_dataset(ids, seq_len, batch_size, seed, start_step=47, stateful=stateful)
                   .take(13).as_numpy_iterator())
    for step, (inputs, targets) in enumerate(from_start):
        expected_inputs, expected_targets = training_batch(ids, seq_len, batch_size, seed, step, stateful)
        assert inputs.dtype == np.int32 and inputs.shape == (batch_size, seq_len)
        np.testing.assert_array_equal(inputs, expected_inputs)
        np.testing.assert_array_equal(targets, expected_targets)
    for (inputs, targets), (expected_inputs, expected_targets) in zip(resumed, from_start[47:], strict=True):
        np.testing.assert_array_equal(inputs, expected_inputs)
        np.testing.assert_array_equal(targets, expected_targets)


@pytest.mark.parametrize("stateful", [False, True])
def test_dataset_reads_windows_from_a_memory_map_of_narrow_ids(tmp_path, stateful):
    ids = np.random.default_rng(1).integers(0, 200, size=5_000).astype(np.uint8)
    ids.tofile(tmp_path / "ids")
    mapped = np.memmap(tmp_path / "ids", dtype=np.uint8, mode="r", shape=(len(ids),))
    train, _ = split_ids(mapped, 0.1, seq_len=20)
    assert isinstance(train, np.memmap)  # a view: nothing was copied into memory
    batches = training_dataset(train, 20, 8, seed=3, start_step=5, stateful=stateful).take(3).as_numpy_iterator()
    for step, (inputs, targets) in enumerate(batches, start=5):
        expected_inputs, expected_targets = training_batch(ids[:len(train)].astype(np.int32), 20, 8, 3, step, stateful)
        assert inputs.dtype == np.int32
        np.testing.assert_array_equal(inputs, expected_inputs)
        np.testing.assert_array_equal(targets, expected_targets)


def test_dataset_equals_numpy_for_large_seeds_and_steps():
    ids = np.arange(10_000, dtype=np.int32)
    seed, step = 2**63 + 12345, 10**12
    inputs, _ = next(iter(training_dataset(ids, 8, 4, seed, start_step=step)))
    np.testing.assert_array_equal(inputs.numpy(), training_batch(ids, 8, 4, seed, step)[0])


# Evaluation batches


@pytest.mark.parametrize("num_chars, seq_len, batch_size", [(1_000, 10, 4), (1_003, 7, 5), (12, 10, 32), (2, 5, 3)])
def test_evaluation_scores_every_character_but_the_first_once_in_stream_order(num_chars, seq_len, batch_size):
    ids = np.arange(num_chars, dtype=np.int32)
    batches, num_scored = evaluation_batches(ids, seq_len, batch_size)
    assert num_scored == num_chars - 1
    rows = min(batch_size, num_chars - 1)
    assert all(batch.inputs.shape == batch.targets.shape == batch.weights.shape == (rows, seq_len)
               for batch in batches)
    inputs = np.concatenate([batch.inputs for batch in batches], axis=1)  # [rows, T]
    targets = np.concatenate([batch.targets for batch in batches], axis=1)
    weights = np.concatenate([batch.weights for batch in batches], axis=1)
    assert weights.sum() == num_scored
    np.testing.assert_array_equal(np.sort(targets[weights == 1]), np.arange(1, num_chars))
    np.testing.assert_array_equal(targets[weights == 1], np.arange(1, num_chars))  # row by row, in order
    for row_inputs, row_targets, row_weights in zip(inputs, targets, weights):
        scored = row_weights == 1
        assert scored[: scored.sum()].all()  # padding only at the end of a stream
        np.testing.assert_array_equal(row_targets[scored], row_inputs[scored] + 1)
    lengths = weights.sum(axis=1)
    assert lengths.max() - lengths.min() <= 1


def test_evaluation_batches_of_a_memory_map_are_cut_when_read(tmp_path):
    ids = np.random.default_rng(2).integers(0, 250, size=1_003).astype(np.uint8)
    ids.tofile(tmp_path / "ids")
    mapped = np.memmap(tmp_path / "ids", dtype=np.uint8, mode="r", shape=(len(ids),))
    batches, count = evaluation_batches(mapped, seq_len=7, batch_size=5)
    reference, reference_count = evaluation_batches(ids.astype(np.int32), seq_len=7, batch_size=5)
    assert count == reference_count == 1_002 and len(batches) == len(reference) == 29
    for batch, expected in zip(batches, reference, strict=True):
        assert batch.inputs.dtype == np.int32
        for got, want in zip(batch, expected, strict=True):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(batches[-1].targets, reference[28].targets)
    with pytest.raises(IndexError):
        batches[29]


def test_evaluation_needs_two_characters():
    with pytest.raises(ChargenError, match="at least 2 characters"):
        evaluation_batches(np.arange(1), seq_len=10, batch_size=4)
