"""The benchmarks reach into chargen's trainer and generation engine, so a change there can break
`make bench` without failing any other test. These run the bench's own functions at tiny sizes, with the
repository root importable (where `bench` lives), and check what they report.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from chargen.generation import NumpyStepper
from chargen.model import CharModel

from helpers import write_corpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    """The `bench` package, imported from the repository root."""
    sys.path.insert(0, str(ROOT))
    try:
        import bench.generation_speed
        import bench.quality
        import bench.ten_minutes

        yield bench
    finally:
        sys.path.remove(str(ROOT))


def test_product_ceiling_times_every_matrix_of_the_step(bench):
    """The ceiling must time exactly the products the stepper makes: if its internals change, the bench
    would otherwise quietly report the ceiling as unavailable."""
    result = {}
    for cell in ("rnn", "gru", "lstm"):
        model = CharModel(11, cell=cell, num_layers=2, units=8, embedding_dim=4)
        model.build()
        result[cell] = bench.generation_speed.measure_product_ceiling(NumpyStepper(model), batch=3, steps=5,
                                                                      repeats=2)
    gates = {"rnn": 1, "gru": 3, "lstm": 4}
    for cell, figure in result.items():
        assert "unavailable" not in figure, cell
        rows = gates[cell] * 8
        if cell == "gru":  # input and recurrent products stay apart (the reset gate sits between them)
            expected = [[rows, 8], [rows, 9], [rows, 8], [11, 8]]
        else:  # one product per deeper layer: [x; 1; h]
            expected = [[rows, 8], [rows, 17], [11, 8]]
        assert figure["shapes"] == expected, cell
        assert figure["chars_per_second"] > 0


def test_quality_section_trains_both_modes_and_times_the_evaluations_apart(bench):
    corpus = ROOT / "corpora" / "markov-order2.txt"
    size = {**bench.quality.sizes(True), "layers": 1, "units": 16, "embedding": 8, "window": 20, "steps": 6}
    result = bench.quality.run(True, corpus_path=corpus, log=lambda *_: None, size=size, xla=False)
    assert [row["mode"] for row in result["rows"]] == ["bptt", "teacher-forcing"]
    for row in result["rows"]:
        assert math.isfinite(row["val_bpc"]) and row["val_bpc"] < result["uniform_bpc"]
        assert row["evaluation_seconds"] > 0 and row["training_seconds"] > 0
        assert [step for step, _ in row["curve"]][-1] == row["steps"]


@pytest.mark.slow
def test_ten_minute_section_trains_chargen_and_keras_and_scores_both_the_same_way(bench, tmp_path):
    corpus = tmp_path / "words.txt"
    write_corpus(corpus, words=4000)
    tiny_keras = {**bench.ten_minutes.KERAS, "units": 8, "embedding": 4, "batch": 8}
    tiny_chargen = ("--units", "8", "--embedding-dim", "4", "--seq-len", "50", "--no-xla")
    result = bench.ten_minutes.run(True, corpus_path=corpus, log=lambda *_: None, seconds=1, keras_sizes=tiny_keras,
                                   chargen_options=tiny_chargen)
    chargen_row, keras_row = result["rows"]
    assert chargen_row["model"].startswith("chargen train: lstm 2 x 8")  # what `chargen train` was given
    assert result["scoring"] == {"window": 50, "streams": 16}  # scored as `chargen eval` scores that run
    uniform = math.log2(len(set(corpus.read_text(encoding="utf-8"))))
    for row in result["rows"]:
        assert row["steps"] >= 1 and 0 < row["val_bpc"] < uniform + 1
    assert result["lead_bpc"] == pytest.approx(keras_row["val_bpc"] - chargen_row["val_bpc"])
