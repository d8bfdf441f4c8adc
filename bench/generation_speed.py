"""Generation speed: characters per second through `chargen.generation.generate` and its references.

The network is the issue's: a 2-layer, 512-unit LSTM (embedding 64, vocabulary 65) with random
weights, since speed does not depend on what the weights learned. Measured here:

- `generate` with `NumpyStepper` and the `random` strategy at batch 1 and at batch 64
  (`--num-samples 64`), characters per second in total, against the issue's targets;
- the stepper alone (the network's step with no sampling), and its matrix products alone: the
  ceiling for any float32 numpy step on this machine;
- reference points: the Keras model called once per character (eager), and one compiled
  `tf.function` step per character, both sampling with the same strategy; and the whole loop
  in one TensorFlow graph, plain and compiled by XLA (sampling with `tf.random.categorical`, so no
  plugin could run there);
- the cost of each built-in strategy per step at batch 1 and 64 (beam: per generated character,
  with a stub network, so only the strategy's own work is counted);
- with lower precisions asked for (`precisions`), the `TensorFlowStepper` step (what `chargen sample
  --precision bfloat16` runs) in each of them and in float32, at batch 1 and 64, against the float32
  matrix-product ceiling and the numpy step.

Run alone for the figures under another BLAS setting: `python -m bench.generation_speed --child`
prints the generate and stepper figures as JSON (bench/run.py does this with OPENBLAS_CORETYPE
toggled).
"""

from __future__ import annotations

import argparse
import itertools
import json
import string
import time

import numpy as np

from bench.common import blas_setting, quiet_tensorflow, summary, time_once

TARGETS = {1: 5_000, 64: 30_000}  # characters per second, from the issue
LOWER_PRECISION_TARGET = {64: 1.5}  # issue 9: a lower-precision step at batch 64, in float32 ceilings
VOCAB_SIZE, LAYERS, UNITS, EMBEDDING = 65, 2, 512, 64
BUILTIN_STRATEGIES = ("greedy", "random", "top-k", "top-p", "min-p", "typical", "beam")


def sizes(quick: bool) -> dict:
    """How much to generate per timing and how many timings; the network is the same in both."""
    if quick:
        return {"length_1": 400, "length_64": 60, "repeats": 3, "keras_steps": 5, "function_steps_1": 150,
                "function_steps_64": 40, "strategy_calls": 200}
    return {"length_1": 1000, "length_64": 120, "repeats": 9, "keras_steps": 10, "function_steps_1": 300,
            "function_steps_64": 80, "strategy_calls": 1000}


def vocabulary():
    from chargen.vocab import Vocabulary

    chars = "\n " + string.ascii_letters + ".,;:!?'-&$3"  # 65 characters
    assert len(chars) == VOCAB_SIZE
    return Vocabulary(list(chars))


def lstm_model(seed: int = 0):
    import keras

    from chargen.model import CharModel

    keras.utils.set_random_seed(seed)
    model = CharModel(VOCAB_SIZE, cell="lstm", num_layers=LAYERS, units=UNITS, embedding_dim=EMBEDDING)
    model.build()
    return model


def strategy(name: str, **options):
    from chargen.sampling import registry

    return registry.load(name).create(options)


def measure_generate(stepper, vocab, batch: int, length: int, repeats: int) -> dict:
    """`generate` with the random strategy: total characters per second (all rows), median of repeats."""
    from chargen.generation import GenerationRequest, generate

    sampler = strategy("random")
    generate(stepper, vocab, sampler, GenerationRequest(length=20, num_samples=batch, seed=0))  # warm-up

    def request(seed: int) -> GenerationRequest:
        return GenerationRequest(length=length, num_samples=batch, seed=seed)

    seconds = [
        time_once(lambda r=r: generate(stepper, vocab, sampler, request(r)))
        for r in range(repeats)
    ]
    timing = summary(seconds)
    return {"batch": batch, "length": length, "seconds": timing, "chars_per_second": batch * length / timing["median"],
            "best_chars_per_second": batch * length / timing["min"]}


def measure_stepper(stepper, batch: int, steps: int, repeats: int) -> dict:
    """The network's step alone, fed a fixed id: microseconds per step and characters per second."""
    ids = np.zeros(batch, np.int64)
    state = stepper.initial_state(batch)

    def run():
        s = state
        for _ in range(steps):
            _, s = stepper.step(ids, s)

    run()
    timing = summary([time_once(run) / steps for _ in range(repeats)])
    return {"batch": batch, "microseconds_per_step": timing["median"] * 1e6, "seconds_per_step": timing,
            "chars_per_second": batch / timing["median"], "best_chars_per_second": batch / timing["min"]}


