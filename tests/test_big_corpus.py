"""Corpora larger than memory: the streamed encoding, the encoded cache and its memory bound."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from chargen import bytewise, encoded
from chargen import corpus as corpus_module
from chargen import vocab as vocab_module
from chargen.corpus import read_corpus
from chargen.errors import ChargenError
from chargen.vocab import Vocabulary

from helpers import TINY, run_cli, write_corpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder of this test's own."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(encoded.CACHE_VARIABLE, str(folder))
    return folder


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Reads of 5 bytes and encodings of 3 characters: every multi-byte character meets a chunk boundary."""
    monkeypatch.setattr(corpus_module, "READ_BYTES", 5)
    monkeypatch.setattr(bytewise, "PIECE_BYTES", 5)
    monkeypatch.setattr(vocab_module, "_ENCODE_CHUNK", 3)


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def reference_ids(text: str) -> tuple[Vocabulary, np.ndarray]:
    """The in-memory road, independent of the streaming one: the whole text, the whole vocabulary."""
    vocab = Vocabulary(sorted(set(text)))
    return vocab, np.array([vocab.chars.index(char) for char in text])


# The streamed encoding


def test_streamed_ids_equal_the_whole_text_encoded_at_once(tmp_path, cache, tiny_chunks):
    text = "naïve café — 日本語 ok\n"
    first = write(tmp_path / "a.txt", text)
    second = write(tmp_path / "b.txt", "déjà vu".encode("latin-1"))
    text_corpus = read_corpus([first], encoding="utf-8")
    prepared = encoded.encode(text_corpus)
    vocab, ids = reference_ids(text)
    assert prepared.vocab == vocab and not prepared.reused
    np.testing.assert_array_equal(prepared.ids, ids)
    assert prepared.ids.dtype == np.uint8 and isinstance(prepared.ids, np.memmap)
    assert prepared.sources == ((str(first), len(text)),) and prepared.num_chars == len(text)
    assert prepared.sha256 == text_corpus.sha256 and prepared.num_bytes == len(first.read_bytes())

    latin = encoded.encode(read_corpus([second, second], encoding="latin-1"))
    vocab, ids = reference_ids("déjà vu\n\ndéjà vu")
    assert latin.vocab == vocab and latin.sources == ((str(second), 7), (str(second), 7))
    np.testing.assert_array_equal(latin.ids, ids)
    assert latin.text == "déjà vu\n\ndéjà vu"


def test_a_character_split_across_reads_decodes_whole_and_a_bad_byte_is_placed_exactly(tmp_path, tiny_chunks):
    file = write(tmp_path / "a.txt", "abcd€€ef".encode() + b"\xff" + b"gh")  # € is 3 bytes: reads split it
    assert read_corpus(file, errors="replace").text == "abcd€€ef\ufffdgh"
    assert read_corpus(file, errors="ignore").text == "abcd€€efgh"
    with pytest.raises(ChargenError, match="byte 0xff at byte offset 12 "):
        _ = read_corpus(file).text
    with pytest.raises(ChargenError, match=r"a\.txt as utf-8: byte 0xff at byte offset 12 .*--encoding-errors"):
        encoded.encode(read_corpus(file), tmp_path / "cache")


@pytest.mark.parametrize("num_chars, dtype", [(256, np.uint8), (257, np.uint16), (300, np.uint16)])
def test_ids_take_one_byte_up_to_256_characters_and_two_beyond(tmp_path, cache, num_chars, dtype):
    alphabet = [chr(0x100 + i) for i in range(num_chars)]
    text = "".join(np.random.default_rng(0).choice(alphabet, 2_000)) + "".join(alphabet)
    prepared = encoded.encode(read_corpus(write(tmp_path / "wide.txt", text)))
    assert prepared.ids.dtype == dtype and len(prepared.vocab) == num_chars
    np.testing.assert_array_equal(prepared.ids, reference_ids(text)[1])
    assert prepared.path.stat().st_size == len(text) * np.dtype(dtype).itemsize


def test_the_byte_road_and_the_code_point_road_agree():
    text = "".join(np.random.default_rng(1).choice(list("aZ é\n\u00ff"), 5_000))
    vocab = Vocabulary.from_text(text + "€")
    through_bytes = vocab.encode(text, np.uint8)
    through_points = vocab.encode(text + "€")[:-1]  # a character above U+00FF sends the chunk the other way
    np.testing.assert_array_equal(through_bytes, through_points)
    np.testing.assert_array_equal(through_bytes, [vocab.chars.index(char) for char in text])
    with pytest.raises(ChargenError, match=r"2 character\(s\) are not in the model's vocabulary: 'q'"):
        vocab.encode("aqZq", np.uint8)


