"""Run folders: everything a trained model needs to be sampled, evaluated and resumed.

    checkpoints/<run>/
      config.json        hyperparameters, versions, corpus size and sha256 (written once)
      vocab.json         the characters, in id order
      metrics.jsonl      one JSON line per evaluation
      pointers.json      which snapshot is the last and which the best
      snapshots/step-0001200-1a2b3c/
        model.keras      the Keras model (loaded with safe mode on)
        optimizer.npz    the optimiser's variables, in order (float16 runs: the loss scale's, then Adam's)
        progress.json    step, characters seen, best and last validation bits per character
        states.npz       the carried recurrent states, as float32 (stateful runs only)

Every write is atomic: a snapshot is written into a temporary folder and renamed into place, and
the small JSON files are written to a temporary file and renamed. A process killed at any moment
leaves either the previous snapshot or the new one, never half of one; pointers.json is updated
only after its snapshot is complete, and a run whose pointers are lost falls back to its newest
complete snapshot. Files and their folder are flushed to disk (fsync) before the rename that
publishes them, and the rename itself after, so a power cut also leaves the old or the new
(`atomic.py`). Only this module knows the folder's layout; `run_info.py` presents a run.

Under several workers (TF_CONFIG, see `distribution.py`) only the chief writes: on the other workers a
`Run` reads (to resume) but its writes do nothing, so the folder has one writer whatever the cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import zipfile
from pathlib import Path

import numpy as np

from chargen.atomic import TEMPORARY_PREFIX, atomic_folder, atomic_write_text
from chargen.config import TrainingConfig
from chargen.distribution import this_process_writes
from chargen.errors import ChargenError
from chargen.vocab import Vocabulary

FORMAT_VERSION = 1
SNAPSHOTS = "snapshots"


def _read_json(path: Path, what: str, run: Path) -> dict:
    """A JSON object from a run's file; a missing, unparsable or non-object file is a ChargenError."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ChargenError(f"run {run} has no {what} ({Path(path).name}); it is not a complete chargen run") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ChargenError(f"run {run} has a damaged {what} ({Path(path).name}: {error}); "
                           "delete the run or restore the file") from None
    if not isinstance(data, dict):
        raise ChargenError(f"run {run} has a damaged {what} ({Path(path).name} holds a JSON {type(data).__name__}, "
                           "not an object); delete the run or restore the file")
    return data