def step_matrices(stepper) -> list[np.ndarray]:
    """The matrices one `NumpyStepper` step multiplies, in order (read from its internals: [] if they change)."""
    names = ("kernel", "input_kernel", "recurrent_kernel")
    held = (getattr(layer, name, None) for layer in getattr(stepper, "layers", []) for name in names)
    matrices = [matrix for matrix in held if matrix is not None]
    head = getattr(stepper, "head_kernel", None)
    return matrices + [head] if matrices and head is not None else []


def measure_product_ceiling(stepper, batch: int, steps: int, repeats: int) -> dict:
    """The step's matrix products alone: each of the stepper's own float32 matrices times a
    (columns, batch) operand, in the step's order, so the weights stream through memory as they do in
    a real step. No float32 numpy step can beat this; the gap to the whole step is everything else."""
    matrices = step_matrices(stepper)
    if not matrices:
        return {"unavailable": "NumpyStepper's internals changed; update step_matrices"}
    rng = np.random.default_rng(0)
    operands = [rng.normal(0, 0.3, (m.shape[1], batch)).astype(np.float32) for m in matrices]

    def run():
        for _ in range(steps):
            for matrix, operand in zip(matrices, operands):
                matrix @ operand

    run()
    timing = summary([time_once(run) / steps for _ in range(repeats)])
    megabytes = sum(m.nbytes for m in matrices) / 1e6
    flops = sum(2 * m.size * batch for m in matrices)
    return {"batch": batch, "shapes": [list(m.shape) for m in matrices], "weight_megabytes": megabytes,
            "microseconds_per_step": timing["median"] * 1e6, "seconds_per_step": timing,
            "chars_per_second": batch / timing["median"], "best_chars_per_second": batch / timing["min"],
            "gigabytes_per_second": megabytes / 1e3 / timing["median"], "gflops": flops / 1e9 / timing["median"]}


def measure_precision_steps(model, precisions, ceiling: dict, numpy_step: dict, size: dict,
                            batches=(1, 64)) -> dict:
    """The TensorFlow engine's step in float32 and in each lower precision of `precisions`, per batch, as a
    multiple of the float32 matrix-product ceiling (`ceiling`, per batch as a string) and of the numpy step."""
    from chargen.generation import TensorFlowStepper, make_stepper

    result = {}
    for precision in ["float32", *(p for p in precisions if p != "float32")]:
        stepper = TensorFlowStepper(model) if precision == "float32" else make_stepper(model, precision)
        result[precision] = {}
        for batch in batches:
            figure = measure_stepper(stepper, batch, size[f"function_steps_{batch}"], size["repeats"])
            ceiling_rate = ceiling[str(batch)].get("chars_per_second")
            figure["ratio_to_float32_ceiling"] = figure["chars_per_second"] / ceiling_rate if ceiling_rate else None
            figure["ratio_to_numpy_step"] = figure["chars_per_second"] / numpy_step[str(batch)]["chars_per_second"]
            figure["target"] = LOWER_PRECISION_TARGET.get(batch) if precision != "float32" else None
            result[precision][str(batch)] = figure
    return result


def measure_keras_eager(model, vocab, batch: int, steps: int) -> dict:
    """The Keras model called once per character, eagerly, carrying its states; a few steps only."""
    import tensorflow as tf

    from chargen.sampling import SamplingContext

    sampler = strategy("random")
    rng = np.random.default_rng(0)
    ids = np.zeros((batch, 1), np.int32)
    states = model.initial_states(batch)
    model(tf.constant(ids), states=states)  # warm-up
    seconds = []
    for step in range(steps):
        start = time.perf_counter()
        logits, states = model(tf.constant(ids), states=states)
        context = SamplingContext(step=step, ids=ids.astype(np.int64), rng=rng, vocab=vocab)
        ids = sampler.sample(np.asarray(logits)[:, -1], context)[:, None].astype(np.int32)
        seconds.append(time.perf_counter() - start)
    timing = summary(seconds)
    return {"batch": batch, "steps": steps, "seconds_per_step": timing, "chars_per_second": batch / timing["median"],
            "best_chars_per_second": batch / timing["min"]}


