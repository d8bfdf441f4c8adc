"""Training under tf.distribute: several replicas on one machine, and several worker processes.

The equivalence tests compare against one device at the same global batch. The CPU is split into logical
devices, or workers are started, in processes of their own, so the rest of the suite keeps its devices.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from chargen.distribution import cluster_task, parse_devices
from chargen.errors import ChargenError

from helpers import TINY, assert_user_error, made_once, run_cli, write_corpus

TESTS = Path(__file__).parent
# Two replicas add the halves of a sum that one device adds at once: float32 rounding, amplified a little by
# Adam's division by the root of its second moment over three steps.
LOSS_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 1e-5
# Every cell in both modes, stateful included; two layers where the states of several layers are gathered;
# clipping that bites in some (the norm clipped must be the whole batch's, not each replica's), and XLA
# compiling each replica's gradients in one.
CASES = [
    {"cell": "rnn", "mode": "bptt", "stateful": True, "clip_norm": 0.05, "num_layers": 2},
    {"cell": "rnn", "mode": "teacher-forcing", "stateful": False},
    {"cell": "gru", "mode": "bptt", "stateful": True},
    {"cell": "gru", "mode": "teacher-forcing", "stateful": False, "clip_norm": 0.05},
    {"cell": "lstm", "mode": "bptt", "stateful": True, "clip_norm": 0.05, "xla": True},
    {"cell": "lstm", "mode": "teacher-forcing", "stateful": False},
]


def child_environment(**extra) -> dict:
    """The environment of a process the test starts: this one's, one thread per pool, chargen importable."""
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_NUM_INTRAOP_THREADS": "1",
                   "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1", **extra}
    environment.pop("TF_CONFIG", None)
    environment.update(extra)
    return environment


# --devices and TF_CONFIG, read without TensorFlow ------------------------------------------------

def test_devices_takes_a_positive_count_or_all():
    assert parse_devices("2") == 2 and parse_devices("all") is None
    for wrong in ("0", "-1", "two", ""):
        with pytest.raises(ChargenError, match="--devices takes a positive number"):
            parse_devices(wrong)


def test_the_chief_is_the_chief_task_or_else_worker_zero():
    def task(kind, index, cluster):
        return cluster_task(json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}}))

    workers = {"worker": ["a:1", "b:1"]}
    assert task("worker", 0, workers).chief and not task("worker", 1, workers).chief
    assert task("worker", 1, workers).num_workers == 2
    with_chief = {"chief": ["c:1"], "worker": ["a:1", "b:1"]}
    assert task("chief", 0, with_chief).chief and not task("worker", 0, with_chief).chief
    assert task("worker", 0, with_chief).num_workers == 3
    assert cluster_task(None) is None and cluster_task("") is None


@pytest.mark.parametrize("tf_config, fragment", [
    ("{not json", "TF_CONFIG is not JSON"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "chief\" or \"worker"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "index must name one"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "worker", "index": 0}}', "only \"chief\""),
])
def test_a_malformed_tf_config_is_one_line_before_training(tmp_path, monkeypatch, tf_config, fragment):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    corpus = write_corpus(tmp_path / "words.txt")
    result = run_cli("train", corpus, *TINY, "--checkpoint-dir", tmp_path / "runs")
    assert_user_error(result, fragment)
    assert not (tmp_path / "runs").exists()


def test_devices_under_a_cluster_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}')
    corpus = write_corpus(tmp_path / "words.txt")
    result = run_cli("train", corpus, *TINY, "--devices", "2", "--checkpoint-dir", tmp_path / "runs")
    assert_user_error(result, "--devices applies to one machine")


def test_devices_beyond_what_tensorflow_sees_is_one_line(tmp_path):
    corpus = write_corpus(tmp_path / "words.txt")
    result = run_cli("train", corpus, *TINY, "--device", "gpu", "--devices", "2", "--checkpoint-dir", tmp_path)
    assert_user_error(result, "--device gpu")
    result = run_cli("train", corpus, *TINY, "--devices", "x", "--checkpoint-dir", tmp_path)
    assert_user_error(result, "--devices takes a positive number")


# Several devices on one machine ----------------------------------------------------------------

TWO_DEVICE_RUN = [*TINY, "--stateful", "--devices", "2", "--device", "cpu"]


