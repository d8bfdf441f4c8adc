"""chargen export: a SavedModel that a process without chargen loads, whose step and generate equal chargen's own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from chargen import export as export_module  # noqa: E402
from chargen.checkpoints import Run  # noqa: E402
from chargen.errors import ChargenError  # noqa: E402
from chargen.export import export_run  # noqa: E402
from chargen.generation import NumpyStepper, start_ids  # noqa: E402
from chargen.model import CharModel  # noqa: E402
from chargen.vocab import Vocabulary  # noqa: E402

from helpers import assert_user_error, made_once, run_cli  # noqa: E402

VOCAB = Vocabulary.from_text("abcdefgh é\n")  # a character beyond ASCII: the graph splits and joins UTF-8
# Every cell, stacked models, the GRU with its extra recurrent bias, and a mixed-precision run (exported in float32).
CASES = {
    "rnn": {"cell": "rnn", "num_layers": 1},
    "gru-reset-after": {"cell": "gru", "num_layers": 2, "reset_after": True},
    "lstm-bfloat16": {"cell": "lstm", "num_layers": 2, "dtype": "mixed_bfloat16"},
}
STEPS, BATCHES = 5, (1, 3)
GENERATE = [  # (prime, length, temperature, seed)
    ("bad é", 30, 0.8, 1),
    ("bad é", 30, 0.8, 1),
    ("bad é", 30, 0.8, 2),
    ("", 12, 1.5, 7),
]

# Runs in a fresh interpreter that imports TensorFlow alone: what a server or a user's script does.
_LOAD_WITHOUT_CHARGEN = r"""
import json, sys
import numpy as np
import tensorflow as tf

request = json.loads(sys.argv[1])
report = {"chargen_imported": "chargen" in sys.modules, "cases": {}}
arrays = {}
for name, case in request["cases"].items():
    loaded = tf.saved_model.load(case["path"])
    step, generate = loaded.signatures["step"], loaded.signatures["generate"]
    specs = step.structured_input_signature[1]
    state_names = sorted(key for key in specs if key != "ids")
    for batch, ids in case["ids"].items():  # ids: (steps, batch)
        states = {key: tf.zeros([len(ids[0]), specs[key].shape[1]]) for key in state_names}
        for t, column in enumerate(ids):
            outputs = step(ids=tf.constant(column, tf.int32), **states)
            arrays[f"{name}/{batch}/{t}"] = outputs["logits"].numpy()
            states = {key: outputs[key] for key in state_names}
    texts = [generate(prime=tf.constant(prime), length=tf.constant(length), temperature=tf.constant(temperature),
                      seed=tf.constant(seed, tf.int64))["text"].numpy().decode("utf-8")
             for prime, length, temperature, seed in request["generate"]]
    try:
        generate(prime=tf.constant("Z"), length=tf.constant(3), temperature=tf.constant(1.0),
                 seed=tf.constant(0, tf.int64))
        refusal = None
    except tf.errors.InvalidArgumentError as error:
        refusal = str(error)
    report["cases"][name] = {
        "state_names": state_names, "texts": texts, "refusal": refusal,
        "vocabulary": [c.decode("utf-8") for c in loaded.vocabulary.numpy()],
        "batch_dimension": [specs[key].shape[0] for key in specs],
    }
    # the LiteRT step against the SavedModel's, on the same inputs, batch 3
    interpreter = tf.lite.Interpreter(model_path=case["litert"])
    [signature] = interpreter.get_signature_list()
    runner = interpreter.get_signature_runner(signature)
    ids = np.array(case["ids"]["3"][0], np.int32)
    states = {key: np.random.default_rng(0).normal(size=(3, specs[key].shape[1])).astype(np.float32)
              for key in state_names}
    arrays[f"{name}/litert"] = runner(ids=ids, **states)["logits"]
    arrays[f"{name}/litert-savedmodel"] = step(ids=tf.constant(ids), **states)["logits"].numpy()
