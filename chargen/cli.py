"""The `chargen` command line: parse, validate, call one library function, report.

TensorFlow is imported inside the commands that need it, so `chargen --help`, `chargen samplers`
and every `--help` answer at once. A `ChargenError` (a user's mistake) prints as one line on stderr
with a non-zero exit; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import sys
from datetime import datetime
from pathlib import Path

import click

from chargen import budget, config
from chargen.errors import ChargenError

INTERRUPTED = 130  # the conventional exit status after Ctrl-C
CLOSED_PIPE = 141  # what a shell reports for a program ended by SIGPIPE
TERMINATED = 143  # ... and by SIGTERM: a run stopped so has saved, but did not finish


class ChargenGroup(click.Group):
    """Turns a user's mistake into one line on stderr, unless --debug asks for the traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except ChargenError as error:
            if ctx.meta.get("chargen.debug"):
                raise
            raise click.ClickException(str(error)) from None
        except MemoryError:  # what `budget` could not foresee: still one line, and what to do
            if ctx.meta.get("chargen.debug"):
                raise
            raise click.ClickException("out of memory for what was asked; ask for less (a smaller model, batch, "
                                       "--length or --num-samples) or free memory") from None
        except KeyboardInterrupt:
            if ctx.meta.get("chargen.debug"):
                raise
            click.echo("interrupted", err=True)
            ctx.exit(INTERRUPTED)
        except BrokenPipeError:  # `chargen info | head`: the reader has what it wanted, nothing went wrong
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail
            ctx.exit(CLOSED_PIPE)
        except Exception as error:  # a bug of ours: still one line, with a way to see more
            if ctx.meta.get("chargen.debug"):
                raise
            raise click.ClickException(
                f"unexpected {type(error).__name__}: {error} "
                "(run `chargen --debug ...` for the traceback and report it)"
            ) from None


def _load_tensorflow(debug: bool) -> None:
    """Import TensorFlow now, without its start-up chatter (CUDA probing, oneDNN notes) unless debugging.

    Some of that chatter is written by C++ code before any log setting applies, so stderr itself is
    pointed at /dev/null for the length of the import.
    """
    if debug or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@click.group(cls=ChargenGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, envvar="CHARGEN_DEBUG", help="Show full tracebacks for errors.")
@click.version_option(package_name="chargen")
@click.pass_context
def cli(ctx: click.Context, debug: bool):
    """Train and sample character-level recurrent language models."""
    ctx.meta["chargen.debug"] = debug


def _corpus(paths, encoding, encoding_errors):
    """The corpus the paths name; folder entries that are not regular files are skipped, and said so."""
    from chargen import corpus

    text_corpus = corpus.resolve_corpus(list(paths), encoding=encoding, errors=encoding_errors)
    if text_corpus.skipped:
        shown = ", ".join(f"{path} ({kind})" for path, kind in text_corpus.skipped[:3])
        more = f" and {len(text_corpus.skipped) - 3} more" if len(text_corpus.skipped) > 3 else ""
        what = "entry that is not a regular file" if len(text_corpus.skipped) == 1 else \
            "entries that are not regular files"
        click.echo(f"skipped {len(text_corpus.skipped)} folder {what}: {shown}{more}", err=True)
    return text_corpus


def _encoded_corpus(paths, encoding, encoding_errors):
    """The corpus's ids from the encoded cache (see `encoded.py`), encoded first if needed, and a line saying which."""
    import time

    from chargen import encoded

    started = time.perf_counter()
    prepared = encoded.encode(_corpus(paths, encoding, encoding_errors))
    seconds = time.perf_counter() - started
    where = f"{prepared.path} ({prepared.num_chars:,} characters, {len(prepared.vocab)} in the vocabulary, " \
            f"{prepared.ids.dtype.itemsize} byte(s) a character)"
    if prepared.reused:
        return prepared, f"using the encoded cache {where}"
    return prepared, (f"encoded {prepared.num_bytes / 1e6:,.1f} MB in {seconds:.2f} s "
                      f"({prepared.num_bytes / 1e6 / max(seconds, 1e-9):,.0f} MB/s) into {where}")


# numbers ----------------------------------------------------------------------------------------

class Integer(click.ParamType):
    """An integer within bounds: by default those of int64, what numpy and TensorFlow hold, so a number
    of any size on the command line is refused here in one line rather than overflowing deep inside them."""

    name = "integer"

    def __init__(self, minimum: int = -(2**63), maximum: int = 2**63 - 1):
        self.minimum, self.maximum = minimum, maximum

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(str(value).strip().replace("_", ""))
            except ValueError:
                self.fail(f"{value!r} is not a whole number", param, ctx)
        if not self.minimum <= number <= self.maximum:
            self.fail(f"{value} is outside {self.minimum}..{self.maximum}", param, ctx)
        return number


class FiniteFloat(click.ParamType):
    """A real number; NaN and infinity are refused (no option means "no limit" by infinity: leave it out)."""

    name = "float"

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value} is not a finite number (to set no limit, leave the option out)", param, ctx)
        return number


INTEGER, FINITE_FLOAT, SEED = Integer(), FiniteFloat(), Integer(*config.SEED_RANGE)
_NUMBER_TYPES = {int: INTEGER, float: FINITE_FLOAT}


# train ------------------------------------------------------------------------------------------

