"""`chargen plot`: the bits per character of one or more runs, drawn into one PNG without a server.

Two panels side by side, training and validation, sharing their vertical axis; each run is one colour in
both, labelled by the options in which the runs differ ("cell=gru" against "cell=lstm"). The points are the
evaluations in each run's metrics.jsonl, against the step or the training time. matplotlib is an optional
extra (`pip install 'chargen[plot]'`); it draws with its non-interactive Agg canvas, so no display is needed.
No TensorFlow here.
"""

from __future__ import annotations

from pathlib import Path

from chargen.atomic import atomic_file
from chargen.checkpoints import Run
from chargen.config import OPTIONS, TrainingConfig
from chargen.errors import ChargenError

DPI = 100
X_AXES = ("step", "time")
SIZE_RANGE = (200, 8000)  # pixels a side
TIME_UNITS = ((3 * 3600, 3600, "hours"), (300, 60, "minutes"), (0, 1, "seconds"))  # (from, seconds per unit, name)


def difference_labels(runs: list[tuple[str, dict]]) -> list[str]:
    """A label per run from the settings in which the runs differ, e.g. ["cell=gru", "cell=lstm"].

    Args:
        runs: (name, the run's config.json) per run.

    Settings are the training options (by their flag, "layers=2") and the corpus. A run whose settings
    equal another's is told apart by its name; with nothing to tell apart (one run), the label is the name.
    """
    settings = [_settings(config) for _, config in runs]
    differing = [key for key in settings[0] if len({repr(s[key]) for s in settings}) > 1]
    labels = [", ".join(f"{key}={_shown(s[key])}" for key in differing) for s in settings]
    return [label if label and labels.count(label) == 1 else (f"{label} ({name})" if label else name)
            for label, (name, _) in zip(labels, runs)]


def _settings(config: dict) -> dict:
    training = TrainingConfig.from_saved(config["training"]).to_dict()  # older runs get their implied values
    settings = {OPTIONS[name].flag_name.removeprefix("--"): value for name, value in training.items()}
    settings["corpus"] = " + ".join(source[0] for source in config.get("corpus", {}).get("sources", []))
    return settings


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)


def curves(run: Run) -> list[dict]:
    """The run's evaluations in step order, one per step: the newest if a resumed run evaluated a step twice
    (killed after logging an evaluation, before saving its snapshot)."""
    by_step = {record["step"]: record for record in run.metrics() if isinstance(record.get("step"), int)}
    return [by_step[step] for step in sorted(by_step)]


def _time_unit(seconds: float) -> tuple[float, str]:
    return next((per_unit, name) for threshold, per_unit, name in TIME_UNITS if seconds >= threshold)


def plot_runs(runs: list[Run], output: Path, x: str = "step", width: int = 1200, height: int = 450) -> Path:
    """Draw the runs' training and validation bits per character against `x` ("step" or "time") into the PNG
    `output`, `width` x `height` pixels; returns its path."""
    if x not in X_AXES:
        raise ChargenError(f"the horizontal axis is one of {', '.join(X_AXES)}. Received: --x {x}")
    for flag, value in (("--width", width), ("--height", height)):
        if not SIZE_RANGE[0] <= value <= SIZE_RANGE[1]:
            raise ChargenError(f"{flag} is in pixels, from {SIZE_RANGE[0]} to {SIZE_RANGE[1]}. "
                               f"Received: {flag} {value}")
    figure_class, canvas_class = _matplotlib()
    series = [curves(run) for run in runs]
    for run, records in zip(runs, series):
        if not records:
            raise ChargenError(f"run {run.name} has no evaluation yet (its metrics.jsonl is empty); "
                               "plot it after its first evaluation")
    labels = difference_labels([(run.name, run.config) for run in runs])
    longest = max(record.get("elapsed_seconds") or 0.0 for records in series for record in records)
    per_unit, unit = _time_unit(longest)

    figure = figure_class(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    canvas_class(figure)
    train_axes, validation_axes = figure.subplots(1, 2, sharey=True)
    for index, (records, label) in enumerate(zip(series, labels)):
        color = f"C{index % 10}"
        for axes, key in ((train_axes, "bpc"), (validation_axes, "val_bpc")):
            points = [(record["step"] if x == "step" else record["elapsed_seconds"] / per_unit, record[key])
                      for record in records if record.get(key) is not None]
            if points:
                xs, ys = zip(*points)
                axes.plot(xs, ys, color=color, marker="." if len(points) < 50 else None, label=label)
    for axes, title in ((train_axes, "training (the batch of the step)"), (validation_axes, "validation")):
        axes.set_title(title)
        axes.set_xlabel("step" if x == "step" else f"training time ({unit})")
        axes.grid(alpha=0.3)
    train_axes.set_ylabel("bits per character")
    (validation_axes if validation_axes.lines else train_axes).legend(fontsize="small")  # no validation: beside
    output = Path(output)
    try:
        with atomic_file(output, binary=True) as file:
            figure.savefig(file, format="png", dpi=DPI)
        output.chmod(0o644)  # a picture to share, not the private temporary file it was written as
    except OSError as error:
        raise ChargenError(f"cannot write {output} ({error.strerror}); choose another --output") from None
    return output


def _matplotlib():
    """matplotlib's Figure and Agg canvas classes, or the one-line way to install them."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ChargenError("chargen plot needs matplotlib, an optional extra: pip install 'chargen[plot]'") from None
    return Figure, FigureCanvasAgg