np.savez(request["arrays"], **arrays)
print(json.dumps(report))
"""


def _make_run(folder: Path, name: str, seed: int, dtype: str = "float32", **architecture) -> Run:
    """A run folder holding one snapshot of a small untrained model (its weights are what the export must carry)."""
    keras.utils.set_random_seed(seed)
    model = CharModel(len(VOCAB), units=8, embedding_dim=4, dtype=dtype, **architecture)
    model.build()
    for variable in model.trainable_variables:  # bolder weights than the initialisers', so the logits differ more
        variable.assign(np.asarray(variable) * 2.0)
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    run = Run.create(folder / name, {"training": {"precision": dtype}}, VOCAB)
    run.save_snapshot(model, optimizer, {"step": 1, "chars_seen": 1, "best_val_bpc": None, "last_val_bpc": None})
    return run


def _reference_logits(stepper: NumpyStepper, ids: np.ndarray) -> list[np.ndarray]:
    """chargen's own engine over ids `(steps, batch)`, from zero states."""
    state, logits = stepper.initial_state(ids.shape[1]), []
    for column in ids:
        step_logits, state = stepper.step(column, state)
        logits.append(step_logits)
    return logits


def _reference_text(stepper: NumpyStepper, prime: str, length: int, temperature: float, seed: int) -> str:
    """What `generate` promises, computed outside the graph: chargen's step, TensorFlow's seeded draw per step."""
    ids = start_ids(prime, VOCAB)
    state = stepper.feed(ids[None, :-1], stepper.initial_state(1))
    previous, drawn = ids[-1:], []
    for t in range(length):
        logits, state = stepper.step(previous, state)
        draw = tf.random.stateless_categorical(logits / temperature, 1, seed=[seed, t], dtype=tf.int32)
        previous = draw.numpy()[:, 0]
        drawn.append(int(previous[0]))
    return VOCAB.decode(drawn)