class Run:
    """One run folder. Create it with `Run.create`, open an existing one with `Run.open`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.writes = this_process_writes()  # False on a worker that is not the chief

    @property
    def name(self) -> str:
        return self.path.name

    @classmethod
    def create(cls, path: Path, config: dict, vocab: Vocabulary) -> Run:
        """Make a new run folder with its config and vocabulary; an existing run is never overwritten."""
        path = Path(path)
        if not this_process_writes():
            return cls(path)  # the chief creates it
        if path.exists() and any(path.iterdir()):
            raise ChargenError(f"run folder {path} already exists; pass --resume to continue it "
                               "or choose another --run-name")
        try:
            (path / SNAPSHOTS).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ChargenError(f"cannot create the run folder {path} ({error.strerror}); "
                               "choose another --checkpoint-dir") from None
        run = cls(path)
        atomic_write_text(path / "vocab.json", vocab.to_json())
        atomic_write_text(path / "config.json", json.dumps({"format_version": FORMAT_VERSION, **config}, indent=2))
        return run

    @classmethod
    def open(cls, path: Path) -> Run:
        """An existing run; checks that it is a chargen run this version can read."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ChargenError(f"{path} is not a chargen run (no config.json); train one with `chargen train`")
        run = cls(path)
        config = run.config
        version = config.get("format_version")
        written_by = (config.get("versions") or {}).get("chargen") if isinstance(config.get("versions"), dict) else None
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
            needed = f"chargen {written_by} or newer" if isinstance(written_by, str) else "a newer chargen"
            raise ChargenError(f"run {path} was written by {needed.removesuffix(' or newer')} in checkpoint format "
                               f"{version}, and this chargen reads format {FORMAT_VERSION}; install {needed} to "
                               f"use it (this is chargen {_version()})")
        if version != FORMAT_VERSION:
            raise ChargenError(
                f"run {path} has checkpoint format {version!r} (config.json field format_version), and this chargen "
                f"reads format {FORMAT_VERSION}; the file is damaged: restore it or delete the run"
            )
        if not isinstance(config.get("training"), dict):
            raise ChargenError(f"run {path} has a damaged config (config.json has no \"training\" object); "
                               "delete the run or restore the file")
        TrainingConfig.from_saved(config["training"])  # every field's type and range, named if wrong
        vocab_size = config.get("vocab_size")
        if vocab_size is not None and vocab_size != len(run.vocabulary()):
            raise ChargenError(f"run {path} has config.json field vocab_size = {vocab_size!r} but its vocab.json "
                               f"holds {len(run.vocabulary())} characters; a file is damaged: restore it or delete "
                               "the run")
        return run

    @property
    def config(self) -> dict:
        return _read_json(self.path / "config.json", "config", self.path)

    def vocabulary(self) -> Vocabulary:
        try:
            return Vocabulary.from_json((self.path / "vocab.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ChargenError(f"run {self.path} has no vocab.json; it is not a complete chargen run") from None
        except (ChargenError, ValueError) as error:
            raise ChargenError(f"run {self.path} has a damaged vocab.json ({error}); restore it or delete the run") \
                from None

    # Snapshots ---------------------------------------------------------------------------------

    def save_snapshot(self, model, optimizer, progress: dict, states=None, best: bool = False) -> Path | None:
        """Write a complete snapshot atomically, then point `last` (and `best` if asked) at it; None on a worker
        that is not the chief (nothing written)."""
        if not self.writes:
            return None
        snapshots = self.path / SNAPSHOTS
        name = f"step-{progress['step']:07d}-{uuid.uuid4().hex[:6]}"
        with atomic_folder(snapshots / name) as temporary:
            model.save(temporary / "model.keras")
            np.savez(temporary / "optimizer.npz", *[np.asarray(v) for v in optimizer.variables])
            if states is not None:
                # float32 whatever the run's precision: exact for bfloat16 and float16 states, and readable by numpy
                flat = {f"layer{i}_state{j}": np.asarray(s, np.float32) for i, layer in enumerate(states)
                        for j, s in enumerate(layer)}
                np.savez(temporary / "states.npz", **flat)
            (temporary / "progress.json").write_text(json.dumps(progress, indent=2), encoding="utf-8")
        pointers = self._pointers()
        pointers["last"] = name
        if best or "best" not in pointers:
            pointers["best"] = name
        atomic_write_text(self.path / "pointers.json", json.dumps(pointers, indent=2))
        self._prune(keep=set(pointers.values()))
        return snapshots / name

    def _pointers(self) -> dict:
        try:
            pointers = json.loads((self.path / "pointers.json").read_text(encoding="utf-8"))
            if all((self.path / SNAPSHOTS / pointers[key]).is_dir() for key in ("last", "best")):
                return pointers
        except (OSError, ValueError, KeyError, TypeError):
            pass
        newest = self._complete_snapshots()[-1:]  # pointers lost or damaged: trust the newest snapshot
        return {"last": newest[0].name, "best": newest[0].name} if newest else {}

    def _complete_snapshots(self) -> list[Path]:
        folder = self.path / SNAPSHOTS
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(TEMPORARY_PREFIX))

    def _prune(self, keep: set[str]) -> None:
        """Remove the snapshots no pointer names, and what a killed save left behind: temporary
        snapshot folders and temporary files (this save's own are renamed into place by now)."""
        for snapshot in (self.path / SNAPSHOTS).iterdir():
            if snapshot.name not in keep:
                shutil.rmtree(snapshot, ignore_errors=True)
        for leftover in self.path.glob(f"{TEMPORARY_PREFIX}*"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)

    def snapshot_path(self, which: str = "last") -> Path:
        """The folder of the `last` or `best` snapshot."""
        pointers = self._pointers()
        if which not in pointers:
            raise ChargenError(f"run {self.path} has no saved model yet; "
                               "train it (or let training reach its first save)")
        return self.path / SNAPSHOTS / pointers[which]

    def load_model(self, which: str = "last"):
        """The saved Keras model, loaded with safe mode on."""
        import keras

        import chargen.model  # noqa: F401  (registers the classes the file names)

        path = self.snapshot_path(which) / "model.keras"
        if not path.is_file():
            raise ChargenError(f"the model file {path} is missing; delete that snapshot or the run")
        if not zipfile.is_zipfile(path):  # Keras would call a damaged file "not found"
            raise ChargenError(f"cannot load the model in {path} (not a .keras zip archive); "
                               "the file is damaged: delete that snapshot or the run")
        check_model_classes(path)
        try:
            return keras.saving.load_model(path, safe_mode=True)
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ChargenError(f"cannot load the model in {path} ({first_line[:200]}); "
                               "the file is damaged: delete that snapshot or the run") from None

    def load_progress(self, which: str = "last") -> dict:
        return _read_json(self.snapshot_path(which) / "progress.json", "progress record", self.path)

    def restore_optimizer(self, optimizer, which: str = "last") -> None:
        """Copy the saved optimiser variables into `optimizer`, which must already be built."""
        path = self.snapshot_path(which) / "optimizer.npz"
        try:
            with np.load(path) as saved:
                values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            raise ChargenError(f"cannot read the optimiser state in {path} ({error}); "
                               "delete that snapshot or start a new run") from None
        variables = optimizer.variables
        if len(values) != len(variables) or any(v.shape != tuple(var.shape) for v, var in zip(values, variables)):
            raise ChargenError(f"the optimiser state in {path} does not fit this model; start a new run")
        for variable, value in zip(variables, values):
            variable.assign(value)

    def load_states(self, num_layers: int, which: str = "last"):
        """The carried recurrent states of a stateful run, or None if it has none."""
        path = self.snapshot_path(which) / "states.npz"
        if not path.exists():
            return None
        with np.load(path) as saved:
            return [
                [saved[key] for key in sorted(k for k in saved.files if k.startswith(f"layer{i}_"))]
                for i in range(num_layers)
            ]

    # Metrics -----------------------------------------------------------------------------------

    def append_metrics(self, record: dict) -> None:
        """One JSON line per evaluation; a reader skips a torn last line (see `metrics`).

        A line torn by a kill is ended first, so the record after it (from the resumed run) stays whole.
        """
        if not self.writes:
            return
        path = self.path / "metrics.jsonl"
        torn = False
        if path.exists() and path.stat().st_size > 0:
            with open(path, "rb") as file:
                file.seek(-1, os.SEEK_END)
                torn = file.read(1) != b"\n"
        with open(path, "a", encoding="utf-8") as file:
            file.write(("\n" if torn else "") + json.dumps(record) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def metrics(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a line torn by a kill mid-write
        return records


# The objects a model file of chargen's may name: its own registered classes, and Keras's dtype policies.
_CHARGEN_REGISTERED = "chargen>"
_KERAS_CLASSES_ALLOWED = {("keras", "DTypePolicy"), ("keras", "FloatDTypePolicy")}


def check_model_classes(path: Path) -> None:
    """Refuse a model file that names any class but chargen's own, by reading its config before Keras does.

    A `.keras` file can name any importable class, or carry a Python function (a `Lambda` layer); loading
    one would run code that came with the file. Nothing in the file is deserialised here: its config.json
    is read as plain JSON and every object it names must be on the list above.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            saved = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise ChargenError(f"cannot load the model in {path} (no readable config.json inside: {error}); "
                           "the file is damaged: delete that snapshot or the run") from None
    foreign = list(dict.fromkeys(
        f"{module}.{class_name}" for module, class_name, registered in _named_classes(saved)
        if not (module.startswith("chargen.") and registered.startswith(_CHARGEN_REGISTERED))
        and (module, class_name) not in _KERAS_CLASSES_ALLOWED))
    if foreign:
        raise ChargenError(f"refusing to load {path}: it names {', '.join(foreign[:5])}, not chargen's layers, "
                           "and loading it could run code that came with the file; load only models that "
                           "chargen saved")
    if not isinstance(saved, dict) or saved.get("registered_name") != f"{_CHARGEN_REGISTERED}CharModel":
        raise ChargenError(f"refusing to load {path}: it does not hold a chargen model; "
                           "load only models that chargen saved")


def _named_classes(value):
    """(module, class_name, registered_name) of every serialised object in a Keras config, at any depth."""
    if isinstance(value, dict):
        if "class_name" in value:
            yield str(value.get("module")), str(value.get("class_name")), str(value.get("registered_name"))
        for item in value.values():
            yield from _named_classes(item)
    elif isinstance(value, list):
        for item in value:
            yield from _named_classes(item)


def _version() -> str:
    import chargen

    return chargen.__version__


def resolve_run(run: str | None, checkpoint_dir: Path) -> Run:
    """A run named by path or by name inside `checkpoint_dir`; None means the newest run there."""
    checkpoint_dir = Path(checkpoint_dir)
    if run is None:
        runs = [p.parent for p in checkpoint_dir.glob("*/config.json")] if checkpoint_dir.is_dir() else []
        if not runs:
            raise ChargenError(f"no runs in {checkpoint_dir}; "
                               "train one with `chargen train CORPUS` or name a run folder")
        return Run.open(max(runs, key=_last_saved))
    for candidate in (Path(run), checkpoint_dir / run):
        if candidate.is_dir():
            return Run.open(candidate)
    raise ChargenError(f"no run named {run!r} (looked for the folder {run} and {checkpoint_dir / run}); "
                       f"`ls {checkpoint_dir}` lists the runs")


def _last_saved(run_path: Path) -> float:
    """When a run last saved a snapshot (its pointers), or was created if it never did."""
    pointers = run_path / "pointers.json"
    return (pointers if pointers.exists() else run_path / "config.json").stat().st_mtime


def discard_unsaved_run(path: Path) -> None:
    """Remove a run folder that never completed a snapshot (training failed before its first save): it holds
    nothing to keep, and left behind it would block its name and be the run `chargen sample` picks as newest."""
    snapshots = Path(path) / SNAPSHOTS
    if not this_process_writes():
        return
    if snapshots.is_dir() and all(p.name.startswith(TEMPORARY_PREFIX) for p in snapshots.iterdir()):
        shutil.rmtree(path, ignore_errors=True)
