"""`chargen score`: per-character surprisal against an independent reference and `chargen eval`, and its page."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess

import numpy as np
import pytest

from chargen import scoring
from chargen.checkpoints import Run
from chargen.errors import ChargenError
from chargen.generation import NumpyStepper
from chargen.model import CharModel
from chargen.training import LN2, Evaluator
from chargen.vocab import Vocabulary

from helpers import ColouredPage, assert_user_error, run_cli


def random_model(vocab_size: int, cell: str = "gru", seed: int = 0) -> CharModel:
    """An untrained model: its predictions are arbitrary but fixed, which is all scoring needs."""
    import keras

    keras.utils.set_random_seed(seed)
    model = CharModel(vocab_size, cell=cell, num_layers=2, units=12, embedding_dim=6)
    model.build()
    return model


def numpy_surprisal(model, vocab: Vocabulary, text: str) -> np.ndarray:
    """Bits of each character after a newline prime, one character at a time with the numpy engine."""
    stepper = NumpyStepper(model)
    state = stepper.initial_state(1)
    previous, bits = vocab.encode("\n")[0], []
    for target in vocab.encode(text):
        logits, state = stepper.step(np.array([previous]), state)
        logits = logits[0].astype(np.float64)
        log_probabilities = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
        bits.append(-log_probabilities[target] / math.log(2))
        previous = target
    return np.array(bits)


# The numbers ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_surprisal_equals_the_numpy_engine_one_character_at_a_time(cell):
    vocab = Vocabulary.from_text("abcdefgh \n")
    text = "".join(np.random.default_rng(1).choice(list("abcdefgh \n"), size=150))
    model = random_model(len(vocab), cell)
    score = scoring.score_text(model, vocab, text, window=32)  # the state crosses four window boundaries
    assert score.first_scored and score.characters == len(text)
    np.testing.assert_allclose(score.bits, numpy_surprisal(model, vocab, text), rtol=1e-5, atol=1e-5)
    assert score.bits_per_char == pytest.approx(score.bits.mean())
    assert score.perplexity == pytest.approx(2 ** score.bits.mean())


def test_bits_per_character_equals_eval_scoring_the_primed_text_as_one_stream(trained):
    run = Run.open(trained["run"])
    model, vocab = run.load_model("best"), run.vocabulary()
    text = trained["corpus"].read_text(encoding="utf-8")[:700]
    score = scoring.score_text(model, vocab, text, window=100)
    total, count = Evaluator(model, seq_len=16, batch_size=1).score(vocab.encode("\n" + text))
    assert count == score.characters == len(text)
    assert score.bits_per_char == pytest.approx(total / count / LN2, rel=1e-6)
    # eval's own figure cuts the text into --batch-size streams, each from a zero state: close, not equal
    streams, _ = Evaluator(model, seq_len=16, batch_size=8).score(vocab.encode("\n" + text))
    assert streams / count / LN2 == pytest.approx(score.bits_per_char, abs=0.05)


def test_without_a_newline_the_first_character_is_context_and_unscored():
    vocab = Vocabulary.from_text("xyz")
    model = random_model(len(vocab))
    score = scoring.score_text(model, vocab, "xyzzyx" * 10)
    assert not score.first_scored and math.isnan(score.bits[0]) and score.characters == 59
    total, count = Evaluator(model, seq_len=7, batch_size=1).score(vocab.encode("xyzzyx" * 10))
    assert score.bits_per_char == pytest.approx(total / count / LN2, rel=1e-6)
    assert score.to_dict()["surprisal_bits"][0] is None
    with pytest.raises(ChargenError, match="at least one character after the first"):
        scoring.score_text(model, vocab, "x")


# The page ------------------------------------------------------------------------------------------------

def legend_colour(swatches: dict, bits: float) -> np.ndarray:
    """The colour the legend implies: linear between its swatches, the last one beyond them."""
    points = sorted(swatches)
    return np.array([np.interp(bits, points, [swatches[p][channel] for p in points]) for channel in range(3)])


def check_page(page: ColouredPage, text: str, bits: list) -> None:
    assert "".join(c["char"] for c in page.characters) == text  # every character, newlines kept, unescaped
    assert len(page.characters) == len(text)
    assert len(page.swatches) >= 5
    for character, value in zip(page.characters, bits):
        if value is None:
            assert "not scored" in character["title"]
            continue
        assert np.abs(np.array(character["rgb"]) - legend_colour(page.swatches, value)).max() <= 1, (character, value)
        shown = float(re.search(r" ([0-9.]+) bits$", character["title"]).group(1))
        assert shown == pytest.approx(value, abs=0.005)


def test_the_page_colours_each_character_by_its_surprisal(trained, tmp_path):
    text_file = tmp_path / "passage.txt"
    text_file.write_text(trained["corpus"].read_text(encoding="utf-8")[:400], encoding="utf-8")
    page_path = tmp_path / "page.html"
    result = run_cli("score", trained["run"], text_file, "--html", page_path, "--json")
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.stdout)
    text = text_file.read_text(encoding="utf-8")
    assert numbers["text"] == text and numbers["first_scored"] and numbers["characters"] == len(text)
    assert numbers["bits_per_char"] == pytest.approx(np.mean(numbers["surprisal_bits"]))
    page_text = page_path.read_text(encoding="utf-8")
    check_page(ColouredPage(page_text), text, numbers["surprisal_bits"])
    assert f"{numbers['bits_per_char']:.4f} bits per character" in page_text


def test_the_page_escapes_markup_and_covers_the_whole_scale():
    tricky = "<a href='x'>&amp;\"\n</a>"
    vocab = Vocabulary.from_text(tricky)
    model = random_model(len(vocab))
    score = scoring.score_text(model, vocab, tricky)
    spread = scoring.TextScore(tricky, np.linspace(0, 14, len(tricky)), True)  # every stop and beyond the last
    for shown in (score, spread):
        page = ColouredPage(scoring.to_html(shown, "a <title> & more"))
        check_page(page, tricky, shown.bits.tolist())
    assert "<title>a &lt;title&gt; &amp; more</title>" in scoring.to_html(score, "a <title> & more")


# The command -----------------------------------------------------------------------------------------------

def test_the_summary_names_the_figure_and_the_most_surprising_characters(trained, tmp_path):
    text_file = tmp_path / "passage.txt"
    text_file.write_text("amber birch cedar\ndelta ember\n", encoding="utf-8")
    as_json = json.loads(run_cli("score", trained["run"], text_file, "--json", "--checkpoint", "last").stdout)
    result = run_cli("score", trained["run"], text_file, "--checkpoint", "last")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{as_json['bits_per_char']:.4f} bits per character, perplexity "
                               f"{as_json['perplexity']:.3f} over 30 characters (tiny, last model; the first")
    worst = int(np.argmax(as_json["surprisal_bits"]))
    assert lines[1] == "most surprising:"
    assert lines[2].strip().startswith(f"{as_json['surprisal_bits'][worst]:.2f} bits  at {worst}: ")
    assert f"[{repr(as_json['text'][worst])[1:-1]}]" in lines[2]
    assert len(lines) == 7


def test_a_character_outside_the_vocabulary_is_one_line(trained, tmp_path):
    text_file = tmp_path / "passage.txt"
    text_file.write_text("amber BIRCH\n", encoding="utf-8")
    assert_user_error(run_cli("score", trained["run"], text_file), "not in the model's vocabulary", "'BCHIR'")
    assert_user_error(run_cli("score", trained["run"], tmp_path / "absent.txt"), "absent.txt")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium for the screenshot")
def test_chromium_renders_the_page_in_its_colours(tmp_path):
    """A real browser draws the page: the screenshot holds the darkest swatch's colour and the text's white."""
    image = pytest.importorskip("PIL.Image")
    text = "abc\n" * 20
    page = tmp_path / "page.html"
    page.write_text(scoring.to_html(scoring.TextScore(text, np.full(len(text), 12.0), True), "dark"), encoding="utf-8")
    screenshot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={screenshot}",
                    "--window-size=600,400", page.as_uri()], check=True, capture_output=True, timeout=60)
    colours = {rgb for _, rgb in image.open(screenshot).convert("RGB").getcolors(maxcolors=1 << 20)}
    assert scoring.COLOUR_STOPS[-1][1] in colours and (255, 255, 255) in colours
