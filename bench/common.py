"""What the benchmarks share: timing, the machine description and quiet TensorFlow logging.

Absolute times on a shared 2-core machine move with whatever else runs, so every figure is a median
over several repeats, the load average is recorded before and after, and comparisons are made as
ratios between variants measured in the same run (interleaved where it matters).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository
RESULTS = ROOT / "bench" / "results"
BLAS_VARIABLE = "OPENBLAS_CORETYPE"


def quiet_tensorflow() -> None:
    """Silence TensorFlow's start-up chatter; call before TensorFlow is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def median(values: list[float]) -> float:
    return statistics.median(values)


def time_once(function: Callable[[], object]) -> float:
    """Seconds one call takes."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def summary(seconds: list[float]) -> dict:
    """Median, fastest and slowest of a list of timings, in seconds, and how many there were."""
    return {"median": median(seconds), "min": min(seconds), "max": max(seconds), "repeats": len(seconds)}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_model() -> str:
    from chargen.cpuinfo import first_cpu_fields

    return first_cpu_fields().get("model name") or platform.processor() or "unknown"


def blas_setting() -> str:
    """How OpenBLAS picks its kernels in this process: the OPENBLAS_CORETYPE value, or "auto"."""
    return os.environ.get(BLAS_VARIABLE) or "auto"


def machine(packages: bool = True) -> dict:
    """The facts a reader needs to judge the figures: CPU, cores, load, versions, BLAS settings."""
    import numpy as np

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "platform": platform.platform(),
        "load_average": load_average(),
        "environment": {
            name: os.environ.get(name)
            for name in (BLAS_VARIABLE, "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "TF_NUM_INTEROP_THREADS",
                         "TF_NUM_INTRAOP_THREADS", "TF_ENABLE_ONEDNN_OPTS")
        },
    }
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # show_config's layout is informal; the figure does not depend on it
        info["numpy_blas"] = "unknown"
    if packages:
        import keras
        import tensorflow as tf

        import chargen

        info.update(tensorflow=tf.__version__, keras=keras.__version__, chargen=chargen.__version__)
    return info


def format_number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def print_table(title: str, headers: list[str], rows: list[list[str]], note: str | None = None) -> None:
    """A plain text table, numbers right-aligned, first column left-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    line = "  ".join("-" * width for width in widths)
    print(f"\n{title}")
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    print(line)
    for row in rows:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    if note:
        print(note)
