"""Fixtures shared by the test modules: one tiny trained run for every test that only reads a run."""

from __future__ import annotations

import os
import shutil

import pytest

from helpers import TINY, run_cli, write_corpus

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker process per core: the tests' models are tiny, and two workers each
    # spreading TensorFlow's threads over both cores would only make them wait for each other.
    for variable in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(variable, "1")

# The XLA tests check that a compiled step computes what the plain one does, never how fast it runs:
# compiling without LLVM's costly optimisations keeps the semantics and saves about a sixth of their time.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")


@pytest.fixture(scope="session", autouse=True)
def encoded_cache_in_a_temporary_folder(tmp_path_factory):
    """Corpora the tests train on are encoded into a folder of the session, never into the user's cache."""
    saved = os.environ.get("CHARGEN_CACHE_DIR")
    os.environ["CHARGEN_CACHE_DIR"] = str(tmp_path_factory.mktemp("encoded-cache"))
    yield
    if saved is None:
        del os.environ["CHARGEN_CACHE_DIR"]
    else:
        os.environ["CHARGEN_CACHE_DIR"] = saved


@pytest.fixture(autouse=True)
def no_debug_from_environment(monkeypatch):
    """A developer's CHARGEN_DEBUG=1 must not turn the one-line errors the tests expect into tracebacks."""
    monkeypatch.delenv("CHARGEN_DEBUG", raising=False)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """One tiny run trained through the CLI, with its evaluation lines and previews; read it, never change it.

    A test that damages or resumes a run works on `run_copy`.
    """
    folder = tmp_path_factory.mktemp("trained")
    corpus = write_corpus(folder / "words.txt")
    checkpoint_dir = folder / "checkpoints"
    # Keep the evaluation lines and previews, and the histograms test_tensorboard.py reads.
    options = [option for option in TINY if option not in ("--quiet", "--no-histograms")]
    result = run_cli("train", corpus, *options, "--checkpoint-dir", checkpoint_dir, "--run-name", "tiny",
                     "--preview-length", "30")
    assert result.exit_code == 0, result.output
    return {"corpus": corpus, "checkpoint_dir": checkpoint_dir, "run": checkpoint_dir / "tiny", "result": result}


@pytest.fixture
def run_copy(trained, tmp_path):
    """A copy of the shared run, its checkpoint folder and corpus, for a test to damage or extend."""
    checkpoint_dir = tmp_path / "checkpoints"
    shutil.copytree(trained["checkpoint_dir"], checkpoint_dir)
    return {"corpus": trained["corpus"], "checkpoint_dir": checkpoint_dir, "run": checkpoint_dir / "tiny"}
