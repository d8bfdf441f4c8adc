"""One real round trip through the command line: train, sample, eval, info, and an exact resume."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from chargen.checkpoints import Run
from chargen.config import TrainingConfig

from helpers import TINY, run_cli

PRIME = "cedar "


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def last_snapshot(run: Path) -> Path:
    pointers = json.loads((run / "pointers.json").read_text(encoding="utf-8"))
    return run / "snapshots" / pointers["last"]


def sample_text(run, seed, length=40, prime=PRIME, *extra) -> str:
    result = run_cli("sample", run, "--seed", seed, "--length", length, "--prime", prime, *extra)
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("\n")
    return result.stdout[:-1]


# train -------------------------------------------------------------------------------------------

def test_train_reports_the_final_validation_figure_and_the_run_folder(trained):
    result = trained["result"]
    assert result.exit_code == 0, result.output
    match = re.search(r"step 4: validation (\d+\.\d+) bits per character", result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) == pytest.approx(metrics(trained["run"])[-1]["val_bpc"], abs=5e-4)
    assert str(trained["run"]) in result.stdout
    assert "Traceback" not in result.output


def test_train_prints_each_evaluation_with_a_preview(trained):
    stderr = trained["result"].stderr
    assert re.search(r"step 2: train \d+\.\d+ bpc, validation \d+\.\d+ bpc", stderr), stderr
    assert re.search(r"step 4: train \d+\.\d+ bpc, validation \d+\.\d+ bpc", stderr), stderr
    assert stderr.count("  | ") >= 2  # a preview after each evaluation


def test_run_folder_has_config_with_corpus_hash_versions_and_hyperparameters(trained):
    from chargen.config import TrainingConfig

    config = json.loads((trained["run"] / "config.json").read_text(encoding="utf-8"))
    assert config["format_version"] == 1
    assert config["corpus"]["sha256"] == hashlib.sha256(trained["corpus"].read_bytes()).hexdigest()
    assert config["corpus"]["bytes"] == trained["corpus"].stat().st_size
    assert config["corpus"]["characters"] == len(trained["corpus"].read_text(encoding="utf-8"))
    assert set(config["versions"]) >= {"chargen", "tensorflow", "keras"}
    assert all(config["versions"].values())
    training = config["training"]
    assert set(training) == {field.name for field in dataclasses.fields(TrainingConfig)}
    given = {"units": 16, "num_layers": 1, "seq_len": 16, "batch_size": 8, "steps": 4, "eval_every": 2,
             "embedding_dim": 8, "cell": "lstm", "mode": "bptt", "stateful": False, "seed": 0, "val_fraction": 0.1}
    assert {name: training[name] for name in given} == given


def test_run_folder_has_vocabulary_metrics_pointers_and_a_complete_snapshot(trained):
    run = trained["run"]
    vocab = json.loads((run / "vocab.json").read_text(encoding="utf-8"))["chars"]
    assert sorted(vocab) == sorted(set(trained["corpus"].read_text(encoding="utf-8")))
    records = metrics(run)
    assert [record["step"] for record in records] == [2, 4]  # one line per evaluation
    assert all(math.isfinite(record["val_bpc"]) and math.isfinite(record["loss"]) for record in records)
    pointers = json.loads((run / "pointers.json").read_text(encoding="utf-8"))
    assert set(pointers) == {"last", "best"}
    snapshot = last_snapshot(run)
    assert {p.name for p in snapshot.iterdir()} >= {"model.keras", "optimizer.npz", "progress.json"}
    assert not (snapshot / "states.npz").exists()  # not a stateful run
    progress = json.loads((snapshot / "progress.json").read_text(encoding="utf-8"))
    assert progress["step"] == 4
    assert progress["chars_seen"] == 4 * 8 * 16
    assert progress["last_val_bpc"] == pytest.approx(records[-1]["val_bpc"])
    assert progress["best_val_bpc"] == pytest.approx(min(record["val_bpc"] for record in records))
    leftovers = [p for p in run.rglob("*") if p.name.startswith(".tmp")]
    assert not leftovers


# sample ------------------------------------------------------------------------------------------

def test_sample_with_a_seed_is_repeatable_starts_with_the_prime_and_has_the_length(trained):
    first = sample_text(trained["run"], 7, 40)
    second = sample_text(trained["run"], 7, 40)
    assert first == second
    assert first.startswith(PRIME)
    assert len(first) == len(PRIME) + 40
    assert set(first) <= set(trained["corpus"].read_text(encoding="utf-8"))
    assert sample_text(trained["run"], 8, 40) != first  # the seed matters


def test_sample_output_file_holds_the_text_alone(trained, tmp_path):
    out = tmp_path / "sample.txt"
    result = run_cli("sample", trained["run"], "--seed", "7", "--length", "40", "--prime", PRIME, "--output", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert out.read_text(encoding="utf-8") == sample_text(trained["run"], 7, 40) + "\n"


def test_sample_output_to_an_unwritable_place_is_one_line(trained, tmp_path):
    result = run_cli("sample", trained["run"], "--length", "5", "--output", tmp_path / "missing-folder" / "s.txt")
    assert result.exit_code == 1
    assert "cannot write --output" in result.output and "Traceback" not in result.output


def test_sample_several_at_once(trained):
    result = run_cli("sample", trained["run"], "--num-samples", "3", "--length", "25", "--seed", "2", "--prime", PRIME)
    assert result.exit_code == 0, result.output
    pieces = re.split(r"^--- sample \d+ ---\n", result.stdout, flags=re.MULTILINE)
    assert pieces[0] == ""
    samples = [piece[:-1] for piece in pieces[1:]]  # each echo adds one newline
    assert len(samples) == 3
    assert all(text.startswith(PRIME) and len(text) == len(PRIME) + 25 for text in samples)


def test_sample_with_other_strategies(trained):
    greedy = [sample_text(trained["run"], seed, 20, PRIME, "--strategy", "greedy") for seed in (1, 2)]
    assert greedy[0] == greedy[1]  # deterministic whatever the seed
    top_k = sample_text(trained["run"], 3, 20, PRIME, "--strategy", "top-k", "-o", "k=1")
    assert top_k == greedy[0]  # keeping one candidate is greedy


def save_untrained_run(corpus_path: Path, run_path: Path) -> None:
    """A run saved straight after its model is built: another model than the shared run's, without the seconds
    that tracing a training step would cost."""
    from chargen.corpus import resolve_corpus
    from chargen.sessions import new_session

    config = TrainingConfig(units=16, num_layers=1, embedding_dim=8, seq_len=16, seed=5)
    trainer = new_session(resolve_corpus([str(corpus_path)]), config, run_path, xla=False)
    Run.open(run_path).save_snapshot(trainer.model, trainer.optimizer, dataclasses.asdict(trainer.progress))


def test_sample_with_no_run_uses_the_newest(trained, tmp_path):
    checkpoint_dir = tmp_path / "checkpoints"
    shutil.copytree(trained["checkpoint_dir"], checkpoint_dir)  # keeps the older times
    save_untrained_run(trained["corpus"], checkpoint_dir / "newer")
    implicit = run_cli("sample", "--checkpoint-dir", checkpoint_dir, "--seed", "4", "--length", "40", "--prime", PRIME)
    assert implicit.exit_code == 0, implicit.output
    assert implicit.stdout[:-1] == sample_text(checkpoint_dir / "newer", 4, 40)
    assert implicit.stdout[:-1] != sample_text(checkpoint_dir / "tiny", 4, 40)
    info = run_cli("info", "--checkpoint-dir", checkpoint_dir, "--json")
    assert json.loads(info.stdout)["run"] == str(checkpoint_dir / "newer")


def test_sample_names_the_run_by_name_inside_the_checkpoint_dir(trained):
    by_name = run_cli("sample", "tiny", "--checkpoint-dir", trained["checkpoint_dir"], "--seed", "7", "--length",
                      "40", "--prime", PRIME)
    assert by_name.exit_code == 0, by_name.output
    assert by_name.stdout[:-1] == sample_text(trained["run"], 7, 40)


# eval --------------------------------------------------------------------------------------------

def _validation_tail(text: str, val_fraction: float = 0.1, window: int = 17) -> str:
    """The tail the trainer validated on (`corpus.split_ids`), rebuilt from its rule."""
    num_val = min(max(round(len(text) * val_fraction), window), len(text) - window)
    return text[len(text) - num_val:]


def test_eval_of_the_validation_tail_gives_the_last_validation_figure(trained, tmp_path):
    tail = tmp_path / "tail.txt"
    tail.write_text(_validation_tail(trained["corpus"].read_text(encoding="utf-8")), encoding="utf-8")
    result = run_cli("eval", trained["run"], tail, "--checkpoint", "last", "--json")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["perplexity"] == pytest.approx(2 ** figures["bits_per_char"], rel=1e-9, abs=1e-6)
    assert figures["bits_per_char"] == pytest.approx(metrics(trained["run"])[-1]["val_bpc"], abs=1e-6)
    assert figures["characters"] == len(tail.read_text(encoding="utf-8")) - 1


def test_eval_of_the_whole_corpus_in_words(trained):
    result = run_cli("eval", trained["run"], trained["corpus"])
    assert result.exit_code == 0, result.output
    match = re.search(r"(\d+\.\d+) bits per character, perplexity (\d+\.\d+)", result.stdout)
    assert match, result.stdout
    bpc, perplexity = map(float, match.groups())
    vocab_size = len(json.loads((trained["run"] / "vocab.json").read_text(encoding="utf-8"))["chars"])
    assert 0 < bpc < math.log2(vocab_size) + 1
    assert perplexity == pytest.approx(2 ** bpc, rel=1e-3)


# info --------------------------------------------------------------------------------------------

def assert_info_matches_the_saved_model(run: Path) -> dict:
    """`info --json` names and counts every weight of the model file it never loads; returns its details."""
    from chargen.checkpoints import Run

    result = run_cli("info", run, "--json")
    assert result.exit_code == 0, result.output
    details = json.loads(result.stdout)
    model = Run.open(run).load_model("last")
    assert details["parameters"] == sum(int(np.prod(w.shape)) for w in model.weights)
    assert details["parameters"] == sum(int(np.prod(w["shape"])) for w in details["weights"])

    shapes = {w["name"]: tuple(w["shape"]) for w in details["weights"]}
    assert shapes["embedding"] == tuple(model.embedding.embeddings.shape)
    assert shapes["W_hy"] == tuple(model.head.kernel.shape)
    assert shapes["b_y"] == tuple(model.head.bias.shape)
    for index, layer in enumerate(model.recurrent_layers):
        cell = layer.cell
        gates = [name.split(".W_x")[1] for name in shapes if name.startswith(f"layer{index}.W_x")]
        assert gates == list(cell.gate_names)
        input_kernels = [shapes[f"layer{index}.W_x{g}"] for g in gates]
        recurrent_kernels = [shapes[f"layer{index}.W_h{g}"] for g in gates]
        biases = [shapes[f"layer{index}.b_{g}"] for g in gates]
        assert {k[0] for k in input_kernels} == {cell.input_kernel.shape[0]}
        assert sum(k[1] for k in input_kernels) == cell.input_kernel.shape[1]
        assert {k[0] for k in recurrent_kernels} == {cell.recurrent_kernel.shape[0]}
        assert sum(k[1] for k in recurrent_kernels) == cell.recurrent_kernel.shape[1]
        assert sum(b[0] for b in biases) == cell.bias.shape[0]
        recurrent_biases = [shapes[f"layer{index}.b'_{g}"] for g in gates if f"layer{index}.b'_{g}" in shapes]
        if getattr(cell, "reset_after", False):
            assert sum(b[0] for b in recurrent_biases) == cell.recurrent_bias.shape[0]
        else:
            assert recurrent_biases == []
    assert details["vocab_size"] == model.vocab_size
    return details


def test_info_counts_the_parameters_and_shapes_of_the_real_model(trained):
    details = assert_info_matches_the_saved_model(trained["run"])
    assert (details["cell"], details["layers"], details["units"], details["embedding_dim"]) == ("lstm", 1, 16, 8)
    assert details["steps"] == 4 and details["chars_seen"] == 512
    assert details["last_val_bpc"] == pytest.approx(metrics(trained["run"])[-1]["val_bpc"])


def test_gru_reset_after_trains_samples_resumes_and_is_counted_by_info(trained, tmp_path):
    checkpoint_dir = tmp_path / "checkpoints"
    result = run_cli("train", trained["corpus"], *TINY, "--cell", "gru", "--reset-after",
                     "--checkpoint-dir", checkpoint_dir, "--run-name", "gru")
    assert result.exit_code == 0, result.output
    run = checkpoint_dir / "gru"
    assert json.loads((run / "config.json").read_text(encoding="utf-8"))["training"]["reset_after"] is True
    details = assert_info_matches_the_saved_model(run)
    assert details["reset_after"] is True and details["cell"] == "gru"
    assert "layer0.b'_h" in {w["name"] for w in details["weights"]}
    assert "gru (reset after)" in run_cli("info", run).stdout
    assert len(sample_text(run, 3, 20)) == len(PRIME) + 20
    resumed = run_cli("train", trained["corpus"], "--steps", "6", "--resume", "--no-xla", "--no-histograms",
                      "--run-name", "gru", "--checkpoint-dir", checkpoint_dir, "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert all(layer.cell.reset_after for layer in Run.open(run).load_model("last").recurrent_layers)


def test_info_in_words(trained):
    result = run_cli("info", trained["run"])
    assert result.exit_code == 0, result.output
    assert "lstm, 1 layer(s) of 16 units" in result.stdout
    assert "training     bptt, 4 steps" in result.stdout  # not stateful, so the word is absent
    for name in ("layer0.W_xi", "layer0.W_hf", "layer0.b_o", "W_hy"):
        assert name in result.stdout


# stopping limits -------------------------------------------------------------------------------

def test_epochs_and_time_limit_stop_training(trained, tmp_path):
    checkpoint_dir = tmp_path / "checkpoints"
    text = trained["corpus"].read_text(encoding="utf-8")
    train_chars = len(text) - len(_validation_tail(text))
    steps_per_epoch = (train_chars - 1) // (16 * 8)  # a step predicts 16 * 8 characters
    assert steps_per_epoch > 8
    result = run_cli("train", trained["corpus"], *TINY, "--steps", "100", "--epochs", "0.125",
                     "--checkpoint-dir", checkpoint_dir, "--run-name", "epochs")
    assert result.exit_code == 0, result.output
    progress = json.loads((last_snapshot(checkpoint_dir / "epochs") / "progress.json").read_text())
    assert progress["step"] == round(0.125 * steps_per_epoch)
    result = run_cli("train", trained["corpus"], *TINY, "--steps", "1000000", "--eval-every", "0", "--time-limit", "1",
                     "--checkpoint-dir", checkpoint_dir, "--run-name", "timed")
    assert result.exit_code == 0, result.output
    progress = json.loads((last_snapshot(checkpoint_dir / "timed") / "progress.json").read_text())
    assert 1 <= progress["step"] < 1_000_000
    # evaluated at the end
    assert [record["step"] for record in metrics(checkpoint_dir / "timed")] == [progress["step"]]


# resume ------------------------------------------------------------------------------------------

def _weights(run: Path) -> list[np.ndarray]:
    from chargen.checkpoints import Run

    return [np.asarray(w) for w in Run.open(run).load_model("last").weights]


def _optimizer_state(run: Path) -> list[np.ndarray]:
    with np.load(last_snapshot(run) / "optimizer.npz") as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def _interrupted_at_step(step: int, monkeypatch) -> None:
    """The next `chargen train` stops after `step` as if Ctrl-C came then (the signal is test_checkpoints.py's)."""
    import chargen.cli
    from chargen.training import Callback

    class StopThere(Callback):
        def on_step_end(self, trainer, logs):
            trainer.stop_requested = trainer.stop_requested or logs["step"] == step

    real_fit = chargen.cli._fit_until_interrupted

    def interrupted_fit(trainer):
        trainer.callbacks.append(StopThere())
        return real_fit(trainer)

    monkeypatch.setattr(chargen.cli, "_fit_until_interrupted", interrupted_fit)


@pytest.mark.parametrize(("stateful", "precision"), [(False, "float32"), (True, "float32"), (False, "float16"),
                                                    (True, "bfloat16")],
                         ids=["windows", "stateful", "windows-float16", "stateful-bfloat16"])
def test_resume_continues_exactly_like_an_uninterrupted_run(trained, tmp_path, stateful, precision, monkeypatch):
    """Interrupted at step 4 of 8 and resumed: the same weights, optimizer, curve and learning-rate schedule.

    float16: the loss scale and its step counter are among the optimizer's variables saved and restored;
    bfloat16 and stateful: the carried states, saved as float32, come back exactly. That case alone logs the
    TensorBoard histograms (TINY leaves them out), whose gradient from the carried bfloat16 states must not
    disturb the training either; in the others they would only add seconds of tracing to each of three runs.
    """
    corpus = trained["corpus"]
    histograms = "--histograms" if precision == "bfloat16" else "--no-histograms"
    flag = ["--stateful" if stateful else "--no-stateful", "--precision", precision, histograms]
    split_dir, whole_dir = tmp_path / "split", tmp_path / "whole"
    _interrupted_at_step(4, monkeypatch)
    first = run_cli("train", corpus, *TINY, *flag, "--steps", "8", "--seed", "3", "--checkpoint-dir", split_dir,
                    "--run-name", "run")
    assert first.exit_code == 130, first.output
    monkeypatch.undo()
    # no --run-name: the newest (only) run in the folder is resumed; no --steps: it keeps its limit of 8
    resumed = run_cli("train", corpus, "--resume", "--no-xla", histograms, "--quiet", "--checkpoint-dir", split_dir)
    assert resumed.exit_code == 0, resumed.output
    assert "from step 4" in resumed.stderr
    whole = run_cli("train", corpus, *TINY, *flag, "--steps", "8", "--seed", "3", "--checkpoint-dir", whole_dir,
                    "--run-name", "run")
    assert whole.exit_code == 0, whole.output

    split_run, whole_run = split_dir / "run", whole_dir / "run"
    split_metrics, whole_metrics = metrics(split_run), metrics(whole_run)
    assert [r["step"] for r in split_metrics] == [r["step"] for r in whole_metrics] == [2, 4, 6, 8]
    for interrupted, uninterrupted in zip(split_metrics, whole_metrics):  # the loss curve continues
        assert interrupted["loss"] == pytest.approx(uninterrupted["loss"], abs=1e-6)
        assert interrupted["val_bpc"] == pytest.approx(uninterrupted["val_bpc"], abs=1e-6)
        assert interrupted["learning_rate"] == uninterrupted["learning_rate"]
        assert interrupted["chars_seen"] == uninterrupted["chars_seen"]

    split_progress = json.loads((last_snapshot(split_run) / "progress.json").read_text())
    whole_progress = json.loads((last_snapshot(whole_run) / "progress.json").read_text())
    assert split_progress["step"] == whole_progress["step"] == 8
    assert split_progress["last_val_bpc"] == pytest.approx(whole_progress["last_val_bpc"], abs=1e-6)
    assert (last_snapshot(split_run) / "states.npz").exists() == stateful

    for resumed_weight, whole_weight in zip(_weights(split_run), _weights(whole_run), strict=True):
        np.testing.assert_allclose(resumed_weight, whole_weight, atol=1e-6, rtol=0)
    for resumed_slot, whole_slot in zip(_optimizer_state(split_run), _optimizer_state(whole_run), strict=True):
        np.testing.assert_allclose(resumed_slot, whole_slot, atol=1e-6, rtol=0)
    if precision == "float16":  # compared above with Adam's: the loss scale and its counter of good steps
        scalars = [slot.item() for slot in _optimizer_state(split_run) if slot.shape == ()]
        assert 2.0**15 in scalars and scalars.count(8) == 2  # the counter and Adam's iterations
    # the resumed run's sampled text is the uninterrupted run's
    assert sample_text(split_run, 1, 30) == sample_text(whole_run, 1, 30)


def test_plain_resume_finishes_the_saved_limit_with_the_saved_interval(trained, tmp_path):
    checkpoint_dir = tmp_path / "checkpoints"
    shutil.copytree(trained["checkpoint_dir"], checkpoint_dir)
    config_path = checkpoint_dir / "tiny" / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["training"]["steps"] = 6  # as if the run, meant for 6 steps, had been stopped at step 4
    config_path.write_text(json.dumps(config), encoding="utf-8")
    result = run_cli("train", trained["corpus"], "--resume", "--no-xla", "--no-histograms", "--run-name", "tiny",
                     "--checkpoint-dir", checkpoint_dir, "--quiet")
    assert result.exit_code == 0, result.output
    assert "step 6:" in result.stdout
    assert [record["step"] for record in metrics(checkpoint_dir / "tiny")] == [2, 4, 6]  # --eval-every 2 kept


def test_resuming_a_finished_run_changes_nothing(trained, tmp_path):
    checkpoint_dir = tmp_path / "checkpoints"
    shutil.copytree(trained["checkpoint_dir"], checkpoint_dir)
    before = last_snapshot(checkpoint_dir / "tiny")
    result = run_cli("train", trained["corpus"], "--resume", "--no-xla", "--no-histograms", "--run-name", "tiny",
                     "--checkpoint-dir", checkpoint_dir, "--quiet")
    assert result.exit_code == 0, result.output
    assert "already reached step 4" in result.stderr and "--steps" in result.stderr
    assert last_snapshot(checkpoint_dir / "tiny") == before
    assert [record["step"] for record in metrics(checkpoint_dir / "tiny")] == [2, 4]
