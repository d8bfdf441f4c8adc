"""Names that become paths stay where they belong: a run name is one folder inside --checkpoint-dir,
and a snapshot pointer one folder inside the run's snapshots/."""

from __future__ import annotations

import json

import pytest

from chargen import checkpoints
from chargen.checkpoints import Run
from chargen.cli import _default_run_name

from helpers import TINY, assert_user_error, run_cli, write_corpus

ESCAPING_NAMES = ["..", ".", "...", "", "../escaped", "a/b", "/tmp/absolute", "a\\b", "nul\x00byte", "line\nbreak"]


@pytest.mark.parametrize("name", ESCAPING_NAMES)
def test_a_run_name_that_is_not_one_plain_folder_name_is_refused_before_anything_is_written(tmp_path, name):
    corpus = write_corpus(tmp_path / "words.txt")
    checkpoint_dir = tmp_path / "inside" / "ck"
    result = run_cli("train", corpus, *TINY, "--run-name", name, "--checkpoint-dir", checkpoint_dir)
    line = assert_user_error(result, "--run-name", "one folder name inside --checkpoint-dir", "Received")
    assert repr(name) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["words.txt"]  # no folder made, here or above


@pytest.mark.parametrize("name", ["../tiny", "/tiny", ""])
def test_resume_takes_only_a_run_name_inside_the_checkpoint_folder(run_copy, name):
    result = run_cli("train", run_copy["corpus"], *TINY, "--resume", "--run-name", name,
                     "--checkpoint-dir", run_copy["checkpoint_dir"] / "sub")
    assert_user_error(result, "--run-name", "Received")


@pytest.mark.parametrize("name", ["tiny", "v1.2", ".hidden", "run..2", "名前", "with space"])
def test_plain_names_are_accepted(name):
    checkpoints.check_run_name(name)


def test_a_default_run_name_is_one_plain_name_whatever_the_corpus_file_is_called():
    name = _default_run_name("gru", ["notes\nfrom\tme.txt"])
    assert name.startswith("gru-notes_from_me-")
    checkpoints.check_run_name(name)


def test_snapshot_pointers_that_lead_out_of_the_run_are_not_followed(run_copy, tmp_path):
    """A hand-edited or hostile pointers.json falls back to the run's own newest snapshot."""
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    run = Run.open(run_copy["run"])
    own = run.snapshot_path("last")
    (run.path / "pointers.json").write_text(json.dumps({"last": "../../../decoy", "best": str(decoy)}))
    assert run.snapshot_path("best") == own and run.snapshot_path("last") == own