def _click_option(option: config.OptionSpec):
    """A Click option made from its `config.OptionSpec`: the flag, type, default and help all come from there."""
    if option.type is bool:
        kind = {} if option.negatable else {"is_flag": True}
    elif option.choices:
        kind = {"type": click.Choice(option.choices)}
    elif option.type is Path:
        kind = {"type": click.Path(file_okay=False)}
    elif option.name == "seed":
        kind = {"type": SEED}
    else:
        kind = {"type": _NUMBER_TYPES.get(option.type, option.type)}
    return click.option(option.flags, option.name, default=option.default, show_default=option.shows_default,
                        help=option.help, metavar=option.metavar, envvar=option.envvar,
                        show_envvar=option.envvar is not None, **kind)


def _training_options(command):
    for option in reversed(config.TRAINING_OPTIONS):
        command = _click_option(option)(command)
    return command


@cli.command()
@click.argument("corpus_paths", metavar="CORPUS...", nargs=-1, required=True)
@_training_options
@click.pass_context
def train(ctx, corpus_paths, run_name, checkpoint_dir, resume, init_from, init_checkpoint, new_chars, encoding,
          encoding_errors, device, devices, xla, preview_length, histograms, quiet, **options):
    """Train a model on CORPUS (files, folders, or builtin:python-docs)."""
    _check_init_options(ctx, resume, init_from)
    from chargen import checkpoints
    from chargen.distribution import check_placement_options

    check_placement_options(devices)  # a malformed --devices or TF_CONFIG fails before TensorFlow loads
    if run_name is not None:
        checkpoints.check_run_name(run_name)
    # The run is held before the slow work (corpus, TensorFlow), so a second writer is refused at once.
    if resume:
        run_path = checkpoints.named_run_folder(run_name, Path(checkpoint_dir)) if run_name is not None \
            else checkpoints.resolve_run(None, Path(checkpoint_dir)).path
    elif init_from:
        parent = checkpoints.resolve_run(init_from, Path(checkpoint_dir))
        run_path = Path(checkpoint_dir) / (run_name or _default_run_name(parent.config["training"].get("cell", "run"),
                                                                         corpus_paths))
    else:
        settings = config.TrainingConfig(**options)
        run_path = Path(checkpoint_dir) / (run_name or _default_run_name(settings.cell, corpus_paths))
    ctx.with_resource(checkpoints.writing(run_path, new=not resume))
    run = checkpoints.Run.open(run_path) if resume else None  # once held: a run still being created is refused above
    text_corpus, cache_line = _encoded_corpus(corpus_paths, encoding, encoding_errors)
    if not resume and not init_from:  # a bad option or a model beyond memory fails before TensorFlow loads
        budget.check_training(config.TrainingConfig(**options), len(text_corpus.vocab))
    budget.check_generation(preview_length, 1)
    if xla and "tensorflow" not in sys.modules:  # TensorFlow reads its XLA flags once, so before it loads
        from chargen import compile_cache

        compile_cache.enable()
    _load_tensorflow(ctx.meta["chargen.debug"])
    from chargen import distribution, sessions
    from chargen.reporting import Preview, ProgressBar
    from chargen.training import TrainingDiverged

    callbacks = [] if quiet else [ProgressBar(), *([Preview(preview_length)] if preview_length > 0 else [])]
    placement = distribution.choose_placement(device, devices)
    with placement.strategy.scope():
        given = {name: value for name, value in options.items() if _given(ctx, name)}
        logs = _tensorboard(run_path, placement, histograms, preview_length)
        if resume:
            trainer = sessions.resume_session(text_corpus, run, given, [*callbacks, *logs], xla=xla)
        elif init_from:
            trainer, parent_record = sessions.finetune_session(text_corpus, parent, init_checkpoint, options, given,
                                                               new_chars, run_path, [*callbacks, *logs], xla=xla)
        else:
            trainer = sessions.new_session(text_corpus, settings, run_path, [*callbacks, *logs], xla=xla)
        settings = trainer.config
        click.echo(
            f"training {settings.cell} x{settings.num_layers}x{settings.units} ({settings.mode}"
            f"{', stateful' if settings.stateful else ''}"
            f"{'' if settings.precision == 'float32' else ', ' + settings.precision}) on "
            f"{len(trainer.train_ids):,} characters, validating on {_validation_size(trainer)}; "
            f"{placement.description}{'' if xla else ' (no XLA)'}; run {run_path}"
            + (f", from step {trainer.progress.step}" if resume else ""),
            err=True,
        )
        if init_from and not resume:
            click.echo(_fine_tuning_line(parent_record), err=True)
        if not quiet:
            click.echo(cache_line, err=True)
        limit = trainer.step_limit()
        if resume and limit is not None and trainer.progress.step >= limit:
            click.echo(f"the run already reached step {trainer.progress.step}, its limit; pass a larger --steps "
                       "(or --epochs, --time-limit) to train it further", err=True)
            stopped, stop_signal = "steps", None
        else:
            try:
                with distribution.stop_on_peer_failure(lambda: trainer.progress.step):
                    stopped, stop_signal = _fit_until_interrupted(trainer)
            except BaseException as error:
                if not resume:
                    checkpoints.discard_unsaved_run(run_path)
                if isinstance(error, TrainingDiverged):
                    raise ChargenError(f"{error}; {_after_divergence(run_path)}") from None
                raise
    progress = trainer.progress
    summary = f"step {progress.step}"
    if progress.last_val_bpc is not None:
        summary += (f": validation {progress.last_val_bpc:.3f} bits per character "
                    f"(best {progress.best_val_bpc:.3f})")
    click.echo(summary)
    if placement.chief:
        click.echo(f"run saved in {run_path}; sample it with: chargen sample {run_path}")
    else:
        click.echo(f"the chief saved the run in {run_path} (on its machine)")
    if stopped == "interrupt":
        again = ["chargen", "train", *corpus_paths, "--resume", "--run-name", run_path.name,
                 "--checkpoint-dir", str(checkpoint_dir)]
        again += ["--encoding", encoding] if encoding != "utf-8" else []
        again += ["--encoding-errors", encoding_errors] if encoding_errors != "strict" else []
        how = "terminated (SIGTERM)" if stop_signal == signal.SIGTERM else "interrupted"
        click.echo(f"{how} and saved; continue with: {shlex.join(again)}", err=True)
        ctx.exit(TERMINATED if stop_signal == signal.SIGTERM else INTERRUPTED)


