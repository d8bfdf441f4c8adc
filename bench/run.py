"""chargen benchmarks: training throughput against Keras's built-in layers, generation speed, and
bits per character after a short training budget and after ten minutes against Keras, and training on a
generated 4 GB corpus (memory, encoding speed, time to the first step). Prints tables and
writes JSON to bench/results/.

    python -m bench            # the full run (about 30 minutes on 2 cores, 20 of them the ten-minute row)
    python -m bench --quick    # small sizes, about 3 minutes: a check that everything runs
    python bench/run.py ...    # the same

See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    BLAS_VARIABLE,
    RESULTS,
    ROOT,
    blas_setting,
    format_number,
    machine,
    print_table,
    quiet_tensorflow,
)

SECTIONS = ("generation", "training", "quality", "ten-minutes", "big-corpus")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def other_blas_environment() -> tuple[str, dict]:
    """The environment with OPENBLAS_CORETYPE toggled: Haswell if unset here, unset if set here."""
    env = dict(os.environ)
    if env.get(BLAS_VARIABLE):
        del env[BLAS_VARIABLE]
        return "auto", env
    env[BLAS_VARIABLE] = "Haswell"
    return "Haswell", env


def run_other_blas(quick: bool) -> dict:
    """The NumpyStepper figures in a child process under the other OPENBLAS_CORETYPE setting."""
    label, env = other_blas_environment()
    command = [sys.executable, "-m", "bench.generation_speed", "--child"] + (["--quick"] if quick else [])
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return {"blas": label, "error": done.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------
# Tables


def print_machine(info: dict) -> None:
    coretype = info["environment"][BLAS_VARIABLE] or "unset"
    print(f"Machine: {info['cpu']}, {info['cores']} cores; load average {info['load_average']}; "
          f"numpy {info['numpy']} ({info['numpy_blas']}), OPENBLAS_CORETYPE={coretype}")
    if "tensorflow" in info:
        print(f"TensorFlow {info['tensorflow']}, Keras {info['keras']}, chargen {info['chargen']}, "
              f"Python {info['python']}")


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def print_training(result: dict) -> None:
    size = result["sizes"]
    peaks = result.get("peaks", {})
    lower = len(result.get("precisions", ["float32"])) > 1
    rows = []
    for row in result["rows"]:
        timing = row["seconds_per_step"]
        fraction = row.get("peak_fraction")
        rows.append([
            row["cell"], row["variant"], format_number(row["chars_per_second"]),
            format_number(timing["median"] * 1000), f"{timing['min'] * 1000:,.0f}-{timing['max'] * 1000:,.0f}",
            _ratio(row["ratio_to_keras"]), _ratio(row["ratio_to_faster_keras"]),
            *([_ratio(row.get("ratio_to_float32"))] if lower else []),
            "-" if fraction is None else f"{100 * fraction:.0f}%",
            format_number(row["compile_seconds"], 1), format_number(row["parameters"]),
        ])
    peak_note = "; ".join(f"{p} {peak['gflops']:,.0f} GFLOP/s" for p, peak in peaks.items())
    shape = " x ".join(map(str, size["product"])) if "product" in size else ""
    print_table(
        f"Training throughput: {size['layers']} layers x {size['units']} units, embedding {size['embedding']}, "
        f"batch {size['batch']}, window {size['window']}, vocab {result['vocab']} "
        f"(median of {size['rounds']} interleaved steps)",
        ["cell", "step", "chars/s", "ms/step", "range ms", "vs Keras", "vs faster Keras",
         *(["vs float32"] if lower else []), "% peak", "compile s", "parameters"],
        rows,
        "vs Keras: Keras's plain step's seconds / this step's, both in the row's precision (above 1 = faster than "
        "keras.layers.SimpleRNN/GRU/LSTM); vs faster Keras: the same against the faster of Keras's plain and XLA "
        "steps. Keras has no teacher-forcing mode; both chargen modes are compared with its BPTT step."
        + (" vs float32: the same step in float32's seconds / this one's." if lower else "")
        + f"\n% peak: the step's matrix products (6 x batch x window x weight entries) per second, over the rate of "
          f"one large product ({shape}) in the row's precision, timed in this run: {peak_note}.",
    )


def print_generation(result: dict, other: dict | None) -> None:
    net = result["network"]
    title = (f"Generation speed: {net['layers']}-layer {net['units']}-unit {net['cell'].upper()}, "
             f"vocab {net['vocab']}, strategy random; characters per second, all rows together")
    reference = {b: result["tf_function_step"][b]["chars_per_second"] for b in ("1", "64")}
    rows = []

    def add(label, figures, batch, target=None):
        value, best = figures[batch]["chars_per_second"], figures[batch]["best_chars_per_second"]
        met = "" if target is None else "/".join("yes" if v >= target else "NO" for v in (value, best))
        rows.append([label, batch, format_number(value), format_number(best), f"{value / reference[batch]:.1f}x",
                     "" if target is None else format_number(target), met])

    for batch in ("1", "64"):
        target = result["targets"][int(batch)]
        add(f"generate + NumpyStepper [BLAS {result['blas']}]", result["generate"], batch, target)
        if other and "generate" in other:
            add(f"generate + NumpyStepper [BLAS {other['blas']}]", other["generate"], batch, target)
        add(f"NumpyStepper step alone [BLAS {result['blas']}]", result["step"], batch)
        if other and "step" in other:
            add(f"NumpyStepper step alone [BLAS {other['blas']}]", other["step"], batch)
        add("tf.function step per character", result["tf_function_step"], batch)
        add("whole loop in one TF graph", result["graph_loop"], batch)
        add("whole loop in one TF graph, XLA", result["graph_loop_xla"], batch)
        add("Keras model per character (eager)", result["keras_eager"], batch)
    note = ("chars/s: median of the repeats; best: the fastest repeat. vs tf.fn: median chars/s over the compiled "
            "tf.function step's at the same batch. met: the median / the best repeat reaches the issue's target.")
    if other and "error" in other:
        note += f"\nThe run under BLAS {other['blas']} failed: {other['error']}"
    print_table(title, ["path", "batch", "chars/s", "best", "vs tf.fn", "target", "met"], rows, note)
    verdict = []
    for batch in ("1", "64"):
        figure = result["generate"][batch]
        verdict.append(f"batch {batch}: {'met' if figure['met'] else 'NOT met'} "
                       f"({figure['chars_per_second']:,.0f} of {figure['target']:,} chars/s)")
    print("Targets (median, BLAS " + result["blas"] + "): " + "; ".join(verdict))

    ceiling = result["product_ceiling"]
    if "unavailable" in ceiling["1"]:
        print(f"\nMatrix-product ceiling unavailable: {ceiling['1']['unavailable']}")
    else:
        rows = []
        for batch in ("1", "64"):
            products, step = ceiling[batch], result["step"][batch]
            rows.append([batch, format_number(products["microseconds_per_step"], 1),
                         format_number(step["microseconds_per_step"], 1),
                         format_number(products["chars_per_second"]), format_number(result["targets"][int(batch)]),
                         f"{products['gigabytes_per_second']:.0f}", f"{products['gflops']:.0f}"])
        print_table(
            "The step's matrix products alone: the ceiling for a float32 numpy step on this machine",
            ["batch", "products us", "whole step us", "ceiling chars/s", "target", "weights GB/s", "GFLOP/s"], rows,
            f"{ceiling['1']['weight_megabytes']:.1f} MB of float32 weights per step, shapes {ceiling['1']['shapes']}. "
            "Batch 1 is bound by streaming the weights from memory, batch 64 by the products' arithmetic.",
        )
    if "precision_steps" in result:
        print_precision_steps(result)

    rows = []
    by_name = {}
    for row in result["strategies"]:
        by_name.setdefault(row["strategy"], {})[row["batch"]] = row
    for name, figures in by_name.items():
        cells = [name]
        for batch in (1, 64):
            row = figures[batch]
            cells += [format_number(row["microseconds_per_step"], 1), f"{row['percent_of_network_step']:.0f}%"]
        rows.append(cells)
    print_table(
        "Strategy cost per step (microseconds, with generate's checks; % of the network step at that batch)",
        ["strategy", "batch 1", "% step", "batch 64", "% step"], rows,
        "beam (default width 4): its own work per generated character with a stub network; "
        "through the real network it also runs width x batch rows per step.",
    )


def print_precision_steps(result: dict) -> None:
    rows = []
    for precision, figures in result["precision_steps"].items():
        for batch, figure in figures.items():
            target = figure["target"]
            met = "" if target is None or figure["ratio_to_float32_ceiling"] is None else (
                "yes" if figure["ratio_to_float32_ceiling"] >= target else "NO")
            rows.append([f"TensorFlowStepper, {precision}", batch, format_number(figure["chars_per_second"]),
                         format_number(figure["best_chars_per_second"]), _ratio(figure["ratio_to_float32_ceiling"]),
                         _ratio(figure["ratio_to_numpy_step"]), "" if target is None else f"{target}x", met])
    print_table(
        "Generation step per precision: the TensorFlow engine (`chargen sample --precision ...`)",
        ["engine", "batch", "chars/s", "best", "vs f32 ceiling", "vs numpy step", "target", "met"], rows,
        "vs f32 ceiling: over the float32 matrix products' ceiling above (the most a float32 numpy step could do); "
        "vs numpy step: over NumpyStepper's step alone. target: issue 9's, for lower precision at batch 64.",
    )


def print_quality(result: dict) -> None:
    if "skipped" in result:
        print(f"\nBits per character: skipped ({result['skipped']})")
        return
    size = result["sizes"]
    steps = [step for step, _ in result["rows"][0]["curve"]]
    rows = []
    for row in result["rows"]:
        curve = dict(row["curve"])
        rows.append([row["mode"]] + [f"{curve[step]:.3f}" if step in curve else "-" for step in steps]
                    + [format_number(row["training_seconds"], 1),
                       format_number(row["chars_seen"] / row["training_seconds"])])
    print_table(
        f"Validation bits per character on tiny shakespeare (last 10% of {result['characters']:,} characters), "
        f"{size['cell'].upper()} {size['layers']} x {size['units']}, batch {size['batch']}, window {size['window']}",
        ["mode"] + [f"step {step:,}" for step in steps] + ["train s", "chars/s"], rows,
        f"Uniform guessing: {result['uniform_bpc']:.2f} bits/char. Same seed, same batches in both modes; "
        "train s excludes the evaluations.",
    )


def print_ten_minutes(result: dict) -> None:
    if "skipped" in result:
        print(f"\nQuality in ten minutes: skipped ({result['skipped']})")
        return
    rows = [[row["model"], f"{row['val_bpc']:.3f}", format_number(row["steps"]), format_number(row["chars_seen"])]
            for row in result["rows"]]
    scoring = result["scoring"]
    print_table(
        f"Validation bits per character after {result['seconds']:.0f} s of training on tiny shakespeare "
        f"(last 10%, {scoring['streams']} streams with carried state, window {scoring['window']})",
        ["model", "bits/char", "steps", "characters"], rows,
        f"chargen's lead: {result['lead_bpc']:+.3f} bits per character (positive: chargen is better). "
        "chargen's time includes its compilation, evaluations and saves, as a user's does.",
    )


# ----------------------------------------------------------------------------------------------------


def precision_list(text: str) -> list[str]:
    """`--precisions float32,bfloat16`: names of chargen's precisions, float32 first and always."""
    from chargen.config import PRECISIONS

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PRECISIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown precision {', '.join(unknown)}; choose from {', '.join(PRECISIONS)}")
    return ["float32", *dict.fromkeys(name for name in names if name != "float32")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and fewer repeats: a fast check")
    parser.add_argument("--skip", action="append", choices=SECTIONS, default=[],
                        help="leave a section out (repeatable)")
    parser.add_argument("--cells", default="rnn,gru,lstm", help="cells for the training figures, comma-separated")
    parser.add_argument("--layers", type=int, help="recurrent layers for the training figures (default: 2)")
    parser.add_argument("--precisions", default="float32", type=precision_list,
                        help="comma-separated, e.g. float32,bfloat16,float16: training and generation rows in each "
                             "(float32 always runs; default: float32 only)")
    parser.add_argument("--no-other-blas", action="store_true",
                        help=f"do not repeat the generation figures with {BLAS_VARIABLE} toggled")
    parser.add_argument("--output", type=Path, help="JSON file to write (default: bench/results/bench-<time>.json)")
    arguments = parser.parse_args(argv)
    quiet_tensorflow()
    started = time.perf_counter()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    results = {"command": " ".join([Path(sys.executable).name, "-m", "bench",
                                    *(argv if argv is not None else sys.argv[1:])]),
               "quick": arguments.quick, "started": stamp}
    results["machine_before"] = machine(packages=True)
    print_machine(results["machine_before"])

    if "generation" not in arguments.skip:
        from bench import generation_speed

        log(f"Generation (BLAS {blas_setting()}) ...")
        results["generation"] = generation_speed.run(arguments.quick, log=log, precisions=arguments.precisions)
        if not arguments.no_other_blas:
            log(f"Generation under the other {BLAS_VARIABLE} setting (child process) ...")
            results["generation_other_blas"] = run_other_blas(arguments.quick)
        print_generation(results["generation"], results.get("generation_other_blas"))
    if "training" not in arguments.skip:
        from bench import training_speed

        log("Training throughput ...")
        cells = [c.strip() for c in arguments.cells.split(",") if c.strip()]
        results["training"] = training_speed.run(arguments.quick, cells=cells, layers=arguments.layers,
                                                 precisions=arguments.precisions, log=log)
        print_training(results["training"])
    if "quality" not in arguments.skip:
        from bench import quality

        log("Bits per character after a short training budget ...")
        results["quality"] = quality.run(arguments.quick, log=log)
        print_quality(results["quality"])
    if "ten-minutes" not in arguments.skip:
        from bench import ten_minutes

        log("Quality in ten minutes: chargen's defaults against Keras's LSTM(512), the same budget each ...")
        results["ten_minutes"] = ten_minutes.run(arguments.quick, log=log)
        print_ten_minutes(results["ten_minutes"])

    if "big-corpus" not in arguments.skip:
        from bench import big_corpus

        results["big_corpus"] = big_corpus.run(arguments.quick, log=log)
        big_corpus.print_result(results["big_corpus"])

    results["machine_after"] = machine(packages=False)
    results["elapsed_seconds"] = time.perf_counter() - started
    output = arguments.output or RESULTS / f"bench-{stamp}{'-quick' if arguments.quick else ''}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"\nLoad average after: {results['machine_after']['load_average']}; "
          f"took {results['elapsed_seconds'] / 60:.1f} min; JSON: {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