def _train_on_two_cpu_devices(folder: Path) -> None:
    """One process with the CPU split in two: every case trained 3 steps on one device and on two replicas,
    then `chargen train --devices 2` run twice, once with a batch the replicas cannot share. Its JSON lines
    are left in `folder`/results.jsonl."""
    corpus = write_corpus(folder / "words.txt")
    train = ["train", str(corpus), *TWO_DEVICE_RUN, "--checkpoint-dir", str(folder)]
    job = {"cases": CASES, "commands": [[*train, "--run-name", "two"],
                                        [*train, "--run-name", "odd", "--batch-size", "7"]]}
    completed = subprocess.run([sys.executable, str(TESTS / "two_cpu_devices.py"), json.dumps(job)],
                               capture_output=True, text=True, env=child_environment(), timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    (folder / "results.jsonl").write_text(completed.stdout, encoding="utf-8")


@pytest.fixture(scope="module")
def two_cpu_devices(tmp_path_factory):
    """What `_train_on_two_cpu_devices` reported (made once for all workers: it takes tens of seconds)."""
    folder = made_once(tmp_path_factory, "two-cpu-devices", _train_on_two_cpu_devices)
    lines = [json.loads(line) for line in (folder / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    return {"comparisons": lines[:len(CASES)], "commands": lines[len(CASES):], "folder": folder}


@pytest.mark.slow
def test_two_replicas_train_as_one_device_for_every_cell_and_mode(two_cpu_devices):
    comparisons = two_cpu_devices["comparisons"]
    assert len(comparisons) == len(CASES)
    for result in comparisons:
        assert result["steps"] == 3, result
        assert result["weight_change"] > 100 * WEIGHT_TOLERANCE, result  # the steps did move the weights
        assert result["loss"] < LOSS_TOLERANCE, result
        assert result["weights"] < WEIGHT_TOLERANCE, result
        if result["stateful"]:  # each replica carried its own rows' states; gathered, they are the batch's
            assert result["state_rows"] and all(rows == 4 for rows in result["state_rows"]), result
            assert result["states"] < WEIGHT_TOLERANCE, result


@pytest.mark.slow
def test_chargen_train_on_two_devices_saves_a_run_that_samples(two_cpu_devices):
    two, odd = two_cpu_devices["commands"]
    assert two["exit_code"] == 0, two["stderr"]
    assert "2 devices (/device:CPU:0, /device:CPU:1)" in two["stderr"]
    run = two_cpu_devices["folder"] / "two"
    with np.load(next((run / "snapshots").iterdir()) / "states.npz") as states:
        assert states["layer0_state0"].shape == (8, 16)  # the whole batch's rows, gathered from both replicas
    result = run_cli("sample", run, "--length", "20", "--seed", "1")
    assert result.exit_code == 0, result.output
    assert odd["exit_code"] != 0
    assert odd["stderr"].strip().splitlines()[-1].startswith("Error: --batch-size 7 does not split evenly among 2 "
                                                             "replicas"), odd["stderr"]


# Several machines: worker processes on localhost ------------------------------------------------

def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for each in sockets:
        each.bind(("localhost", 0))
    ports = [each.getsockname()[1] for each in sockets]
    for each in sockets:
        each.close()
    return ports


def start_workers(corpus: Path, checkpoint_dirs: list[Path], *options: str) -> list[subprocess.Popen]:
    """Two `chargen train` processes forming one cluster on localhost, each with its --checkpoint-dir;
    worker 0 is the chief. One folder for both stands for storage the machines share (needed to resume)."""
    addresses = [f"localhost:{port}" for port in free_ports(2)]
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})
        command = [sys.executable, "-m", "chargen", "train", str(corpus), *options,
                   "--checkpoint-dir", str(checkpoint_dirs[index]), "--run-name", "cluster"]
        workers.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env=child_environment(TF_CONFIG=tf_config)))
    return workers


def finish(workers: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str]]:
    """Each worker's exit status and stderr; a worker still running after `timeout` seconds is killed."""
    results = []
    try:
        for worker in workers:
            _, stderr = worker.communicate(timeout=timeout)
            results.append((worker.returncode, stderr))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    return results


def last_weights(run: Path) -> list[np.ndarray]:
    from chargen.checkpoints import Run

    return [np.asarray(w) for w in Run.open(run).load_model("last").get_weights()]