def _after_divergence(run_path: Path) -> str:
    """Where a run that diverged stands, and how to go on from there."""
    from chargen.checkpoints import Run

    step = Run(run_path).last_saved_step() if (run_path / "config.json").is_file() else None
    if step is None:
        return "nothing was saved, so start a new run with the change"
    return (f"run {run_path} keeps its snapshot of step {step} as it was: train from it with --init-from "
            f"{run_path} --init-checkpoint last and the change, or start a new run")


def _tensorboard(run_path: Path, placement, histograms: bool, preview_length: int) -> list:
    """The callback writing the run's TensorBoard event files, on the chief alone (which writes the run)."""
    from chargen.tensorboard import TensorBoardLogs

    return [TensorBoardLogs(run_path, histograms=histograms, preview_length=preview_length)] if placement.chief else []


def _check_init_options(ctx: click.Context, resume: bool, init_from: str | None) -> None:
    """--init-from starts a new run, so it cannot go with --resume; its companions need it."""
    if resume and init_from:
        raise ChargenError("--init-from starts a new run and --resume continues one; give one of them "
                           "(a fine-tuned run resumes with --resume alone)")
    for name in ("init_checkpoint", "new_chars"):
        if _given(ctx, name) and not init_from:
            raise ChargenError(f"{config.OPTIONS[name].flag_name} applies to fine-tuning only; "
                               "add --init-from RUN or leave it out")


def _fine_tuning_line(parent: dict) -> str:
    """"starting from RUN (best snapshot, step 400)", and what --new-chars did."""
    line = f"starting from {parent['run']} ({parent['snapshot']} snapshot, step {parent['step']:,})"
    missing = parent["missing_chars"]
    if parent["new_chars"] == "drop" and missing:
        line += (f"; dropped {parent['dropped_occurrences']:,} occurrence(s) of {len(missing)} character(s) "
                 f"not in its vocabulary: {missing[:20]!r}")
    elif parent["new_chars"] == "grow" and missing:
        line += f"; grew its vocabulary by {len(missing)} character(s): {missing[:20]!r}"
    return line


def _validation_size(trainer) -> str:
    """"111,539", or "the first 20,000 of 111,539 (--val-chars)" when evaluations are capped."""
    scored, whole = len(trainer.scored_val_ids), len(trainer.val_ids)
    return f"{whole:,}" if scored == whole else f"the first {scored:,} of {whole:,} (--val-chars)"


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


def _default_run_name(cell: str, corpus_paths) -> str:
    """"lstm-notes-20261122-001215": the cell, the first corpus's name and the time."""
    first = Path(corpus_paths[0].removeprefix("builtin:").rstrip("/")).stem
    corpus_name = "".join(c if c.isprintable() else "_" for c in first) or "corpus"
    return f"{cell}-{corpus_name}-{datetime.now():%Y%m%d-%H%M%S}"


def _fit_until_interrupted(trainer) -> tuple[str, int | None]:
    """Run the trainer; the first Ctrl-C or SIGTERM (what `kill`, a batch scheduler or Kubernetes sends
    before it kills) asks it to stop and save, a second one stops at once. Returns why training stopped
    and the signal that stopped it, if one did (under a cluster, the workers that got no signal stop too)."""
    received = []
    at_once = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}

    def request_stop(signum, frame):
        trainer.stop_requested = True
        received.append(signum)
        signal.signal(signum, at_once[signum])

    previous = {signum: signal.signal(signum, request_stop) for signum in at_once}
    try:
        trainer.fit()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return trainer.stopped_by, (received[0] if received else None)


@cli.command()
@click.argument("corpus_paths", metavar="CORPUS...", nargs=-1, required=True)
@_click_option(config.OPTIONS["encoding"])
@_click_option(config.OPTIONS["encoding_errors"])
def prepare(corpus_paths, encoding, encoding_errors):
    """Encode CORPUS into the encoded cache now, so that `chargen train` on it starts at once."""
    from chargen import encoded

    prepared, line = _encoded_corpus(corpus_paths, encoding, encoding_errors)
    click.echo(line)
    click.echo(f"sha256 {prepared.sha256} of {prepared.num_bytes:,} bytes from {len(prepared.sources)} source(s); "
               f"cache folder {encoded.cache_folder()} (${encoded.CACHE_VARIABLE})")


# sample -----------------------------------------------------------------------------------------

def _parse_strategy(strategy_name: str, option_pairs):
    from chargen.sampling import parse_options, registry

    loaded = registry.load(strategy_name)
    return loaded.create(parse_options(loaded.cls, list(option_pairs)))


@cli.command()
@click.argument("run", required=False)
@click.option("--strategy", default="random", show_default=True, help="Sampling strategy (see `chargen samplers`).")
@click.option("-o", "--option", "option_pairs", multiple=True, metavar="NAME=VALUE",
              help="A strategy option; repeatable.")
@click.option("--temperature", "-t", type=FINITE_FLOAT, default=1.0, show_default=True,
              help="Divide the logits by this (stochastic strategies).")
