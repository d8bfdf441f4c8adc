"""The benchmarks reach into chargen's trainer and generation engine, so a change there can break
`make bench` without failing any other test. These run the bench's own functions at tiny sizes, with the
repository root importable (where `bench` lives), and check what they report.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

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
        import bench.run
        import bench.ten_minutes
        import bench.training_speed

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


# Rows per precision (--precisions) ---------------------------------------------------------------------

TINY_TRAINING = {"layers": 1, "units": 8, "embedding": 4, "batch": 2, "window": 3, "rounds": 1, "warmup": 0}


def test_precisions_option_always_runs_float32_first(bench):
    assert bench.run.precision_list("bfloat16,float32,bfloat16") == ["float32", "bfloat16"]
    assert bench.run.precision_list("float32") == ["float32"]
    with pytest.raises(Exception, match="unknown precision int8"):
        bench.run.precision_list("float32,int8")


def test_each_lower_precision_adds_chargen_and_keras_steps_under_its_policy(bench):
    names = list(bench.training_speed.variant_builders("lstm", TINY_TRAINING, ["float32", "bfloat16"]))
    assert names[-4:] == ["keras, bfloat16", "keras, XLA, bfloat16", "chargen bptt, bfloat16",
                          "chargen teacher-forcing, bfloat16"]
    assert len(list(bench.training_speed.variant_builders("lstm", TINY_TRAINING))) == len(names) - 4


def test_training_rows_compare_within_a_precision_and_against_its_peak(bench):
    """Ratios from given timings: against Keras under the same precision, against the step's float32 self, and
    the share of the precision's measured matrix-product peak."""
    def timed(precision, *seconds):
        return {"precision": precision, "parameters": 1, "compile_seconds": 0.0, "times": list(seconds)}

    variants = {"keras": timed("float32", 2.0), "keras, XLA": timed("float32", 3.0),
                "chargen bptt": timed("float32", 1.0), "keras, bfloat16": timed("bfloat16", 4.0, 4.0, 9.0),
                "keras, XLA, bfloat16": timed("bfloat16", 5.0), "chargen bptt, bfloat16": timed("bfloat16", 2.0)}
    rows = {row["variant"]: row for row in bench.training_speed.rows_from_times(
        "lstm", variants, TINY_TRAINING, {"float32": 100.0, "bfloat16": 50.0})}
    lower = rows["chargen bptt, bfloat16"]
    assert lower["ratio_to_keras"] == lower["ratio_to_faster_keras"] == 2.0  # Keras bfloat16: median 4 s
    assert lower["ratio_to_float32"] == 0.5
    assert rows["chargen bptt"]["ratio_to_keras"] == 2.0 and rows["chargen bptt"]["ratio_to_float32"] == 1.0
    # A 1 x 8 LSTM on embedding 4 with 65 characters: (4 + 8) x 4 x 8 kernel entries and 8 x 65 output ones,
    # 904 in all, each worth 6 operations per character, 2 x 3 characters a step.
    flops = 6 * 2 * 3 * 904
    assert lower["peak_fraction"] == pytest.approx(flops / 2.0 / 1e9 / 50.0)
    assert rows["keras"]["peak_fraction"] == pytest.approx(flops / 2.0 / 1e9 / 100.0)


def test_keras_float16_step_scales_its_loss_and_matches_chargens_model(bench):
    """Keras's float16 step (with `LossScaleOptimizer`, as chargen's) runs, and the model holds chargen's
    parameter count. Run once eagerly: compiling it would cost seconds and test TensorFlow, not the bench."""
    step, parameters = bench.training_speed.keras_step("lstm", TINY_TRAINING, precision="float16")
    ids = tf.constant(np.arange(6).reshape(2, 3), tf.int32)
    loss = step.python_function(ids, ids)
    assert loss.dtype == tf.float32 and np.isfinite(float(loss))
    chargen_model = CharModel(bench.training_speed.VOCAB_SIZE, cell="lstm", num_layers=1, units=8, embedding_dim=4,
                              dtype="mixed_float16")
    chargen_model.build()
    assert parameters == chargen_model.count_params()


def test_matrix_product_peak_is_timed_in_each_precision(bench):
    for precision in ("float32", "bfloat16"):
        peak = bench.training_speed.matmul_peak(precision, (32, 16, 8), repeats=2)
        assert peak["precision"] == precision and peak["gflops"] > 0 and peak["seconds"]["repeats"] == 2


def test_generation_rows_per_precision_are_measured_against_the_float32_ceiling(bench):
    speed = bench.generation_speed
    model = CharModel(11, cell="lstm", num_layers=1, units=8, embedding_dim=4)
    model.build()
    numpy_stepper = NumpyStepper(model)
    ceiling = {"64": speed.measure_product_ceiling(numpy_stepper, 64, steps=3, repeats=1)}
    numpy_step = {"64": speed.measure_stepper(numpy_stepper, 64, steps=3, repeats=1)}
    size = {"function_steps_64": 3, "repeats": 1}  # one batch: each engine traces its step once
    result = speed.measure_precision_steps(model, ["float32", "bfloat16"], ceiling, numpy_step, size, batches=(64,))
    assert list(result) == ["float32", "bfloat16"]  # the TensorFlow engine in float32, the reference
    for precision, figures in result.items():
        for batch, figure in figures.items():
            assert figure["ratio_to_float32_ceiling"] == pytest.approx(
                figure["chars_per_second"] / ceiling[batch]["chars_per_second"])
            assert np.isfinite(figure["ratio_to_numpy_step"]) and figure["ratio_to_numpy_step"] > 0
            assert figure["target"] == (1.5 if precision == "bfloat16" else None)  # issue 9's, at batch 64