CLUSTER_RUN = ["--units", "16", "--layers", "1", "--seq-len", "16", "--batch-size", "8", "--embedding-dim", "8",
               "--eval-every", "2", "--quiet", "--no-xla", "--stateful", "--lr-schedule", "constant"]
# (constant: a cosine schedule would follow each session's --steps, and the cluster trains to a kill, then resumes)


def last_step(run: Path) -> int:
    """The step of the run's last snapshot, as its pointers name it."""
    last = json.loads((run / "pointers.json").read_text())["last"]
    return json.loads((run / "snapshots" / last / "progress.json").read_text())["step"]


def snapshot_at(run: Path, step: int) -> Path:
    return next((run / "snapshots").glob(f"step-{step:07d}-*"))


@pytest.mark.slow
def test_a_cluster_trains_as_one_process_and_a_dead_worker_leaves_a_run_that_resumes(tmp_path):
    """Two workers train until one is killed; the chief, which alone wrote the run, stops in one line. The
    run resumes as a cluster (until SIGTERM stops it, saved) and as one process, and both equal one process
    trained as many steps."""
    corpus = write_corpus(tmp_path / "words.txt")
    chief, other = start_workers(corpus, [tmp_path / "worker0", tmp_path / "worker1"], *CLUSTER_RUN,
                                 "--steps", "100000")
    run = tmp_path / "worker0" / "cluster"
    deadline = time.monotonic() + 240
    while not (run / "pointers.json").exists() and time.monotonic() < deadline and chief.poll() is None:
        time.sleep(0.2)
    assert (run / "pointers.json").exists(), finish([chief, other])
    other.send_signal(signal.SIGKILL)
    began = time.monotonic()
    (code, stderr), = finish([chief])
    other.wait()
    waited = time.monotonic() - began
    lines = stderr.strip().splitlines()
    assert "worker 0 of 2 workers (chief: writes the run), 2 replicas in all" in stderr
    assert code not in (0, None), stderr
    assert lines[-1].startswith("Error: training stopped at step "), stderr
    assert "another worker of the cluster stopped answering" in lines[-1]
    assert "Traceback" not in stderr
    assert waited < 150, waited  # a peer check every 5 s; generous, for a loaded machine
    assert not (tmp_path / "worker1").exists()  # only the chief writes
    result = run_cli("sample", run, "--length", "20", "--seed", "1")
    assert result.exit_code == 0, result.output

    step = last_step(run)
    alone = tmp_path / "alone"
    shutil.copytree(tmp_path / "worker0", alone)
    # Both resume from the chief's folder (to resume, every worker reads the last snapshot: the folder must be
    # on storage they share), until SIGTERM reaches both, as when Kubernetes stops a job's pods.
    workers = start_workers(corpus, [tmp_path / "worker0"] * 2, *CLUSTER_RUN, "--steps", "100000", "--resume")
    deadline = time.monotonic() + 240
    while last_step(run) == step and time.monotonic() < deadline and workers[0].poll() is None:
        time.sleep(0.2)
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    results = finish(workers)
    assert [code for code, _ in results] == [143, 143], results
    assert "terminated (SIGTERM) and saved" in results[0][1], results[0][1]
    reached = last_step(run)
    assert reached > step
    result = run_cli("train", corpus, *CLUSTER_RUN, "--steps", str(reached), "--resume",
                     "--checkpoint-dir", alone, "--run-name", "cluster")
    assert result.exit_code == 0, result.output
    reference = run_cli("train", corpus, *CLUSTER_RUN, "--steps", str(reached), "--checkpoint-dir",
                        tmp_path / "single", "--run-name", "one")
    assert reference.exit_code == 0, reference.output

    single = tmp_path / "single" / "one"
    for resumed in (run, alone / "cluster"):
        for mine, theirs in zip(last_weights(resumed), last_weights(single)):
            np.testing.assert_allclose(mine, theirs, atol=WEIGHT_TOLERANCE)
        with np.load(snapshot_at(resumed, reached) / "states.npz") as mine, \
                np.load(snapshot_at(single, reached) / "states.npz") as theirs:
            for name in ("layer0_state0", "layer0_state1"):
                np.testing.assert_allclose(mine[name], theirs[name], atol=WEIGHT_TOLERANCE)