def state_signature(model):
    """Input specs for the model's states with the batch left open, so one trace serves every batch.

    (A trace with a static batch of 1 currently fails in chargen's fused kernels for 2 or more layers:
    the loop's state leaves its first step with shape (None, units) after entering as (1, units).)
    """
    import tensorflow as tf

    return [[tf.TensorSpec((None, size), tf.float32) for size in layer.cell.state_size]
            for layer in model.recurrent_layers]


def measure_tf_function(model, vocab, batch: int, steps: int, repeats: int) -> dict:
    """One compiled `tf.function` step called per character (states carried as tensors), sampled in numpy."""
    import tensorflow as tf

    from chargen.sampling import SamplingContext

    @tf.function(input_signature=[tf.TensorSpec((None,), tf.int32), state_signature(model)])
    def one_step(ids, states):
        logits, states = model(ids[:, None], states=states)
        return logits[:, 0], states

    sampler = strategy("random")

    def run(seed):
        rng = np.random.default_rng(seed)
        ids = np.zeros(batch, np.int32)
        states = model.initial_states(batch)
        for step in range(steps):
            logits, states = one_step(tf.constant(ids), states)
            context = SamplingContext(step=step, ids=ids[:, None].astype(np.int64), rng=rng, vocab=vocab)
            ids = sampler.sample(logits.numpy(), context).astype(np.int32)

    run(0)  # trace and compile
    timing = summary([time_once(lambda r=r: run(r)) / steps for r in range(repeats)])
    return {"batch": batch, "steps": steps, "seconds_per_step": timing, "chars_per_second": batch / timing["median"],
            "best_chars_per_second": batch / timing["min"]}


def measure_graph_loop(model, batch: int, steps: int, repeats: int, xla: bool = False) -> dict:
    """The whole generation loop inside one compiled graph (`tf.while_loop`, `tf.random.categorical`),
    optionally compiled by XLA.

    TensorFlow's best case here, but no numpy strategy can run inside it: for reference only.
    """
    import tensorflow as tf

    signature = [tf.TensorSpec((None,), tf.int32), state_signature(model), tf.TensorSpec((), tf.int32)]

    @tf.function(input_signature=signature, jit_compile=xla)
    def loop(ids, states, count):
        def body(t, ids, states):
            logits, states = model(ids[:, None], states=states)
            return t + 1, tf.cast(tf.random.categorical(logits[:, 0], 1)[:, 0], tf.int32), states

        _, ids, _ = tf.while_loop(lambda t, *_: t < count, body, (tf.constant(0), ids, states),
                                  maximum_iterations=count)
        return ids

    ids, states = tf.zeros(batch, tf.int32), model.initial_states(batch)
    loop(ids, states, tf.constant(2)).numpy()  # trace and compile
    timing = summary([time_once(lambda: loop(ids, states, tf.constant(steps)).numpy()) / steps for _ in range(repeats)])
    return {"batch": batch, "steps": steps, "seconds_per_step": timing, "chars_per_second": batch / timing["median"],
            "best_chars_per_second": batch / timing["min"]}


