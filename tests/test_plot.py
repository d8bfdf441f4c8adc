"""`chargen plot`: labels by the differing options, a valid PNG of the requested size, one-line errors.

Most runs here are written with `Run.create` and `append_metrics` (what training writes), so the picture's
content is known; one test plots the real trained run in a process that must not import TensorFlow.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from chargen.checkpoints import Run
from chargen.config import TrainingConfig
from chargen.plotting import curves, difference_labels
from chargen.vocab import Vocabulary

from helpers import assert_user_error, run_cli

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402  (pillow comes with matplotlib)

BLUE, ORANGE = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)  # matplotlib's first two colours, C0 and C1


def config_json(corpus: str = "words.txt", **options) -> dict:
    return {"training": TrainingConfig(**options).to_dict(), "corpus": {"sources": [[corpus, corpus]]}}


def make_run(folder: Path, name: str, evaluations: int = 4, **options) -> Run:
    """A run folder with `evaluations` metrics records, bits per character falling from 4 by 0.5 a time."""
    config = config_json(**options)
    run = Run.create(folder / name, config, Vocabulary.from_text("ab\n"))
    for index in range(1, evaluations + 1):
        run.append_metrics({"step": 100 * index, "loss": 2.0, "bpc": 4.0 - 0.5 * index, "learning_rate": 0.005,
                            "val_loss": 2.1, "val_bpc": 4.1 - 0.5 * index, "chars_seen": 800 * index,
                            "elapsed_seconds": 7.5 * index})
    return run


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's own header (signature, then the IHDR chunk), read without matplotlib."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def count_near(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 12) -> int:
    return sum(1 for pixel in image.convert("RGB").get_flattened_data()
               if all(abs(a - b) <= tolerance for a, b in zip(pixel, colour)))


# Labels ------------------------------------------------------------------------------------------

def test_runs_are_labelled_by_the_options_in_which_they_differ():
    labels = difference_labels([("a", config_json(cell="gru")), ("b", config_json(cell="lstm"))])
    assert labels == ["cell=gru", "cell=lstm"]


def test_several_differences_are_listed_by_their_flags_in_option_order():
    labels = difference_labels([("a", config_json(cell="gru", num_layers=1, reset_after=True)),
                                ("b", config_json(cell="lstm", num_layers=2, steps=None))])
    assert labels == ["cell=gru, reset-after=on, layers=1", "cell=lstm, reset-after=off, layers=2"]


def test_a_different_corpus_is_a_difference():
    labels = difference_labels([("a", config_json("one.txt")), ("b", config_json("two.txt"))])
    assert labels == ["corpus=one.txt", "corpus=two.txt"]


def test_runs_with_nothing_to_tell_apart_are_labelled_by_name():
    assert difference_labels([("only", config_json())]) == ["only"]
    assert difference_labels([("a", config_json()), ("b", config_json())]) == ["a", "b"]
    labels = difference_labels([("a", config_json(cell="gru")), ("b", config_json(cell="gru")),
                                ("c", config_json(cell="rnn"))])
    assert labels == ["cell=gru (a)", "cell=gru (b)", "cell=rnn"]


def test_a_run_saved_before_an_option_existed_compares_by_the_value_it_implies():
    old = config_json(lr_schedule="constant")
    del old["training"]["lr_schedule"]  # saved before --lr-schedule: it trained at a constant rate
    assert difference_labels([("old", old), ("new", config_json(lr_schedule="constant"))]) == ["old", "new"]
    assert difference_labels([("old", old), ("new", config_json())]) == ["lr-schedule=constant",
                                                                           "lr-schedule=cosine"]


# The picture -------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", ["step", "time"])
def test_plot_writes_a_png_of_the_requested_size_with_each_run_in_its_colour(tmp_path, axis):
    make_run(tmp_path, "gru-run", cell="gru")
    make_run(tmp_path, "lstm-run", cell="lstm")
    output = tmp_path / "out" / "bpc.png"
    output.parent.mkdir()
    result = run_cli("plot", "gru-run", "lstm-run", "--checkpoint-dir", tmp_path, "--output", output,
                     "--x", axis, "--width", 640, "--height", 300)
    assert result.exit_code == 0, result.output
    assert f"wrote {output}: 2 run(s), 640x300 pixels" in result.output
    assert png_size(output) == (640, 300)
    with Image.open(output) as image:
        assert image.size == (640, 300)
        assert count_near(image, BLUE) > 30 and count_near(image, ORANGE) > 30  # both runs drawn
    assert [p.name for p in output.parent.iterdir()] == ["bpc.png"]  # no temporary file left


def test_a_run_without_validation_is_drawn_in_the_training_panel(tmp_path):
    run = Run.create(tmp_path / "noval", config_json(val_fraction=0.0), Vocabulary.from_text("ab"))
    for step in (10, 20):
        run.append_metrics({"step": step, "bpc": 3.0 / step, "val_bpc": None, "elapsed_seconds": step})
    result = run_cli("plot", run.path, "--output", tmp_path / "p.png", "--width", 400, "--height", 300)
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "p.png") as image:
        assert count_near(image, BLUE) > 20


def test_an_evaluation_logged_twice_counts_once_with_its_newest_record(tmp_path):
    run = make_run(tmp_path, "r", evaluations=2)
    run.append_metrics({"step": 200, "bpc": 1.0, "val_bpc": 1.5, "elapsed_seconds": 16.0})  # the resumed run's
    assert [(r["step"], r["bpc"]) for r in curves(run)] == [(100, 3.5), (200, 1.0)]


def test_plot_of_the_trained_run_imports_no_tensorflow(trained, tmp_path):
    output = tmp_path / "trained.png"
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from chargen.cli import cli\n"
        "result = CliRunner().invoke(cli, sys.argv[1:])\n"
        "assert result.exit_code == 0, result.output\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')]\n"
    )
    completed = subprocess.run([sys.executable, "-c", script, "plot", str(trained["run"]), "--output", str(output)],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert png_size(output) == (1200, 450)
    records = [json.loads(line) for line in (trained["run"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curves(Run.open(trained["run"]))] == [r["step"] for r in records]


# Mistakes ----------------------------------------------------------------------------------------

def test_an_unknown_run_is_one_line(tmp_path):
    make_run(tmp_path, "real")
    result = run_cli("plot", "real", "ghost", "--checkpoint-dir", tmp_path, "--output", tmp_path / "p.png")
    assert_user_error(result, "no run named 'ghost'")
    assert not (tmp_path / "p.png").exists()


def test_a_run_with_no_evaluation_yet_is_one_line(tmp_path):
    make_run(tmp_path, "empty", evaluations=0)
    result = run_cli("plot", "empty", "--checkpoint-dir", tmp_path, "--output", tmp_path / "p.png")
    assert_user_error(result, "run empty has no evaluation yet")


def test_a_size_out_of_range_is_one_line(tmp_path):
    make_run(tmp_path, "r")
    result = run_cli("plot", "r", "--checkpoint-dir", tmp_path, "--width", 10, "--output", tmp_path / "p.png")
    assert_user_error(result, "--width is in pixels", "Received: --width 10")


def test_an_unwritable_output_is_one_line(tmp_path):
    make_run(tmp_path, "r")
    result = run_cli("plot", "r", "--checkpoint-dir", tmp_path, "--output", tmp_path / "missing" / "p.png")
    assert_user_error(result, "cannot write", "--output")


def test_without_matplotlib_the_error_names_the_extra(tmp_path, monkeypatch):
    make_run(tmp_path, "r")
    for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes `import` fail
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = run_cli("plot", "r", "--checkpoint-dir", tmp_path, "--output", tmp_path / "p.png")
    assert_user_error(result, "needs matplotlib", "pip install 'chargen[plot]'")
    assert not (tmp_path / "p.png").exists()