@pytest.mark.parametrize("content", ["", " \n\t\n"])
def test_a_blank_corpus_is_refused_when_encoded(tmp_path, cache, content):
    with pytest.raises(ChargenError, match="the corpus is empty: .*blank.txt"):
        encoded.encode(read_corpus(write(tmp_path / "blank.txt", content)))


# The cache


def test_a_second_encoding_reuses_the_entry_without_encoding(tmp_path, cache, monkeypatch):
    file = write_corpus(tmp_path / "words.txt")
    first = encoded.encode(read_corpus(file))
    written = first.path.stat().st_mtime_ns

    def never(*args):
        raise AssertionError("encoded again")

    monkeypatch.setattr(encoded, "_encode_into", never)
    again = encoded.encode(read_corpus(file))
    assert again.reused and again.path == first.path and again.path.stat().st_mtime_ns == written
    np.testing.assert_array_equal(again.ids, first.ids)
    assert again.vocab == first.vocab and again.sources == first.sources
    renamed = encoded.encode(read_corpus(file.rename(tmp_path / "same-bytes.txt")))  # same text, another path
    assert renamed.reused and renamed.sources == ((str(tmp_path / "same-bytes.txt"), first.num_chars),)


def test_a_changed_corpus_never_reuses_the_stale_entry(tmp_path, cache):
    file = write(tmp_path / "a.txt", "abcabcabc")
    before = encoded.encode(read_corpus(file))
    stat = file.stat()
    write(file, "abcabdabc")  # the same size, one byte changed, and the old times put back
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = encoded.encode(read_corpus(file))
    assert not after.reused and after.path != before.path
    assert after.text == "abcabdabc" and before.text == "abcabcabc"


def test_what_decides_the_text_decides_the_key(tmp_path, cache):
    joined = write(tmp_path / "joined.txt", "abcd")
    left, right = write(tmp_path / "l.txt", "ab"), write(tmp_path / "r.txt", "cd")
    keys = {
        encoded.cache_key(read_corpus(joined)),
        encoded.cache_key(read_corpus([left, right])),  # the same bytes, a separator between them
        encoded.cache_key(read_corpus(joined, encoding="latin-1")),
        encoded.cache_key(read_corpus(joined, errors="replace")),
    }
    assert len(keys) == 4
    assert encoded.cache_key(read_corpus(joined, encoding="UTF8")) == encoded.cache_key(read_corpus(joined))


def test_a_half_written_or_damaged_entry_is_never_used(tmp_path, cache):
    file = write_corpus(tmp_path / "words.txt")
    prepared = encoded.encode(read_corpus(file))
    record_path = prepared.path.with_suffix(".json")
    record_path.unlink()  # killed between the ids and the record
    again = encoded.encode(read_corpus(file))
    assert not again.reused and record_path.exists()
    with open(prepared.path, "r+b") as ids:
        ids.truncate(prepared.num_chars - 1)
    third = encoded.encode(read_corpus(file))
    assert not third.reused and third.path.stat().st_size == prepared.num_chars
    record = json.loads(record_path.read_text(encoding="utf-8"))
    record_path.write_text(json.dumps({**record, "format": encoded.FORMAT_VERSION + 1}), encoding="utf-8")
    assert not encoded.encode(read_corpus(file)).reused
    np.testing.assert_array_equal(encoded.encode(read_corpus(file)).ids, prepared.ids)
    assert not [path for path in cache.iterdir() if path.name.startswith(".tmp-")]


@pytest.mark.parametrize("edited", ["cbacbacba", "abcabdabc"])  # the same characters, or a new one
def test_a_corpus_changed_while_being_encoded_publishes_nothing(tmp_path, cache, monkeypatch, edited):
    file = write(tmp_path / "a.txt", "abcabcabc")
    vocabulary_pass = encoded._vocabulary_pass

    def then_edit(*args):
        found = vocabulary_pass(*args)
        write(file, edited)  # between the vocabulary pass and the ids pass
        return found

    monkeypatch.setattr(encoded, "_vocabulary_pass", then_edit)
    with pytest.raises(ChargenError, match="the corpus changed while it was being encoded"):
        encoded.encode(read_corpus(file))
    assert list(cache.iterdir()) == []