def measure_strategies(stepper, vocab, batches: tuple[int, ...], calls: int, repeats: int, network: dict) -> list[dict]:
    """Each built-in strategy's own cost per step, through the checks `generate` applies.

    Token strategies are timed on logits the network produced (16 different arrays, cycled).
    Beam search drives a stub step function that returns stored logits (state rows are still
    gathered as in real use), so the figure is beam's own work per generated character; through the
    real network beam also costs `width` network rows per row.
    """
    from chargen.sampling import SamplingContext

    rows = max(batches) * 4
    state = stepper.initial_state(rows)
    ids = np.random.default_rng(0).integers(0, VOCAB_SIZE, rows)
    bank = []
    for _ in range(16):
        logits, state = stepper.step(ids, state)
        bank.append(logits)
        ids = logits.argmax(axis=-1)
    results = []
    for name in BUILTIN_STRATEGIES:
        sampler = strategy(name)
        for batch in batches:
            context = SamplingContext(step=1, ids=np.zeros((batch, 8), np.int64), rng=np.random.default_rng(0),
                                      vocab=vocab)
            if sampler.kind == "token":
                inputs = [b[:batch] for b in bank]

                def run(sampler=sampler, inputs=inputs, context=context):
                    for k in range(calls):
                        sampler.sample(inputs[k % 16], context)

                per_step = summary([time_once(run) / calls for _ in range(repeats)])
            else:
                length = max(20, calls // 10)

                counter = itertools.count()

                def stub_step(step_ids, step_state, counter=counter):
                    return bank[next(counter) % 16][:len(step_ids)], step_state

                start_state = stepper.initial_state(batch)
                prime = np.zeros((batch, 1), np.int64)

                def run(sampler=sampler, start_state=start_state, prime=prime, context=context, length=length):
                    sampler.generate(stub_step, start_state, prime, length, context)

                per_step = summary([time_once(run) / length for _ in range(repeats)])
            microseconds = per_step["median"] * 1e6
            network_step = network[batch]["microseconds_per_step"]
            results.append({
                "strategy": name, "kind": sampler.kind, "batch": batch, "microseconds_per_step": microseconds,
                "percent_of_network_step": 100.0 * microseconds / network_step,
                "options": sampler.strategy.get_config(),
            })
    return results


def stepper_figures(quick: bool) -> dict:
    """The NumpyStepper figures alone (generate and step), for comparing BLAS settings."""
    from chargen.generation import NumpyStepper

    size = sizes(quick)
    model = lstm_model()
    stepper, vocab = NumpyStepper(model), vocabulary()
    return {
        "blas": blas_setting(),
        "generate": {
            str(b): measure_generate(stepper, vocab, b, size[f"length_{b}"], size["repeats"]) for b in (1, 64)
        },
        "step": {str(b): measure_stepper(stepper, b, 200 if b == 1 else 30, size["repeats"]) for b in (1, 64)},
    }


def run(quick: bool, log=print, precisions=("float32",)) -> dict:
    """Every generation figure, in this process's BLAS setting; the TensorFlow engine's rows per precision
    when `precisions` holds a lower one."""
    from chargen.generation import NumpyStepper

    size = sizes(quick)
    model = lstm_model()
    stepper, vocab = NumpyStepper(model), vocabulary()
    result = {"network": {"cell": "lstm", "layers": LAYERS, "units": UNITS, "embedding": EMBEDDING,
                          "vocab": VOCAB_SIZE}, "blas": blas_setting(), "sizes": size, "targets": TARGETS}
    log("  generate with NumpyStepper ...")
    result["generate"] = {}
    for batch in (1, 64):
        figure = measure_generate(stepper, vocab, batch, size[f"length_{batch}"], size["repeats"])
        figure["target"] = TARGETS[batch]
        figure["met"] = figure["chars_per_second"] >= TARGETS[batch]  # by the median repeat
        figure["met_by_best"] = figure["best_chars_per_second"] >= TARGETS[batch]
        result["generate"][str(batch)] = figure
    log("  the step alone, and its matrix products alone ...")
    result["step"] = {str(b): measure_stepper(stepper, b, 200 if b == 1 else 30, size["repeats"]) for b in (1, 64)}
    result["product_ceiling"] = {
        str(b): measure_product_ceiling(stepper, b, 200 if b == 1 else 30, size["repeats"]) for b in (1, 64)
    }
    if any(precision != "float32" for precision in precisions):
        log(f"  the TensorFlow engine's step in float32 and {', '.join(p for p in precisions if p != 'float32')} ...")
        result["precision_steps"] = measure_precision_steps(model, precisions, result["product_ceiling"],
                                                            result["step"], size)
    log("  Keras model per character, tf.function step per character ...")
    result["keras_eager"] = {str(b): measure_keras_eager(model, vocab, b, size["keras_steps"]) for b in (1, 64)}
    result["tf_function_step"] = {
        str(b): measure_tf_function(model, vocab, b, size[f"function_steps_{b}"], size["repeats"]) for b in (1, 64)
    }
    result["graph_loop"] = {
        str(b): measure_graph_loop(model, b, 2 * size[f"function_steps_{b}"], size["repeats"]) for b in (1, 64)
    }
    result["graph_loop_xla"] = {
        str(b): measure_graph_loop(model, b, 2 * size[f"function_steps_{b}"], size["repeats"], xla=True)
        for b in (1, 64)
    }
    log("  strategies ...")
    network = {b: result["step"][str(b)] for b in (1, 64)}
    result["strategies"] = measure_strategies(stepper, vocab, (1, 64), size["strategy_calls"], size["repeats"], network)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter timings")
    parser.add_argument("--child", action="store_true", help="print only the NumpyStepper figures as JSON")
    arguments = parser.parse_args()
    quiet_tensorflow()
    if arguments.child:
        print(json.dumps(stepper_figures(arguments.quick)))
    else:
        print(json.dumps(run(arguments.quick, log=lambda *_: None), indent=2, default=float))


if __name__ == "__main__":
    main()
