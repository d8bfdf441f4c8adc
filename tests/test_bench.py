"""The benchmarks reach into chargen's trainer and generation engine, so a change there can break
`make bench` without failing any other test. These run the bench's own functions at tiny sizes, in a
child process from the repository root (where `bench` is importable), and check what they report.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_in_bench(code: str) -> dict:
    """Run `code` (which prints one JSON object) with the bench package importable; return the object."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_product_ceiling_times_every_matrix_of_the_step():
    """The ceiling must time exactly the products the stepper makes: if its internals change, the bench
    would otherwise quietly report the ceiling as unavailable."""
    result = run_in_bench("""
        import json
        from bench.common import quiet_tensorflow
        quiet_tensorflow()
        from chargen.generation import NumpyStepper
        from chargen.model import CharModel
        from bench.generation_speed import measure_product_ceiling
        figures = {}
        for cell in ("rnn", "gru", "lstm"):
            model = CharModel(11, cell=cell, num_layers=2, units=8, embedding_dim=4)
            model.build()
            figures[cell] = measure_product_ceiling(NumpyStepper(model), batch=3, steps=5, repeats=2)
        print(json.dumps(figures))
    """)
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


@pytest.mark.slow
def test_quality_section_trains_both_modes_and_times_the_evaluations_apart():
    corpus = ROOT / "corpora" / "markov-order2.txt"
    result = run_in_bench(f"""
        import json
        from pathlib import Path
        from bench.common import quiet_tensorflow
        quiet_tensorflow()
        from bench import quality
        size = {{**quality.sizes(True), "layers": 1, "units": 16, "embedding": 8, "window": 20, "steps": 6}}
        result = quality.run(True, corpus_path=Path({str(corpus)!r}), log=lambda *_: None, size=size)
        print(json.dumps(result, default=float))
    """)
    assert [row["mode"] for row in result["rows"]] == ["bptt", "teacher-forcing"]
    for row in result["rows"]:
        assert math.isfinite(row["val_bpc"]) and row["val_bpc"] < result["uniform_bpc"]
        assert row["evaluation_seconds"] > 0 and row["training_seconds"] > 0
        assert [step for step, _ in row["curve"]][-1] == row["steps"]
