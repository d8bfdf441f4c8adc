"""The compiled-step cache (`chargen/compile_cache.py`): where it lives, how it joins TF_XLA_FLAGS, that damaged
entries go before TensorFlow meets them, and that a second `chargen train` loads the step instead of compiling it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chargen import compile_cache

from helpers import TINY, write_corpus

FLAG = "--tf_xla_persistent_cache_directory"


def varint(value: int) -> bytes:
    """Protocol buffers' variable-length integer, written out here from the wire format's definition."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, payload: bytes | int) -> bytes:
    """One field: an int as a varint (wire type 0), bytes length-delimited (wire type 2)."""
    if isinstance(payload, int):
        return varint(number << 3) + varint(payload)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def entry_bytes(signature: int, cluster: int, executable: bytes = b"\x7fELF machine code") -> bytes:
    """A cache entry as TensorFlow lays it out (XlaSerializedCacheEntry: key, HLO program, executable)."""
    key = field(1, signature) + field(2, cluster) + field(3, b"XLA_CPU_JIT") + field(4, b"xla_compile_cache")
    return field(1, key) + field(2, field(1, b"a_program")) + field(3, executable)


def entry_name(signature: int, cluster: int) -> str:
    return f"xla_compile_cache__{signature}__{cluster}__XLA_CPU_JIT.pb"


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("CHARGEN_CACHE_DIR", str(folder))
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    return folder


def test_enable_points_tensorflow_at_a_folder_of_the_cache_that_names_version_and_flags(cache_dir, monkeypatch):
    environ = {"TF_XLA_FLAGS": "--tf_xla_auto_jit=0"}
    folder = compile_cache.enable(environ)
    assert folder.is_dir() and folder.parent == cache_dir / "compiled"
    assert folder.name.startswith("tensorflow-2.")
    assert environ["TF_XLA_FLAGS"].startswith("--tf_xla_auto_jit=0 ")  # the user's flags kept, ours after
    assert f'{FLAG}="{folder}"' in environ["TF_XLA_FLAGS"]
    assert "--tf_xla_persistent_cache_device_types=CPU" in environ["TF_XLA_FLAGS"]
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=true")  # other machine code: another folder
    assert compile_cache.step_folder() != folder


@pytest.mark.parametrize("flags", [f"{FLAG}=/somewhere/else", "/etc/xla-flags.txt"])
def test_enable_leaves_a_users_own_cache_or_flags_file_alone(cache_dir, flags):
    environ = {"TF_XLA_FLAGS": flags}
    assert compile_cache.enable(environ) is None
    assert environ == {"TF_XLA_FLAGS": flags}


def test_enable_stays_off_when_the_folder_cannot_be_made(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CHARGEN_CACHE_DIR", str(blocker / "cache"))
    environ = {}
    assert compile_cache.enable(environ) is None
    assert environ == {}


def test_damaged_entries_are_removed_and_whole_ones_kept(cache_dir):
    folder = compile_cache.enable({})
    whole = folder / entry_name(11, 22)
    whole.write_bytes(entry_bytes(11, 22))
    data = entry_bytes(33, 44)
    damaged = {}
    for cut in (0, 1, len(data) // 2, len(data) - 1):  # a crash or a full disk cuts a file anywhere
        damaged[folder / entry_name(33 + cut, 44)] = entry_bytes(33 + cut, 44)[:cut]
    damaged[folder / entry_name(55, 66)] = entry_bytes(55, 67)  # another entry's key under this name
    damaged[folder / entry_name(77, 88)] = entry_bytes(77, 88, executable=b"")  # no machine code
    for path, content in damaged.items():
        path.write_bytes(content)
    other = folder / (entry_name(99, 1) + "vm-123.tmp")  # TensorFlow's file being written: not ours to judge
    other.write_bytes(b"")

    compile_cache.enable({})

    assert sorted(folder.iterdir()) == sorted([whole, other])


def train(corpus: Path, checkpoints: Path, name: str, env: dict) -> tuple[str, list[float]]:
    """`chargen train` with XLA in a process of its own: TensorFlow's log of the persistent cache, and the losses."""
    options = [option for option in TINY if option != "--no-xla"]
    done = subprocess.run([sys.executable, "-m", "chargen", "train", str(corpus), *options, "--steps", "2",
                           "--checkpoint-dir", str(checkpoints), "--run-name", name],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    metrics = [json.loads(line) for line in (checkpoints / name / "metrics.jsonl").read_text().splitlines()]
    return done.stderr, [record["loss"] for record in metrics] + [record["val_loss"] for record in metrics]


@pytest.mark.slow
def test_a_second_train_loads_the_compiled_step_and_trains_alike(tmp_path):
    corpus = write_corpus(tmp_path / "words.txt")
    env = {**os.environ, "CHARGEN_CACHE_DIR": str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "0",
           "TF_CPP_VMODULE": "device_executable_persistor=1"}  # TensorFlow logs each entry it saves or loads
    env.pop("TF_XLA_FLAGS", None)
    first_log, first_losses = train(corpus, tmp_path / "runs", "first", env)
    assert "Serializing and saving cache entry" in first_log and "Loading cached entry" not in first_log
    (entry,) = (tmp_path / "cache" / "compiled").glob("*/*.pb")
    written = entry.stat().st_ino
    damaged = entry.with_name(entry_name(1, 2))
    damaged.write_bytes(entry.read_bytes()[:100])

    second_log, second_losses = train(corpus, tmp_path / "runs", "second", env)

    assert "Loading cached entry" in second_log and "Serializing and saving cache entry" not in second_log
    assert entry.stat().st_ino == written  # loaded, not compiled and replaced
    assert not damaged.exists()
    assert second_losses == first_losses
