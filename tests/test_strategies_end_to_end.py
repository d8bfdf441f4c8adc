"""Every installed strategy, built-in and plugin, through `chargen sample` on one trained run."""

import importlib.metadata

import pytest
from click.testing import CliRunner
from test_registry import BUILTINS

from chargen.cli import cli
from chargen.sampling import TokenSampler
from chargen.sampling.registry import registered

TEXT = "the cat sat on the mat. the dog sat on the log. " * 120


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("strategies")
    corpus = folder / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    result = CliRunner().invoke(cli, [
        "train", str(corpus), "--layers", "1", "--units", "32", "--embedding-dim", "8", "--seq-len", "32",
        "--batch-size", "16", "--steps", "150", "--eval-every", "0", "--learning-rate", "0.01", "--quiet", "--no-xla",
        "--checkpoint-dir", str(folder / "runs"), "--run-name", "tiny",
    ])
    assert result.exit_code == 0, result.output
    return folder / "runs" / "tiny"


def sample(run, *arguments):
    return CliRunner().invoke(cli, ["sample", str(run), "--no-stream", *arguments])


@pytest.mark.slow
@pytest.mark.parametrize("strategy", BUILTINS)
def test_each_built_in_strategy_generates_text_the_model_learned(trained_run, strategy):
    arguments = ["--strategy", strategy, "--prime", "the ", "--length", "60", "--seed", "3", "--temperature", "0.5"]
    result = sample(trained_run, *arguments)
    assert result.exit_code == 0, result.output
    text = result.stdout.rstrip("\n")  # stderr holds the `--precision auto` line
    assert text.startswith("the ") and len(text) == 64
    assert set(text) <= set(TEXT)
    # 150 steps on a two-sentence corpus is enough for the common words to come out.
    assert any(word in text for word in ("cat", "dog", "sat", "the")), text
    assert sample(trained_run, *arguments).stdout == result.stdout


@pytest.mark.slow
def test_the_mirostat_plugin_runs_through_the_cli(trained_run):
    try:
        importlib.metadata.distribution("chargen-mirostat")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the example plugin is not installed (make test installs it)")
    listing = CliRunner().invoke(cli, ["samplers"])
    assert "mirostat" in listing.output and "chargen-mirostat" in listing.output
    result = sample(
        trained_run, "--strategy", "mirostat", "-o", "tau=1.5", "--length", "80", "--seed", "1", "--num-samples", "3"
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("--- sample") == 3
    bad = sample(trained_run, "--strategy", "mirostat", "-o", "tau=abc")
    assert bad.exit_code != 0 and "tau" in bad.output and "Traceback" not in bad.output


@pytest.mark.slow
def test_beam_candidates_are_listed_with_their_log_probabilities(trained_run):
    result = sample(
        trained_run, "--strategy", "beam", "-o", "width=3", "--candidates", "--length", "30", "--prime", "the "
    )
    assert result.exit_code == 0, result.output
    headers = [line for line in result.output.splitlines() if line.startswith("--- sample 1, candidate")]
    scores = [float(line.split("log-probability ")[1].split()[0]) for line in headers]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)
    refused = sample(trained_run, "--strategy", "random", "--candidates")
    assert refused.exit_code == 1 and "keeps no candidates" in refused.output and "Traceback" not in refused.output


class Rewriter(TokenSampler):
    """Reads the ids so far, as a strategy may, then writes into them, as none may."""

    name = "rewriter"
    description = "repeats the last character, and tries to rewrite it"
    stochastic = False

    def sample(self, logits, context):
        last = context.ids[:, -1].copy()
        if context.step == 3:
            context.ids[:, -1] = 0
        return last


@pytest.mark.slow
def test_a_strategy_that_writes_into_the_hosts_ids_is_stopped_and_named(trained_run):
    with registered({"rewriter": Rewriter}, distribution="chargen-rewriter", version="0.2"):
        result = sample(trained_run, "--strategy", "rewriter", "--prime", "the ", "--length", "10")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "strategy 'rewriter' (from chargen-rewriter 0.2) failed at step 3: ValueError: " in result.output
    assert "(context.ids and prime_ids belong to the host; change a copy)" in result.output