def test_ids_in_another_vocabulary_are_translated_or_refused(tmp_path, cache):
    prepared = encoded.encode(read_corpus(write(tmp_path / "a.txt", "hello world")))
    wider = Vocabulary(sorted(set("hello world") | set("ABC!")))
    np.testing.assert_array_equal(prepared.ids_for(wider), wider.encode("hello world"))
    assert prepared.ids_for(prepared.vocab) is prepared.ids
    narrower = Vocabulary(sorted(set("helo wr")))
    with pytest.raises(ChargenError, match=r"1 distinct character\(s\) are not in the model's vocabulary: 'd'"):
        prepared.ids_for(narrower)
    np.testing.assert_array_equal(prepared.ids_for(narrower, drop_missing=True), narrower.encode("hello worl"))


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(encoded.CACHE_VARIABLE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert encoded.cache_folder() == tmp_path / "xdg" / "chargen" / "encoded"
    monkeypatch.setenv(encoded.CACHE_VARIABLE, str(tmp_path / "mine"))
    assert encoded.cache_folder() == tmp_path / "mine"


# The command line


def test_prepare_then_train_twice_encodes_once_and_eval_scores_from_the_map(tmp_path, cache):
    file = write_corpus(tmp_path / "words.txt")
    prepared = run_cli("prepare", file)
    assert prepared.exit_code == 0, prepared.output
    assert prepared.output.startswith("encoded ") and " into " + str(cache) in prepared.output
    (ids_file,) = cache.glob("*.ids")
    written = ids_file.stat().st_mtime_ns
    options = [option for option in TINY if option != "--quiet"]
    for name in ("first", "second"):
        trained = run_cli("train", file, *options, "--checkpoint-dir", tmp_path / "ck", "--run-name", name,
                          "--preview-length", "0")
        assert trained.exit_code == 0, trained.output
        assert trained.stderr.splitlines()[1].startswith(f"using the encoded cache {ids_file} ("), trained.stderr
    assert ids_file.stat().st_mtime_ns == written and len(list(cache.glob("*.ids"))) == 1
    config = json.loads((tmp_path / "ck" / "first" / "config.json").read_text(encoding="utf-8"))
    assert config["corpus"]["characters"] == len(file.read_text(encoding="utf-8"))
    scored = run_cli("eval", tmp_path / "ck" / "first", file, "--json")
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["characters"] == len(file.read_text(encoding="utf-8")) - 1


# The memory bound


def peak_anonymous_memory(tmp_path: Path, corpus_path: Path, name: str) -> tuple[int, str]:
    """Peak RssAnon of `chargen train CORPUS` (tiny model, 3 steps) in a child process, and its output."""
    sys.path.insert(0, str(ROOT))
    try:
        from bench.big_corpus import watch
    finally:
        sys.path.remove(str(ROOT))
    command = [sys.executable, "-m", "chargen", "train", str(corpus_path), *TINY, "--steps", "3",
               "--checkpoint-dir", str(tmp_path / "ck"), "--run-name", name]
    result = watch(command, {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result["exit_code"] == 0, result["output"]
    return result["peak_rss_anon_bytes"], result["output"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssAnon from /proc")
def test_training_on_a_corpus_larger_than_the_memory_budget(tmp_path, cache):
    """100 MB of text, whose int32 ids (400 MB) or even whose text alone would break the budget: TensorFlow's
    own footprint, measured on a 5 KB corpus in the same test, plus 50 MB (measured: the 100 MB corpus adds
    nothing to the peak)."""
    small = write_corpus(tmp_path / "small.txt")
    big = tmp_path / "big.txt"
    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz  \n.,", np.uint8)
    rng = np.random.default_rng(0)
    with open(big, "wb") as file:
        for _ in range(10):
            file.write(alphabet[rng.integers(0, len(alphabet), 10_000_000)].tobytes())
    baseline, _ = peak_anonymous_memory(tmp_path, small, "small")
    peak, output = peak_anonymous_memory(tmp_path, big, "big")
    margin = 50e6  # below the text's 100 MB, let alone its ids' 400 MB as int32
    assert 100e6 < baseline and peak < baseline + margin, (baseline, peak)
    assert "on 90,000,000 characters" in output
    assert 100_000_000 in [ids.stat().st_size for ids in cache.glob("*.ids")]  # one byte a character