def _export_and_load(folder: Path) -> None:
    """Every case exported, then loaded and run in one fresh process (one TensorFlow import for all); the
    request and what the process reported are left in `folder`."""
    rng = np.random.default_rng(0)
    cases = {}
    for seed, (name, architecture) in enumerate(CASES.items()):
        run = _make_run(folder, name, seed, **architecture)
        result = export_run(run, folder / "exports" / name, fmt="litert")
        ids = {str(batch): rng.integers(0, len(VOCAB), size=(STEPS, batch)).tolist() for batch in BATCHES}
        cases[name] = {"path": str(result.path), "litert": str(result.litert), "ids": ids}
    request = {"cases": cases, "generate": GENERATE, "arrays": str(folder / "arrays.npz")}
    (folder / "request.json").write_text(json.dumps(request), encoding="utf-8")
    completed = subprocess.run([sys.executable, "-c", _LOAD_WITHOUT_CHARGEN, json.dumps(request)],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    (folder / "report.json").write_text(completed.stdout, encoding="utf-8")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The exports' report and arrays (made once for all workers), and chargen's own engine on each run."""
    folder = made_once(tmp_path_factory, "export", _export_and_load)
    request = json.loads((folder / "request.json").read_text(encoding="utf-8"))
    with np.load(folder / "arrays.npz") as arrays:
        loaded = dict(arrays)
    steppers, references = {}, {}
    for name, case in request["cases"].items():
        steppers[name] = NumpyStepper(Run(folder / name).load_model())
        references[name] = {batch: _reference_logits(steppers[name], np.array(batch_ids))
                            for batch, batch_ids in case["ids"].items()}
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    return {"report": report, "arrays": loaded, "references": references, "steppers": steppers}


@pytest.mark.slow  # the fixture exports three runs and loads them in a fresh TensorFlow process
def test_the_export_loads_in_a_process_that_never_imports_chargen(exported):
    report = exported["report"]
    assert report["chargen_imported"] is False
    assert set(report["cases"]) == set(CASES)
    for case in report["cases"].values():
        assert case["vocabulary"] == VOCAB.chars
        assert case["batch_dimension"] == [None] * len(case["batch_dimension"])  # traced for any batch


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_step_gives_chargens_logits_over_several_steps_at_batch_1_and_3(exported, name):
    layers = CASES[name]["num_layers"]
    expected_states = [f"layer{i}_{entry}" for i in range(layers)
                       for entry in (("c", "h") if CASES[name]["cell"] == "lstm" else ("h",))]
    assert exported["report"]["cases"][name]["state_names"] == sorted(expected_states)
    for batch in BATCHES:
        for t, reference in enumerate(exported["references"][name][str(batch)]):
            logits = exported["arrays"][f"{name}/{batch}/{t}"]
            assert logits.shape == (batch, len(VOCAB))
            np.testing.assert_allclose(logits, reference, atol=1e-5, rtol=0, err_msg=f"{name} batch {batch} step {t}")
        assert np.ptp(reference) > 0.1  # logits that differ, so the comparison means something


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_generate_draws_from_the_models_distribution_in_the_graph(exported, name):
    texts = exported["report"]["cases"][name]["texts"]
    for (prime, length, temperature, seed), text in zip(GENERATE, texts, strict=True):
        assert len(text) == length
        assert set(text) <= set(VOCAB.chars)
        assert text == _reference_text(exported["steppers"][name], prime, length, temperature, seed)
    assert texts[0] == texts[1]  # the same seed, the same text
    assert texts[0] != texts[2]  # another seed, another text


@pytest.mark.slow
def test_generate_refuses_a_prime_outside_the_vocabulary(exported):
    for case in exported["report"]["cases"].values():
        assert "outside the vocabulary" in case["refusal"]


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_the_litert_step_equals_the_savedmodel_step(exported, name):
    mine, saved = exported["arrays"][f"{name}/litert"], exported["arrays"][f"{name}/litert-savedmodel"]
    assert mine.shape == (3, len(VOCAB))
    np.testing.assert_allclose(mine, saved, atol=1e-5, rtol=0)


# The command -------------------------------------------------------------------------------------

def test_export_writes_into_the_run_refuses_to_overwrite_and_replaces_with_force(run_copy):
    run = run_copy["run"]
    result = run_cli("export", run)
    assert result.exit_code == 0, result.output
    target = run / "export"
    assert (target / "saved_model.pb").is_file()
    assert json.loads((target / "vocab.json").read_text(encoding="utf-8")) == json.loads(
        (run / "vocab.json").read_text(encoding="utf-8"))
    lines = result.stdout.splitlines()
    assert lines[0] == f"exported tiny (best model) to {target}"
    assert lines[1].startswith("  step(ids int32 (batch), layer0_h float32 (batch, 16), layer0_c float32 (batch, 16)")
    assert lines[2].startswith("    -> logits float32 (batch, ")
    assert lines[3] == "  generate(prime string (), length int32 (), temperature float32 (), seed int64 ())"
    assert lines[4] == "    -> text string ()"

    (target / "marker").write_text("an older export", encoding="utf-8")
    assert_user_error(run_cli("export", run), "already exists", "--force")
    assert (target / "marker").exists()

    replaced = run_cli("export", run, "--force", "--checkpoint", "last")
    assert replaced.exit_code == 0, replaced.output
    assert "(last model)" in replaced.stdout
    assert not (target / "marker").exists() and (target / "saved_model.pb").is_file()
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp")]


def test_an_output_that_is_a_file_or_cannot_be_made_is_refused_in_one_line(run_copy, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file", encoding="utf-8")
    with pytest.raises(ChargenError, match="is a file"):  # the command line's Click refuses it before this
        export_run(Run.open(run_copy["run"]), blocker)
    assert_user_error(run_cli("export", run_copy["run"], "--output", blocker / "export"), "cannot create", "writable")
    assert blocker.read_text(encoding="utf-8") == "a file"


def test_a_failed_export_leaves_nothing_behind(run_copy, tmp_path, monkeypatch):
    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export_module.tf.saved_model, "save", failing_save)
    with pytest.raises(OSError):
        export_run(Run.open(run_copy["run"]), tmp_path / "out")
    assert list(tmp_path.iterdir()) == [tmp_path / "checkpoints"]


def test_an_unknown_format_is_refused():
    with pytest.raises(ChargenError, match="savedmodel, litert"):
        export_run(None, fmt="onnx")
