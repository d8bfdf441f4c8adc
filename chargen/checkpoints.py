"""Run folders: everything a trained model needs to be sampled, evaluated and resumed.

    checkpoints/<run>/
      config.json        hyperparameters, versions, corpus size and sha256 (written once)
      vocab.json         the characters, in id order
      metrics.jsonl      one JSON line per evaluation
      pointers.json      which snapshot is the last and which the best
      writer.lock        while a process trains the run: its lock, naming it (see `run_lock.py`)
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

One writer per run: a training holds the run's lock (`writing`), so a second one is refused at once;
readers take no lock. A save publishes a new snapshot before it prunes the one a reader may be
opening, and a read whose snapshot was pruned under it reads the newer one the pointers name.
A run's name is one plain folder name inside the checkpoint folder (`check_run_name`).

Under several workers (TF_CONFIG, see `distribution.py`) only the chief writes: on the other workers a
`Run` reads (to resume) but its writes do nothing, so the folder has one writer whatever the cluster.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePath

import numpy as np

from chargen import budget
from chargen.atomic import TEMPORARY_PREFIX, atomic_folder, atomic_write_text
from chargen.config import TrainingConfig
from chargen.distribution import this_process_writes
from chargen.errors import ChargenError
from chargen.run_lock import WriterLock
from chargen.vocab import Vocabulary

FORMAT_VERSION = 1
SNAPSHOTS = "snapshots"
LOCK_FILE = "writer.lock"
# A reader whose snapshot a writer pruned under it tries the newer one; each retry needs a save to have
# completed during the previous read, so a handful covers a writer saving at any rate a model allows.
SNAPSHOT_READ_ATTEMPTS = 5
RUN_NAME_RULE = ("a run name is one folder name inside --checkpoint-dir: not empty, not only dots, "
                 "without / or \\ and without control characters")


def name_problem(name: object) -> str | None:
    """Why `name` cannot be one plain folder name inside another (None when it can)."""
    if not isinstance(name, str) or not name:
        return "it is empty"
    if set(name) == {"."}:
        return "it is only dots"
    if "/" in name or "\\" in name or PurePath(name).drive:  # a drive ("C:x") would leave the folder on Windows
        return "it holds a path separator"
    if any(ord(character) < 32 or ord(character) == 127 for character in name):
        return "it holds a control character"
    return None


def check_run_name(name: str, flag: str = "--run-name") -> None:
    """Refuse a run name that would put the run anywhere but directly inside the checkpoint folder."""
    problem = name_problem(name)
    if problem:
        raise ChargenError(f"{flag} cannot name a run's folder: {problem}; {RUN_NAME_RULE}. Received: {flag} {name!r}")


def _disk_trouble(error: OSError) -> tuple[str, str]:
    """What went wrong with a write, and what to do about it, from its OSError."""
    reason = error.strerror or str(error) or type(error).__name__
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return reason, "free some space"
    return reason, "fix the cause"


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
        _refuse_existing(path)
        try:
            (path / SNAPSHOTS).mkdir(parents=True, exist_ok=True)
            atomic_write_text(path / "vocab.json", vocab.to_json())
            atomic_write_text(path / "config.json",
                              json.dumps({"format_version": FORMAT_VERSION, **config}, indent=2))
        except OSError as error:
            for made in (path / SNAPSHOTS, path / "vocab.json"):  # the folder held nothing before: undo
                with contextlib.suppress(OSError):
                    shutil.rmtree(made) if made.is_dir() else made.unlink()
            reason, remedy = _disk_trouble(error)
            raise ChargenError(f"cannot create the run folder {path} ({reason}); "
                               f"{remedy} or choose another --checkpoint-dir") from None
        return cls(path)

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
        training = TrainingConfig.from_saved(config["training"])  # every field's type and range, named if wrong
        vocab_size = config.get("vocab_size")
        if vocab_size is not None and vocab_size != len(run.vocabulary()):
            raise ChargenError(f"run {path} has config.json field vocab_size = {vocab_size!r} but its vocab.json "
                               f"holds {len(run.vocabulary())} characters; a file is damaged: restore it or delete "
                               "the run")
        budget.check_recorded_model(training, len(run.vocabulary()), path)
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
        pointers = self._pointers()
        try:
            with atomic_folder(snapshots / name) as temporary:
                model.save(temporary / "model.keras")
                np.savez(temporary / "optimizer.npz", *[np.asarray(v) for v in optimizer.variables])
                if states is not None:
                    # float32 whatever the run's precision: exact for bfloat16 and float16 states, readable by numpy
                    flat = {f"layer{i}_state{j}": np.asarray(s, np.float32) for i, layer in enumerate(states)
                            for j, s in enumerate(layer)}
                    np.savez(temporary / "states.npz", **flat)
                (temporary / "progress.json").write_text(json.dumps(progress, indent=2), encoding="utf-8")
            published = {**pointers, "last": name, **({"best": name} if best or "best" not in pointers else {})}
            atomic_write_text(self.path / "pointers.json", json.dumps(published, indent=2))
        except OSError as error:
            shutil.rmtree(snapshots / name, ignore_errors=True)  # complete but unpublished: give its space back
            raise self._unsaved(f"could not save step {progress['step']}", error, pointers) from None
        self._prune(keep=set(published.values()))
        return snapshots / name

    def _unsaved(self, what: str, error: OSError, pointers: dict) -> ChargenError:
        """The one line for a write that failed: what happened, what the run still holds, what to do."""
        reason, remedy = _disk_trouble(error)
        if "last" not in pointers:
            return ChargenError(f"{what} of run {self.path} ({reason}); it has no snapshot yet: {remedy}, "
                                "then train again")
        step = self.last_saved_step()
        kept = "its last snapshot" if step is None else f"its snapshot of step {step}"
        return ChargenError(f"{what} of run {self.path} ({reason}); the run keeps {kept}, intact: {remedy}, "
                            "then continue it with --resume")

    def last_saved_step(self) -> int | None:
        """The step of the last complete snapshot; None when there is none (or it cannot be read)."""
        try:
            return self.load_progress("last")["step"]
        except (ChargenError, KeyError):
            return None

    def _pointers(self) -> dict:
        try:
            pointers = json.loads((self.path / "pointers.json").read_text(encoding="utf-8"))
            # a pointer is a folder name inside snapshots/, never a path that leads out of the run
            if all(name_problem(pointers[key]) is None and (self.path / SNAPSHOTS / pointers[key]).is_dir()
                   for key in ("last", "best")):
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

    def _read_snapshot(self, which: str, read: Callable[[Path], object]):
        """`read(folder)` of the `which` snapshot; if a writer pruned that snapshot during the read (the pointers
        have moved on), `read` of the one they name now."""
        folder = self.snapshot_path(which)
        for _ in range(SNAPSHOT_READ_ATTEMPTS - 1):
            try:
                return read(folder)
            except (ChargenError, OSError, ValueError):
                newer = self.snapshot_path(which)
                if newer == folder:
                    raise  # the snapshot is still the one to read: it is damaged, not replaced
                folder = newer
        return read(folder)

    def load_model(self, which: str = "last"):
        """The saved Keras model, loaded with safe mode on."""
        return self._read_snapshot(which, self._load_model_from)

    def _load_model_from(self, snapshot: Path):
        import keras

        import chargen.model  # noqa: F401  (registers the classes the file names)

        path = snapshot / "model.keras"
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
        return self._read_snapshot(
            which, lambda snapshot: _read_json(snapshot / "progress.json", "progress record", self.path))

    def restore_optimizer(self, optimizer, which: str = "last") -> None:
        """Copy the saved optimiser variables into `optimizer`, which must already be built."""
        self._read_snapshot(which, lambda snapshot: self._restore_optimizer_from(snapshot, optimizer))

    def _restore_optimizer_from(self, snapshot: Path, optimizer) -> None:
        path = snapshot / "optimizer.npz"
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
        return self._read_snapshot(which, lambda snapshot: _read_states(snapshot / "states.npz", num_layers))

    # Metrics -----------------------------------------------------------------------------------

    def append_metrics(self, record: dict) -> None:
        """One JSON line per evaluation; a reader skips a torn last line (see `metrics`).

        A line torn by a kill is ended first, so the record after it (from the resumed run) stays whole.
        """
        if not self.writes:
            return
        path = self.path / "metrics.jsonl"
        try:
            torn = False
            if path.exists() and path.stat().st_size > 0:
                with open(path, "rb") as file:
                    file.seek(-1, os.SEEK_END)
                    torn = file.read(1) != b"\n"
            with open(path, "a", encoding="utf-8") as file:
                file.write(("\n" if torn else "") + json.dumps(record) + "\n")
                file.flush()
                os.fsync(file.fileno())
        except OSError as error:
            raise self._unsaved(f"could not record the metrics of step {record.get('step')}", error,
                                self._pointers()) from None

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


def _read_states(path: Path, num_layers: int):
    if not path.exists():
        return None
    with np.load(path) as saved:
        return [
            [saved[key] for key in sorted(k for k in saved.files if k.startswith(f"layer{i}_"))]
            for i in range(num_layers)
        ]


def _refuse_existing(path: Path) -> None:
    """A new run may not take a folder that holds anything (its own lock aside)."""
    if path.exists() and any(entry.name != LOCK_FILE for entry in path.iterdir()):
        raise ChargenError(f"run folder {path} already exists; pass --resume to continue it "
                           "or choose another --run-name")


@contextlib.contextmanager
def writing(path: Path, new: bool) -> Iterator[None]:
    """Hold the run folder `path` for this process's writes: another process writing it is refused at once,
    naming it. Does nothing on a worker that is not the chief (it writes nothing).

    new: the run is to be created: its folder is made, and one that holds anything already is refused; the
    folders made here that end up empty (the training stopped before writing) are removed at the end.
    """
    path = Path(path)
    if not this_process_writes():
        yield
        return
    created = [folder for folder in (path, *path.parents) if not folder.exists()] if new else []
    lock = WriterLock(path / LOCK_FILE, f"run {path}")
    try:
        try:
            if new:
                path.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except OSError as error:
            reason, remedy = _disk_trouble(error)
            raise ChargenError(f"cannot write in the run folder {path} ({reason}); {remedy} "
                               "or choose another --checkpoint-dir") from None
        if new:
            _refuse_existing(path)
        yield
    finally:
        lock.release()
        for folder in created:  # the run's first, then the checkpoint folder if this made it
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty


def named_run_folder(name: str, checkpoint_dir: Path) -> Path:
    """The folder of the existing run `name` inside `checkpoint_dir` (a plain name, see `check_run_name`)."""
    check_run_name(name)
    path = Path(checkpoint_dir) / name
    if not path.is_dir():
        raise ChargenError(f"no run named {name!r} in {checkpoint_dir}; `ls {checkpoint_dir}` lists the runs")
    return path


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
