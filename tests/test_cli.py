"""The command line: instant help, and a user's mistakes reported as one line with no traceback.

The round trip (train, sample, eval, info, resume) is in test_cli_roundtrip.py; run folders and
interrupted training in test_checkpoints.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TINY, assert_user_error, run_cli, write_corpus

# --help and `samplers` answer without TensorFlow ---------------------------------------------------

HELP_COMMANDS = [[], ["train"], ["sample"], ["eval"], ["info"], ["export"], ["samplers"], ["corpus"],
                 ["corpus", "synth"], ["corpus", "fetch"], ["gradients"], ["compare"], ["plot"], ["score"], ["inspect"],
                 ["prepare"]]

_NO_TENSORFLOW = """
import json, sys
from click.testing import CliRunner
from chargen.cli import cli
outputs = []
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, (args, result.exit_code, result.output)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
    assert not loaded, f"{args} imported {loaded[:5]}"
    outputs.append(result.output)
print(json.dumps(outputs))
"""


def _run_without_tensorflow(*commands: list[str]) -> list[str]:
    """Each command's output, run in turn in one fresh process that must never import TensorFlow or Keras."""
    completed = subprocess.run([sys.executable, "-c", _NO_TENSORFLOW, json.dumps(commands)], capture_output=True,
                               text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


def test_help_answers_without_importing_tensorflow():
    outputs = _run_without_tensorflow(*[[*command, "--help"] for command in HELP_COMMANDS])
    for command, output in zip(HELP_COMMANDS, outputs, strict=True):
        assert "Usage:" in output and "Options:" in output, command
    main, train = outputs[0], outputs[1]
    for command in ("train", "sample", "eval", "info", "samplers", "corpus"):
        assert command in main
    for option in ("--cell", "--layers", "--units", "--embedding-dim", "--seq-len", "--batch-size", "--mode",
                   "--stateful", "--steps", "--epochs", "--time-limit", "--learning-rate", "--clip-norm",
                   "--dropout", "--val-fraction", "--eval-every", "--seed", "--run-name", "--checkpoint-dir",
                   "--resume", "--encoding", "--device", "--xla", "--reset-after"):
        assert option in train, option


def test_info_reads_a_run_without_importing_tensorflow(trained):
    [output] = _run_without_tensorflow(["info", str(trained["run"])])
    assert "lstm, 1 layer(s) of 16 units" in output


def test_chargen_checkpoint_dir_replaces_the_default_folder_and_help_names_it(trained):
    result = run_cli("info", "tiny", "--json", env={"CHARGEN_CHECKPOINT_DIR": str(trained["checkpoint_dir"])})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["run"] == str(trained["checkpoint_dir"] / "tiny")
    for command in ("train", "sample", "eval", "info"):
        assert "CHARGEN_CHECKPOINT_DIR" in run_cli(command, "--help").output, command


def test_shell_completion_completes_commands_and_options():
    """Click's completion, as the README tells a user to enable it: the script, then what a TAB offers."""
    chargen = Path(sys.executable).with_name("chargen")
    if not chargen.exists():
        pytest.skip("the chargen entry point is not installed next to this Python")
    script = subprocess.run([chargen], env={**os.environ, "_CHARGEN_COMPLETE": "bash_source"}, capture_output=True,
                            text=True, timeout=60)
    assert "_chargen_completion" in script.stdout
    offered = subprocess.run([chargen], env={**os.environ, "_CHARGEN_COMPLETE": "bash_complete",
                                             "COMP_WORDS": "chargen train --lr", "COMP_CWORD": "2"},
                             capture_output=True, text=True, timeout=60)
    assert "plain,--lr-schedule" in offered.stdout.splitlines()


def test_reset_after_is_refused_for_cells_other_than_the_gru(tmp_path):
    corpus = write_corpus(tmp_path / "words.txt")
    result = run_cli("train", corpus, *TINY, "--cell", "lstm", "--reset-after", "--checkpoint-dir", tmp_path / "ck")
    assert_user_error(result, "reset_after", "gru", "Received: cell='lstm'")
    assert not (tmp_path / "ck").exists()


def test_samplers_lists_the_builtins_without_importing_tensorflow():
    output, listed = _run_without_tensorflow(["samplers"], ["samplers", "--json"])
    for name in ("greedy", "random", "top-k", "top-p", "min-p", "typical", "beam"):
        assert name in output
    listing = json.loads(listed)
    assert {"greedy", "top-k", "beam"} <= {record["name"] for record in listing}


def test_python_dash_m_chargen_help_imports_no_tensorflow():
    completed = subprocess.run([sys.executable, "-X", "importtime", "-m", "chargen", "--help"],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "Usage:" in completed.stdout
    imported = [line for line in completed.stderr.splitlines() if line.startswith("import time:")]
    assert imported, "python -X importtime printed nothing"
    assert not [line for line in imported if "tensorflow" in line or "keras" in line]


# Corpus mistakes ---------------------------------------------------------------------------------

def test_missing_corpus_file(tmp_path):
    result = run_cli("train", tmp_path / "nowhere.txt", *TINY, "--checkpoint-dir", tmp_path / "ck")
    assert_user_error(result, "not found", "nowhere.txt")
    assert not (tmp_path / "ck").exists()


def test_empty_corpus_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n\t\n", encoding="utf-8")
    result = run_cli("train", empty, *TINY, "--checkpoint-dir", tmp_path / "ck")
    assert_user_error(result, "empty", "empty.txt")


def test_undecodable_bytes_name_the_offset_and_suggest_encoding(tmp_path):
    bad = tmp_path / "latin.txt"
    bad.write_bytes(b"plain ascii words " * 20 + b"caf\xe9 " + b"more words " * 20)
    offset = len(b"plain ascii words " * 20) + 3
    result = run_cli("train", bad, *TINY, "--checkpoint-dir", tmp_path / "ck")
    assert_user_error(result, "latin.txt", f"offset {offset}", "--encoding")


def test_undecodable_bytes_train_with_the_right_encoding(tmp_path):
    bad = tmp_path / "latin.txt"
    bad.write_bytes(("café au lait " * 400).encode("latin-1"))
    result = run_cli("train", bad, *TINY, "--encoding", "latin-1", "--checkpoint-dir", tmp_path / "ck", "--run-name",
                     "l1")
    assert result.exit_code == 0, result.output
    assert "é" in json.loads((tmp_path / "ck" / "l1" / "vocab.json").read_text(encoding="utf-8"))["chars"]


def test_corpus_shorter_than_a_window_names_the_minimum(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("abcdefghij" * 3, encoding="utf-8")  # 30 characters; seq_len 16 needs 2 * 17
    result = run_cli("train", short, *TINY, "--checkpoint-dir", tmp_path / "ck")
    assert_user_error(result, "30 characters", "34")
    result = run_cli("train", short, *TINY, "--val-fraction", "0", "--seq-len", "40", "--checkpoint-dir",
                     tmp_path / "ck")
    assert_user_error(result, "41")


def test_bad_hyperparameter_is_one_line(tmp_path):
    corpus = write_corpus(tmp_path / "words.txt")
    result = run_cli("train", corpus, *TINY, "--dropout", "1.5", "--checkpoint-dir", tmp_path / "ck")
    assert_user_error(result, "dropout")
    result = run_cli("train", corpus, *TINY, "--mode", "teacher-forcing", "--stateful", "--checkpoint-dir",
                     tmp_path / "ck")
    assert_user_error(result, "stateful")


@pytest.mark.parametrize(("command", "option", "value"), [
    ("train", "--cell", "transformer"),
    ("train", "--lr-schedule", "wobbly"),
    ("train", "--precision", "int8"),
    ("sample", "--precision", "int8"),
    ("eval", "--precision", "int8"),
])
def test_unknown_option_value_is_refused_by_click(tmp_path, command, option, value):
    corpus = write_corpus(tmp_path / "words.txt")
    arguments = {"train": [corpus], "sample": [], "eval": [tmp_path / "run", corpus]}[command]
    result = run_cli(command, *arguments, option, value)
    assert result.exit_code == 2
    assert value in result.output and option in result.output and "Traceback" not in result.output


def test_device_gpu_without_a_gpu(tmp_path):
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    corpus = write_corpus(tmp_path / "words.txt")
    result = run_cli("train", corpus, *TINY, "--device", "gpu", "--checkpoint-dir", tmp_path / "ck", "--run-name", "g")
    assert_user_error(result, "--device gpu", "no GPU")
    assert not (tmp_path / "ck" / "g").exists()


# Run mistakes --------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["sample"], ["info"], ["eval"]])
def test_unknown_run(tmp_path, command):
    corpus = write_corpus(tmp_path / "words.txt")
    extra = [corpus] if command == ["eval"] else []
    result = run_cli(*command, "no-such-run", *extra, "--checkpoint-dir", tmp_path / "ck")
    assert_user_error(result, "no-such-run")


def test_no_runs_at_all(tmp_path):
    result = run_cli("sample", "--checkpoint-dir", tmp_path / "empty")
    assert_user_error(result, "no runs", "chargen train")


def test_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "ck" / "stray").mkdir(parents=True)
    result = run_cli("info", "stray", "--checkpoint-dir", tmp_path / "ck")
    assert_user_error(result, "not a chargen run")


@pytest.mark.parametrize("temperature", ["0", "-1"])
def test_temperature_must_be_positive(trained, temperature):
    result = run_cli("sample", trained["run"], "--temperature", temperature)
    assert_user_error(result, "--temperature", "greedy")


def test_unknown_strategy_lists_the_installed_ones(trained):
    result = run_cli("sample", trained["run"], "--strategy", "no-such-strategy")
    assert_user_error(result, "no-such-strategy", "greedy", "top-k", "beam")


def test_strategy_option_of_the_wrong_type(trained):
    result = run_cli("sample", trained["run"], "--strategy", "top-k", "-o", "k=abc")
    assert_user_error(result, "k=abc")


def test_unknown_strategy_option_lists_the_options(trained):
    result = run_cli("sample", trained["run"], "--strategy", "top-k", "-o", "width=3")
    assert_user_error(result, "width", "k (int")


def test_strategy_option_without_a_value(trained):
    result = run_cli("sample", trained["run"], "--strategy", "top-k", "-o", "k")
    assert_user_error(result, "NAME=VALUE")


def test_prime_with_an_unseen_character(trained):
    result = run_cli("sample", trained["run"], "--prime", "ZQ€", "--length", "5")
    assert_user_error(result, "€")


@pytest.mark.parametrize("option", [["--length", "0"], ["--num-samples", "0"]])
def test_sample_counts_must_be_positive(trained, option):
    result = run_cli("sample", trained["run"], *option)
    assert_user_error(result, option[0].lstrip("-").replace("-", "_"))


def test_resuming_without_xla_continues_the_same_training(run_copy, tmp_path):
    """--no-xla is a setting of the session, not of the run: a run trained with XLA resumes without it
    (or the other way round) and reaches what it would have reached."""
    other_dir = tmp_path / "other"
    shutil.copytree(run_copy["checkpoint_dir"], other_dir)
    outcomes = []
    for checkpoint_dir, xla in ((run_copy["checkpoint_dir"], "--xla"), (other_dir, "--no-xla")):
        result = run_cli("train", run_copy["corpus"], "--steps", "8", xla, "--no-histograms", "--resume", "--run-name",
                         "tiny", "--checkpoint-dir", checkpoint_dir, "--quiet")
        assert result.exit_code == 0, result.output
        assert ("(no XLA)" in result.stderr) == (xla == "--no-xla")
        outcomes.append(re.search(r"step 8: validation ([0-9.]+)", result.stdout).group(1))
    assert outcomes[0] == outcomes[1]


def test_resume_with_a_changed_architecture(run_copy):
    result = run_cli("train", run_copy["corpus"], *TINY, "--units", "32", "--resume", "--run-name", "tiny",
                     "--checkpoint-dir", run_copy["checkpoint_dir"])
    assert_user_error(result, "--units 32", "16")


def test_resume_with_a_different_corpus(run_copy, tmp_path):
    other = write_corpus(tmp_path / "other.txt", seed=1)
    result = run_cli("train", other, "--steps", "6", "--resume", "--no-xla", "--run-name", "tiny", "--checkpoint-dir",
                     run_copy["checkpoint_dir"])
    assert_user_error(result, "differs", "same files")


def test_new_run_over_an_existing_one_is_refused(run_copy):
    result = run_cli("train", run_copy["corpus"], *TINY, "--run-name", "tiny", "--checkpoint-dir",
                     run_copy["checkpoint_dir"])
    assert_user_error(result, "already exists", "--resume")


def test_resume_of_a_missing_run(tmp_path):
    corpus = write_corpus(tmp_path / "words.txt")
    result = run_cli("train", corpus, "--resume", "--run-name", "ghost", "--checkpoint-dir", tmp_path / "ck")
    assert_user_error(result, "ghost")


@pytest.mark.parametrize("command", ["sample", "eval", "resume"])
def test_corrupted_model_file(run_copy, command):
    for model_file in (run_copy["run"] / "snapshots").glob("*/model.keras"):
        model_file.write_bytes(b"this is not a keras zip file\x00" * 50)
    if command == "sample":
        result = run_cli("sample", run_copy["run"], "--length", "5")
    elif command == "eval":
        result = run_cli("eval", run_copy["run"], run_copy["corpus"])
    else:
        result = run_cli("train", run_copy["corpus"], "--steps", "6", "--resume", "--run-name", "tiny",
                         "--checkpoint-dir", run_copy["checkpoint_dir"])
    assert_user_error(result, "model.keras", "damaged")


def test_corrupted_optimizer_state_on_resume(run_copy):
    for optimizer_file in (run_copy["run"] / "snapshots").glob("*/optimizer.npz"):
        optimizer_file.write_bytes(b"garbage")
    result = run_cli("train", run_copy["corpus"], "--steps", "6", "--resume", "--run-name", "tiny",
                     "--checkpoint-dir", run_copy["checkpoint_dir"])
    assert_user_error(result, "optimiser", "optimizer.npz")


@pytest.mark.parametrize("content", ["{not json", "", "[1, 2]", '{"format_version": 1}',
                                     '{"format_version": 1, "training": 3}'],
                         ids=["syntax", "empty", "list", "no-training", "training-not-object"])
@pytest.mark.parametrize("command", ["sample", "info", "eval"])
def test_damaged_config(run_copy, content, command):
    (run_copy["run"] / "config.json").write_text(content, encoding="utf-8")
    extra = [run_copy["corpus"]] if command == "eval" else []
    result = run_cli(command, run_copy["run"], *extra)
    assert_user_error(result, "config")


def test_config_from_another_format_version(run_copy):
    config_path = run_copy["run"] / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["format_version"] = 99
    config_path.write_text(json.dumps(config), encoding="utf-8")
    result = run_cli("info", run_copy["run"])
    assert_user_error(result, "format 99")


def test_damaged_vocabulary(run_copy):
    (run_copy["run"] / "vocab.json").write_text("{oops", encoding="utf-8")
    result = run_cli("sample", run_copy["run"], "--length", "5")
    assert_user_error(result, "vocab")


def test_damaged_progress_record(run_copy):
    for progress in (run_copy["run"] / "snapshots").glob("*/progress.json"):
        progress.write_text("{", encoding="utf-8")
    result = run_cli("info", run_copy["run"])
    assert_user_error(result, "progress")


# --debug shows the traceback -----------------------------------------------------------------------

def test_debug_lets_the_exception_through(tmp_path):
    from chargen.errors import ChargenError

    result = run_cli("--debug", "train", tmp_path / "nowhere.txt")
    assert result.exit_code != 0
    assert isinstance(result.exception, ChargenError)
    assert "nowhere.txt" in str(result.exception)


def test_debug_prints_a_traceback_in_a_real_process(tmp_path):
    missing = str(tmp_path / "nowhere.txt")
    plain = subprocess.run([sys.executable, "-m", "chargen", "train", missing], capture_output=True, text=True,
                           timeout=120)
    assert plain.returncode != 0
    assert "Traceback" not in plain.stderr
    assert len(plain.stderr.strip().splitlines()) == 1
    debug = subprocess.run([sys.executable, "-m", "chargen", "--debug", "train", missing], capture_output=True,
                           text=True, timeout=120)
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr
    assert "ChargenError" in debug.stderr and "nowhere.txt" in debug.stderr


def test_a_reader_that_closes_the_pipe_early_ends_the_command_quietly(trained):
    """`chargen info | head -1`: no error line, the status a shell gives a program ended by SIGPIPE."""
    process = subprocess.Popen([sys.executable, "-m", "chargen", "info", str(trained["run"])],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # the reader is gone before the first line is written
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 141
    assert stderr == ""


def test_debug_flag_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARGEN_DEBUG", "1")
    result = run_cli("train", tmp_path / "nowhere.txt")
    assert result.exception is not None and not isinstance(result.exception, SystemExit)


# corpus synth ------------------------------------------------------------------------------------

def _floor(output: str) -> float:
    line = next(line for line in output.splitlines() if line.startswith("entropy floor:"))
    return float(line.split(":")[1].split()[0])


def test_corpus_synth_markov(tmp_path):
    out = tmp_path / "markov.txt"
    result = run_cli("corpus", "synth", "markov", "--output", out, "--length", "3000", "--seed", "3",
                     "--order", "2", "--alphabet-size", "5")
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    assert len(text) == 3000
    assert len(set(text)) <= 5
    assert 0 < _floor(result.output) < 2.33  # below log2(5)
    again = tmp_path / "again.txt"
    run_cli("corpus", "synth", "markov", "--output", again, "--length", "3000", "--seed", "3", "--order", "2",
            "--alphabet-size", "5")
    assert again.read_text(encoding="utf-8") == text  # seeded


def test_corpus_synth_recall(tmp_path):
    out = tmp_path / "recall.txt"
    result = run_cli("corpus", "synth", "recall", "--output", out, "--length", "2000", "--seed", "1", "--lag", "4")
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    assert len(text) == 2000 - 2000 % 7  # whole records of key + 4 filler + key + newline
    assert all(record[0] == record[-1] and len(record) == 6 for record in text.splitlines())
    assert _floor(result.output) == pytest.approx((2 + 4 * 1) / 7, abs=1e-4)  # 4 keys, 2 fillers, lag 4
    assert "bits per character" in result.output
    cued = run_cli("corpus", "synth", "recall", "--output", out, "--length", "2000", "--seed", "1", "--lag", "4",
                   "--cue")
    assert all(record[-2:-1] == "=" and len(record) == 7 for record in out.read_text(encoding="utf-8").splitlines())
    assert _floor(cued.output) == pytest.approx((2 + 4 * 1) / 8, abs=1e-4) and "a cue before the recall" in cued.output


def test_corpus_synth_needs_an_output():
    result = run_cli("corpus", "synth", "markov")
    assert result.exit_code == 2
    assert "--output" in result.output


def test_a_new_run_that_fails_before_its_first_save_leaves_nothing(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text(("abc def ghi " * 9)[:100], encoding="utf-8")  # too short for 8 stateful streams of 16
    result = run_cli("train", short, *TINY, "--stateful", "--checkpoint-dir", tmp_path / "ck", "--run-name", "st")
    assert_user_error(result, "stateful", "129", after_start=True)
    assert not (tmp_path / "ck" / "st").exists()  # the name stays free and `sample` does not pick it


def test_an_existing_folder_is_never_removed_on_failure(tmp_path):
    corpus = write_corpus(tmp_path / "words.txt")
    mine = tmp_path / "ck" / "mine"
    mine.mkdir(parents=True)
    (mine / "keep.txt").write_text("precious")
    result = run_cli("train", corpus, *TINY, "--checkpoint-dir", tmp_path / "ck", "--run-name", "mine")
    assert_user_error(result, "already exists")
    assert (mine / "keep.txt").read_text() == "precious"