@click.option("--length", "-n", type=INTEGER, default=500, show_default=True,
              help="Characters to generate after the prime.")
@click.option("--prime", default="", help="Text to start from (default: a newline).")
@click.option("--drop-unknown", is_flag=True,
              help="Leave out prime characters the model never saw (default: stop and list them).")
@click.option("--num-samples", type=INTEGER, default=1, show_default=True,
              help="Samples generated together as one batch.")
@click.option("--seed", type=SEED, help="Make the sample repeatable.")
@click.option("--stop", help="End a sample when this text appears (not included).")
@click.option("--stream/--no-stream", default=True, show_default=True,
              help="Print characters as they are produced (one sample, to a terminal).")
@click.option("--output", type=click.Path(dir_okay=False, writable=True),
              help="Write the samples to this file instead.")
@click.option("--candidates", is_flag=True,
              help="Sequence-level strategies (beam): print every candidate kept, with its log-probability.")
@click.option("--checkpoint", "which", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Which saved model of the run.")
@_click_option(config.OPTIONS["checkpoint_dir"])
@click.option("--precision", type=click.Choice(("auto", *config.PRECISIONS)), default="auto", show_default=True,
              help="Arithmetic of the generation step: float32 is the numpy engine; bfloat16 and float16 run the "
                   "model in TensorFlow; auto is float32 unless a GPU or the CPU's bfloat16 units make the "
                   "lower precision measure faster at this batch.")
def sample(run, strategy, option_pairs, temperature, length, prime, drop_unknown, num_samples, seed, stop, stream,
           output, candidates, which, checkpoint_dir, precision):
    """Generate text from RUN (default: the newest run in --checkpoint-dir)."""
    if not temperature > 0:
        raise ChargenError("--temperature must be above 0 (for the single most likely text use --strategy greedy). "
                           f"Received: --temperature {temperature}")
    from dataclasses import replace

    from chargen import checkpoints
    from chargen.generation import (
        GenerationRequest,
        generate,
        generate_candidates,
        make_stepper,
        usable_prime,
        validate_request,
    )

    request = GenerationRequest(length=length, prime=prime, num_samples=num_samples, temperature=temperature,
                                seed=seed, stop=stop)
    validate_request(request)  # before TensorFlow loads, like the strategy's options: a mistake fails fast
    chosen = _parse_strategy(strategy, option_pairs)
    the_run = checkpoints.resolve_run(run, Path(checkpoint_dir))
    vocab = the_run.vocabulary()
    kept, dropped = usable_prime(prime, vocab, drop_unknown)
    if dropped:
        click.echo(f"left {len(dropped)} character(s) the model never saw out of the prime: {dropped[:40]!r}",
                   err=True)
        request = replace(request, prime=kept)
    _load_tensorflow(click.get_current_context().meta["chargen.debug"])
    model = the_run.load_model(which)
    if precision == "auto":
        from chargen.auto_precision import auto_stepper

        stepper, choice = auto_stepper(model, request.num_samples)
        click.echo(click.style(choice.line, dim=True), err=True)
    else:
        stepper = make_stepper(model, precision)
    if candidates:
        for index, row in enumerate(generate_candidates(stepper, vocab, chosen, request)):
            for rank, (text, log_probability) in enumerate(row, 1):
                heading = f"--- sample {index + 1}, candidate {rank}: log-probability {log_probability:.3f} nats ---"
                click.echo(click.style(heading, dim=True))
                click.echo(text)
        return
    live = stream and output is None and num_samples == 1 and sys.stdout.isatty()
    on_text = (lambda piece: click.echo(piece, nl=False)) if live else None
    texts = generate(stepper, vocab, chosen, request, on_text=on_text)
    if output is not None:
        try:
            Path(output).write_text("\n\n".join(texts) + "\n", encoding="utf-8")
        except OSError as error:
            raise ChargenError(f"cannot write --output {output} ({error.strerror}); choose a writable path") from None
        click.echo(f"wrote {len(texts)} sample(s) to {output}", err=True)
    elif live:
        click.echo()
    else:
        for index, text in enumerate(texts):
            if num_samples > 1:
                click.echo(click.style(f"--- sample {index + 1} ---", dim=True))
            click.echo(text)


# eval, score, info --------------------------------------------------------------------------------

@cli.command(name="eval")
@click.argument("run")
@click.argument("corpus_paths", metavar="CORPUS...", nargs=-1, required=True)
@click.option("--checkpoint", "which", type=click.Choice(["best", "last"]), default="best", show_default=True)
@_click_option(config.OPTIONS["checkpoint_dir"])
@_click_option(config.OPTIONS["encoding"])
@_click_option(config.OPTIONS["encoding_errors"])
@click.option("--precision", type=click.Choice(tuple(config.PRECISIONS)), default="float32", show_default=True,
              help="Arithmetic of the scoring (float32 whatever the run trained in or the machine has, so runs "
                   "are scored alike; there is no auto).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def evaluate(run, corpus_paths, which, checkpoint_dir, encoding, encoding_errors, precision, as_json):
    """Bits per character and perplexity of RUN's model on CORPUS."""
    text_corpus, _ = _encoded_corpus(corpus_paths, encoding, encoding_errors)
    _load_tensorflow(click.get_current_context().meta["chargen.debug"])
    from chargen import checkpoints, sessions

    the_run = checkpoints.resolve_run(run, Path(checkpoint_dir))
    result = sessions.evaluate_run(the_run, text_corpus, which, precision)
    if as_json:
        click.echo(json.dumps(result))
    else:
        in_precision = "" if precision == "float32" else f", computed in {precision}"
        click.echo(f"{result['bits_per_char']:.4f} bits per character, perplexity {result['perplexity']:.3f} "
                   f"over {result['characters']:,} characters ({the_run.name}, {which} model{in_precision})")


def _write_page(html_path: str, page: str) -> None:
    """Write the --html page of `score` or `inspect` whole, or say in one line why it cannot be."""
    from chargen.atomic import atomic_write_text

    try:
        atomic_write_text(Path(html_path), page)
    except OSError as error:
        raise ChargenError(f"cannot write --html {html_path} ({error.strerror}); choose a writable path") from None
    click.echo(f"wrote {html_path}", err=True)


@cli.command()
@click.argument("run")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="Write a page colouring each character by its surprisal to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as one JSON object (every character's too).")
@click.option("--checkpoint", "which", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Which saved model of the run.")
@_click_option(config.OPTIONS["checkpoint_dir"])
@_click_option(config.OPTIONS["encoding"])
@_click_option(config.OPTIONS["encoding_errors"])
def score(run, file, html_path, as_json, which, checkpoint_dir, encoding, encoding_errors):
    """Surprisal of each character of FILE under RUN's model, in bits, and the text's bits per character."""
    text = _corpus([file], encoding, encoding_errors).text
    _load_tensorflow(click.get_current_context().meta["chargen.debug"])
    from chargen import checkpoints, scoring

    the_run = checkpoints.resolve_run(run, Path(checkpoint_dir))
    scored = scoring.score_text(the_run.load_model(which), the_run.vocabulary(), text)
    if html_path is not None:
        _write_page(html_path, scoring.to_html(scored, f"{Path(file).name} under {the_run.name} ({which} model)"))
    if as_json:
        click.echo(json.dumps({"run": str(the_run.path), "checkpoint": which, **scored.to_dict()}))
        return
    click.echo(f"{scored.bits_per_char:.4f} bits per character, perplexity {scored.perplexity:.3f} over "
               f"{scored.characters:,} characters ({the_run.name}, {which} model; the first character "
               + ("scored after a newline prime)" if scored.first_scored else "unscored: no newline to prime with)"))
    click.echo("most surprising:")
    for index, bits, context in scoring.most_surprising(scored):
        click.echo(f"  {bits:6.2f} bits  at {index:,}: {context!r}")


_SIGNALS = tuple(dict.fromkeys(name for kind in config.CELL_KINDS.values() for name in kind.signals))


def _unit_option(value: str | None) -> tuple[int, int] | None:
    """--unit LAYER:INDEX as two integers."""
    if value is None:
        return None
    layer, _, index = value.partition(":")
    if not (layer.isdigit() and index.isdigit()):
        raise ChargenError(f"--unit takes LAYER:INDEX, two numbers counted from 0, such as 0:5. "
                           f"Received: --unit {value}")
    return int(layer), int(index)


@cli.command(name="inspect")
@click.argument("run")
@click.argument("text", required=False)
@click.option("--file", "text_file", type=click.Path(dir_okay=False), help="Read the text from this file instead.")
@click.option("--unit", "unit_text", metavar="LAYER:INDEX",
              help="The unit to show and colour by, counted from 0 [default: the one whose --signal follows a "
                   "feature of the text most closely].")
@click.option("--signal", type=click.Choice(_SIGNALS), default="h", show_default=True,
              help="What of the unit colours the page: h (hidden state), c (LSTM cell state), a gate (GRU: z, r; "
                   "LSTM: i, f, o) or a candidate (GRU: h~; LSTM: g).")
@click.option("--top", type=Integer(1), default=3, show_default=True,
              help="Units listed per feature of the text.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="Write a page colouring the text by the unit's signal, with the correlations, to this file.")
@click.option("--json", "as_json", is_flag=True,
              help="Print every number as one JSON object: every unit's signals at every character.")
@click.option("--checkpoint", "which", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Which saved model of the run.")
@_click_option(config.OPTIONS["checkpoint_dir"])
@_click_option(config.OPTIONS["encoding"])
@_click_option(config.OPTIONS["encoding_errors"])
def inspect_run(run, text, text_file, unit_text, signal, top, html_path, as_json, which, checkpoint_dir, encoding,
                encoding_errors):
    """Each unit's hidden state and gate values at every character of TEXT under RUN's model.

    Prints one unit's signals per character and the units most correlated with simple features of the text
    (inside quotes, column, after a newline, ...).
    """
    if (text is None) == (text_file is None):
        raise ChargenError("give the text to inspect either as TEXT or with --file, one of them")
    unit = _unit_option(unit_text)
    if text_file is not None:
        text = _corpus([text_file], encoding, encoding_errors).text
    _load_tensorflow(click.get_current_context().meta["chargen.debug"])
    from chargen import checkpoints, inspection

    the_run = checkpoints.resolve_run(run, Path(checkpoint_dir))
    model = the_run.load_model(which)
    kind = config.CELL_KINDS[model.cell_kind]
    if signal not in kind.signals:
        raise ChargenError(f"--signal {signal} is not part of a {kind.title} cell; choose one of "
                           f"{', '.join(kind.signals)}. Received: --signal {signal}")
    if unit is not None and not (unit[0] < model.num_layers and unit[1] < model.units):
        raise ChargenError(f"{the_run.name} has {model.num_layers} layer(s) of {model.units} units: --unit takes "
                           f"LAYER 0..{model.num_layers - 1} and INDEX 0..{model.units - 1}. "
                           f"Received: --unit {unit_text}")
    looked = inspection.inspect_text(model, the_run.vocabulary(), text)
    layer, index = unit or inspection.strongest_unit(looked, signal)
    found = inspection.correlations(looked, top)
    if html_path is not None:
        about = Path(text_file).name if text_file is not None else "TEXT"
        _write_page(html_path, inspection.to_html(looked, layer, index, signal, found,
                                                  f"{about} under {the_run.name} ({which} model)"))
    if as_json:
        click.echo(json.dumps({"run": str(the_run.path), "checkpoint": which, "unit": [layer, index],
                               **inspection.to_dict(looked, found)}))
        return
    click.echo(f"{the_run.name} ({which} model): {kind.title}, {model.num_layers} layer(s) of {model.units} units, "
               f"{len(text):,} characters read from the zero state")
    click.echo(inspection.format_table(looked, layer, index, found))


@cli.command()
@click.argument("run", required=False)
@_click_option(config.OPTIONS["checkpoint_dir"])
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(run, checkpoint_dir, as_json):
    """What RUN is: architecture, weights, vocabulary, training so far (default: the newest run)."""
    from chargen.checkpoints import resolve_run
    from chargen.run_info import describe_run

    details = describe_run(resolve_run(run, Path(checkpoint_dir)))
    if as_json:
        click.echo(json.dumps(details, indent=2))
        return
    click.echo(f"run          {details['run']}")
    cell = details["cell"] + (" (reset after)" if details["reset_after"] else "")
    cell += f" ({details['activation']})" if details["cell"] == "rnn" else ""
    click.echo(f"model        {cell}, {details['layers']} layer(s) of {details['units']} units, "
               f"embedding {details['embedding_dim']}, {details['parameters']:,} parameters")
    click.echo(f"vocabulary   {details['vocab_size']} characters")
    if details["parent"]:
        click.echo(f"fine-tuned   {_fine_tuning_line(details['parent']).removeprefix('starting ')}")
    stateful = ", stateful" if details["stateful"] else ""
    click.echo(f"training     {details['mode']}{stateful}, {details['steps']:,} steps, "
               f"{details['chars_seen']:,} characters seen")
    click.echo(f"precision    {details['precision']}" + ("" if details["precision"] == "float32" else
                                                          " (float32 weights, optimizer, logits and loss)"))
    for key, label in (("best_val_bpc", "best"), ("last_val_bpc", "last")):
        if details[key] is not None:
            click.echo(f"validation   {label} {details[key]:.4f} bits per character")
    click.echo("weights")
    for weight in details["weights"]:
        click.echo(f"  {weight['name']:<28} {' x '.join(map(str, weight['shape']))}")


# gradients --------------------------------------------------------------------------------------

_FRESH_MODEL_OPTIONS = ("cell", "activation", "num_layers", "units", "embedding_dim", "seed")


@cli.command()
@click.argument("run", required=False)
@click.option("--text", "text_path", default="builtin:python-docs", show_default=True,
              help="Where the windows come from: a file, a folder or builtin:python-docs.")
@click.option("--window", type=INTEGER, default=50, show_default=True, help="Characters per window: k runs up to it.")
@click.option("--windows", "count", type=INTEGER, default=32, show_default=True, help="Windows averaged over.")
@click.option("--mode", type=click.Choice(config.MODES), help="How the gradient flows [default: the run's, or bptt].")
@_click_option(config.OPTIONS["cell"])
@_click_option(config.OPTIONS["activation"])
@_click_option(config.OPTIONS["num_layers"])
@_click_option(config.OPTIONS["units"])
@_click_option(config.OPTIONS["embedding_dim"])
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seed for a fresh model's weights and for choosing the windows.")
@click.option("--checkpoint", "which", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Which saved model of RUN.")
@_click_option(config.OPTIONS["checkpoint_dir"])
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Also draw the norms against k, one curve per layer, into this PNG (needs chargen[plot]).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def gradients(ctx, run, text_path, window, count, mode, cell, activation, num_layers, units, embedding_dim, seed,
              which, checkpoint_dir, plot_path, as_json):
    """How far back the gradient reaches: |dL/dh| at k steps before a window's last step, per layer.

    Measured on RUN's model, or with no RUN on a fresh, untrained model made from --cell, --units, ...
    """
    if run is not None:
        given = [config.OPTIONS[name].flag_name for name in _FRESH_MODEL_OPTIONS[:-1] if _given(ctx, name)]
        if given:
            raise ChargenError(f"a run has its own model; {', '.join(given)} describe a fresh one: leave them out "
                               f"or leave out the run. Received: {run}")
    text = _corpus([text_path], "utf-8", "strict").text
    _load_tensorflow(ctx.meta["chargen.debug"])
    from chargen import checkpoints
    from chargen import gradients as measuring
    from chargen.vocab import Vocabulary

    if run is not None:
        the_run = checkpoints.resolve_run(run, Path(checkpoint_dir))
        settings = config.TrainingConfig.from_saved(the_run.config["training"])
        model, vocab, name = the_run.load_model(which), the_run.vocabulary(), f"run {the_run.name} ({which} model)"
        mode = mode or settings.mode
    else:
        settings = config.TrainingConfig(cell=cell, activation=activation, num_layers=num_layers, units=units,
                                         embedding_dim=embedding_dim)
        vocab = Vocabulary.from_text(text)
        model = measuring.fresh_model(len(vocab), seed, **{**settings.model_arguments(), "dtype": "float32"})
        name = f"fresh {cell} x{num_layers}x{units}"
        mode = mode or "bptt"
    windows = measuring.sample_windows(vocab.encode(text), window, count, seed)
    report = measuring.GradientReport(
        model=name + (f" ({settings.activation})" if settings.cell == "rnn" else ""), cell=settings.cell,
        activation=settings.activation, mode=mode, windows=len(windows), window=window,
        text=Path(text_path).name if not text_path.startswith("builtin:") else text_path,
        layers=measuring.measure(model, windows, through_time=mode == "bptt"))
    if plot_path is not None:
        measuring.plot(report, Path(plot_path))
        click.echo(f"wrote {plot_path}", err=True)
    click.echo(json.dumps(report.to_dict()) if as_json else measuring.format_table(report))


# compare ----------------------------------------------------------------------------------------

def _comma_list(value: str, flag: str, allowed=None, kind=str) -> list:
    items = [item.strip() for item in value.split(",") if item.strip()]
    try:
        items = [kind(item) for item in items]
    except ValueError:
        items = []
    if not items or (allowed is not None and not set(items) <= set(allowed)) or (kind is int and min(items) < 1):
        choices = f"of {', '.join(allowed)}" if allowed else "positive integers"
        raise ChargenError(f"{flag} takes a comma-separated list {choices}. Received: {flag} {value}")
    return list(dict.fromkeys(items))


@cli.command()
@click.option("--cells", default="rnn,gru,lstm", show_default=True, help="Cells, comma-separated (rnn, gru, lstm).")
@click.option("--modes", default="bptt", show_default=True, help="Training modes, comma-separated.")
@click.option("--activations", default="tanh", show_default=True,
              help="The SimpleRNN's activations, comma-separated (gated cells run with tanh only).")
@click.option("--lags", default="5,20", show_default=True,
              help="Filler characters between a recall source's key and its repeat, comma-separated.")
@click.option("--units", type=INTEGER, default=32, show_default=True, help="Hidden units of every model.")
@click.option("--steps", type=INTEGER, default=1500, show_default=True, help="Training steps per trial.")
@click.option("--time-limit", type=FINITE_FLOAT, metavar="SECONDS",
              help="Also stop each trial after this many seconds.")
@click.option("--learning-rate", type=FINITE_FLOAT,
              help="Adam's learning rate in every trial, held constant [default: compare.LEARNING_RATE, 0.01].")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for the sources, weights and windows.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Also draw the share of the key each trial recalled into this PNG (needs chargen[plot]).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list, a record per trial.")
def compare(cells, modes, activations, lags, units, steps, time_limit, learning_rate, seed, plot_path, as_json):
    """Train a grid of small models on cued recall sources, one budget each, and print one table.

    Each trial's validation bits per character sits beside the source's floor and its no-memory floor, and its
    bits on the recalled keys (the characters after each '=' cue) say how much of the key it remembers.
    """
    trials_grid = (_comma_list(cells, "--cells", config.CELL_KINDS), _comma_list(modes, "--modes", config.MODES),
                   _comma_list(activations, "--activations", config.ACTIVATIONS),
                   _comma_list(lags, "--lags", kind=int))
    if units < 1 or steps < 1 or any(value is not None and value <= 0 for value in (learning_rate, time_limit)):
        raise ChargenError(f"--units and --steps must be positive, --learning-rate and --time-limit too when given. "
                           f"Received: --units {units}, --steps {steps}, --learning-rate {learning_rate}, "
                           f"--time-limit {time_limit}")
    _load_tensorflow(click.get_current_context().meta["chargen.debug"])
    from chargen import compare as comparing

    trials = comparing.grid(*trials_grid)
    outcomes = []
    for number, trial in enumerate(trials, 1):
        outcome = comparing.run_trial(trial, units, steps, time_limit, seed, learning_rate or comparing.LEARNING_RATE)
        click.echo(f"[{number}/{len(trials)}] {trial.cell} {trial.mode} {trial.activation} lag {trial.lag}: "
                   f"{outcome.val_bpc:.4f} bits per character in {outcome.seconds:.0f} s", err=True)
        outcomes.append(outcome)
    if plot_path is not None:
        comparing.plot(outcomes, Path(plot_path))
        click.echo(f"wrote {plot_path}", err=True)
    click.echo(json.dumps([o.to_dict() for o in outcomes]) if as_json else comparing.format_table(outcomes))


# export -----------------------------------------------------------------------------------------

@cli.command()
@click.argument("run")
@click.option("--output", type=click.Path(file_okay=False), help="Folder to write [default: RUN/export].")
@click.option("--checkpoint", "which", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Which saved model of the run.")
@click.option("--format", "fmt", type=click.Choice(["savedmodel", "litert"]), default="savedmodel", show_default=True,
              help="litert also converts the step to a LiteRT (TensorFlow Lite) file, step.tflite.")
@click.option("--force", is_flag=True, help="Replace a non-empty --output folder.")
@_click_option(config.OPTIONS["checkpoint_dir"])
def export(run, output, which, fmt, force, checkpoint_dir):
    """Write RUN's model as a TensorFlow SavedModel with `step` and `generate` signatures, for serving."""
    from chargen.checkpoints import resolve_run

    the_run = resolve_run(run, Path(checkpoint_dir))
    _load_tensorflow(click.get_current_context().meta["chargen.debug"])
    from chargen.export import export_run

    exported = export_run(the_run, Path(output) if output else None, which, fmt, force)
    click.echo(f"exported {the_run.name} ({which} model) to {exported.path}")
    for name, (inputs, outputs) in exported.signatures.items():
        click.echo(f"  {name}({', '.join(inputs)})")
        click.echo(f"    -> {', '.join(outputs)}")
    if exported.litert is not None:
        click.echo(f"LiteRT step: {exported.litert}")


# plot -------------------------------------------------------------------------------------------

@cli.command()
@click.argument("runs", metavar="RUN...", nargs=-1, required=True)
@click.option("--output", default="plot.png", show_default=True, type=click.Path(dir_okay=False),
              help="The PNG file to write.")
@click.option("--x", "x_axis", type=click.Choice(["step", "time"]), default="step", show_default=True,
              help="Horizontal axis: optimizer steps, or training time (over all sessions of a run).")
@click.option("--width", type=INTEGER, default=1200, show_default=True, help="Picture width in pixels.")
@click.option("--height", type=INTEGER, default=450, show_default=True, help="Picture height in pixels.")
@_click_option(config.OPTIONS["checkpoint_dir"])
def plot(runs, output, x_axis, width, height, checkpoint_dir):
    """Draw RUNs' training and validation bits per character into one PNG (needs `pip install 'chargen[plot]'`)."""
    from chargen.checkpoints import resolve_run
    from chargen.plotting import plot_runs

    resolved = [resolve_run(run, Path(checkpoint_dir)) for run in runs]
    written = plot_runs(resolved, Path(output), x_axis, width, height)
    click.echo(f"wrote {written}: {len(resolved)} run(s), {width}x{height} pixels")


# samplers, corpus ---------------------------------------------------------------------------------

@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def samplers(as_json):
    """List the installed sampling strategies (built-in and plugins) and their options."""
    from chargen.sampling import describe_all

    descriptions = describe_all()
    if as_json:
        click.echo(json.dumps([_strategy_record(d) for d in descriptions], indent=2))
        return
    for d in descriptions:
        where = f"{d.info.distribution} {d.info.version}"
        if d.error:
            click.echo(f"{d.info.name:<10} BROKEN ({where}): {d.error}")
            continue
        click.echo(f"{d.info.name:<10} {d.description} [{d.kind} level, {where}]")
        for option in d.options:
            click.echo(f"{'':<12}-o {option.name}={option.default!r:<8} {option.type.__name__}: {option.help}")


def _strategy_record(d) -> dict:
    record = {"name": d.info.name, "distribution": d.info.distribution, "version": d.info.version, "error": d.error}
    if not d.error:
        record.update(kind=d.kind, description=d.description, stochastic=d.stochastic, options=[
            {"name": o.name, "type": o.type.__name__, "default": o.default, "help": o.help} for o in d.options
        ])
    return record


@cli.group()
def corpus():
    """Make corpora with a known entropy floor, or fetch well-known public ones."""


@corpus.command()
@click.argument("name", required=False)
@click.option("--output", "folder", type=click.Path(file_okay=False),
              help="Folder to save into [default: ~/.cache/chargen/corpora].")
@click.option("--url", help="Download from this address instead (a mirror); the pinned sha256 still decides.")
def fetch(name, folder, url):
    """Download the public corpus NAME, checked against its pinned sha256 (no NAME: list them)."""
    from tqdm import tqdm

    from chargen import downloads

    if name is None:
        for known in downloads.KNOWN.values():
            click.echo(f"{known.name}: {known.description}; {known.size:,} bytes from {known.url}")
        return
    folder = Path(folder) if folder else downloads.default_folder()
    with tqdm(unit="B", unit_scale=True, desc=name, leave=False, disable=None) as bar:
        def on_bytes(count, total):
            bar.total = total
            bar.update(count)

        path, downloaded = downloads.fetch(name, folder, url=url, on_bytes=on_bytes)
    click.echo(f"{'fetched' if downloaded else 'already there:'} {path} (sha256 verified)")
    click.echo(f"train on it with: chargen train {shlex.quote(str(path))}")


@corpus.command()
@click.argument("kind", type=click.Choice(["markov", "recall"]))
@click.option("--output", type=click.Path(dir_okay=False), required=True, help="File to write.")
@click.option("--length", type=INTEGER, default=200_000, show_default=True, help="Characters to write.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--order", type=INTEGER, default=2, show_default=True, help="markov: characters of context.")
@click.option("--alphabet-size", type=INTEGER, default=8, show_default=True, help="markov: distinct characters.")
@click.option("--concentration", type=FINITE_FLOAT, default=0.2, show_default=True,
              help="markov: Dirichlet concentration (small: peaked).")
@click.option("--lag", type=INTEGER, default=8, show_default=True,
              help="recall: filler characters between a key and its repeat.")
@click.option("--keys", "num_keys", type=INTEGER, default=4, show_default=True, help="recall: distinct keys.")
@click.option("--filler-size", type=INTEGER, default=2, show_default=True, help="recall: distinct filler characters.")
@click.option("--cue", is_flag=True,
              help="recall: write '=' before each repeated key, so a model knows when to recall it without counting.")
def synth(kind, output, length, seed, order, alphabet_size, concentration, lag, num_keys, filler_size, cue):
    """Write a synthetic corpus of KIND and print its exact entropy floor."""
    from chargen import synthetic

    budget.check_synthetic(length)
    if kind == "markov":
        made = synthetic.markov_source(order=order, alphabet_size=alphabet_size, length=length, seed=seed,
                                       concentration=concentration)
    else:
        made = synthetic.recall_source(lag=lag, num_keys=num_keys, filler_size=filler_size, length=length, seed=seed,
                                       cue=cue)
    Path(output).write_text(made.text, encoding="utf-8")
    click.echo(f"wrote {len(made.text):,} characters to {output}: {made.description}")
    click.echo(f"entropy floor: {made.entropy_bits_per_char:.4f} bits per character")
