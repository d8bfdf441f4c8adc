"""A training session: a new or resumed run, wiring the trainer to its run folder.

`training.py` trains and knows nothing of run folders; `checkpoints.py` stores runs and knows nothing of
training. This module joins them: it creates or opens the run, builds or restores the model, optimiser,
progress and carried states, and attaches the callback that saves snapshots and metrics.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import keras
import tensorflow as tf

from chargen import corpus, encoded, finetune
from chargen.checkpoints import Run
from chargen.config import OPTIONS, PRECISIONS, RESUMABLE, STOP_LIMITS, TrainingConfig
from chargen.errors import ChargenError
from chargen.training import LN2, Callback, Evaluator, Progress, Trainer, build_model, make_optimizer
from chargen.vocab import Vocabulary


class SaveCheckpoints(Callback):
    """Saves a snapshot at every evaluation and when training stops, and logs the metrics."""

    def __init__(self, run: Run):
        self.run = run
        self.saved_step = None

    def on_evaluate(self, trainer: Trainer, logs: dict) -> None:
        record = {k: logs.get(k) for k in ("step", "loss", "bpc", "learning_rate", "val_loss", "val_bpc")}
        record["chars_seen"] = trainer.progress.chars_seen
        record["elapsed_seconds"] = round(trainer.progress.elapsed_seconds, 3)
        self.run.append_metrics(record)
        self._save(trainer, best=bool(logs.get("best")))

    def on_train_end(self, trainer: Trainer, logs: dict) -> None:
        if trainer.progress.step != self.saved_step:
            self._save(trainer, best=False)

    def _save(self, trainer: Trainer, best: bool) -> None:
        states = trainer.batch_states()  # on every worker: gathering them from the replicas is collective
        progress = dataclasses.asdict(trainer.progress)
        self.run.save_snapshot(trainer.model, trainer.optimizer, progress, states, best=best)
        self.saved_step = trainer.progress.step


def versions() -> dict:
    import chargen

    return {"chargen": chargen.__version__, "tensorflow": tf.__version__, "keras": keras.__version__}


def encode_and_split(text_corpus: corpus.Corpus | encoded.EncodedCorpus, vocab: Vocabulary, config: TrainingConfig,
                     drop_missing: bool = False):
    """The corpus's ids in `vocab`, memory-mapped from the encoded cache, split into training and validation."""
    ids = encoded.encode(text_corpus).ids_for(vocab, drop_missing)
    return corpus.split_ids(ids, config.val_fraction, config.seq_len)


def new_session(text_corpus: corpus.Corpus, config: TrainingConfig, run_path: Path, callbacks=(),
                xla: bool = True) -> Trainer:
    """A trainer for a new run on `text_corpus`, with its run folder created and checkpointing attached.

    `xla`: compile the training step with XLA (like `--device`, a setting of this session, not of the run).
    """
    text_corpus = encoded.encode(text_corpus)
    vocab = text_corpus.vocab
    train_ids, val_ids = encode_and_split(text_corpus, vocab, config)
    run = Run.create(run_path, run_record(text_corpus, config, vocab), vocab)
    model = build_model(config, len(vocab))
    return Trainer(model, config, train_ids, val_ids, callbacks=[*callbacks, SaveCheckpoints(run)], vocab=vocab,
                   xla=xla)


def run_record(text_corpus: encoded.EncodedCorpus, config: TrainingConfig, vocab: Vocabulary) -> dict:
    """What a new run's config.json holds."""
    return {
        "training": config.to_dict(),
        "corpus": {"sources": [list(source) for source in text_corpus.sources],
                   "characters": text_corpus.num_chars, "bytes": text_corpus.num_bytes, "sha256": text_corpus.sha256},
        "vocab_size": len(vocab),
        "versions": versions(),
    }


def finetune_session(text_corpus: corpus.Corpus, parent: Run, which: str, options: dict, given: dict,
                     new_chars: str, run_path: Path, callbacks=(), xla: bool = True) -> tuple[Trainer, dict]:
    """A trainer for a new run on `text_corpus` starting from `parent`'s `which` snapshot (see `finetune.py`),
    and the parent record written into its config.json.

    `options` are the run options of this command, `given` those the user gave explicitly (a model option
    given must equal the parent's); `new_chars` says what to do with characters the parent lacks.
    """
    config = finetune.inherited_config(TrainingConfig.from_saved(parent.config["training"]), options, given,
                                       parent.name)
    parent_vocab = parent.vocabulary()
    text_corpus = encoded.encode(text_corpus)
    adapted = finetune.adapt_vocabulary(text_corpus.ids, text_corpus.vocab, parent_vocab, new_chars, parent.name)
    train_ids, val_ids = encode_and_split(text_corpus, adapted.vocab, config, drop_missing=new_chars == "drop")
    parent_model = parent.load_model(which)
    snapshot = parent.snapshot_path(which)
    record = finetune.parent_record(parent.path.resolve(), which, snapshot.name, parent.load_progress(which)["step"],
                                    new_chars, adapted)
    model = build_model(config, len(adapted.vocab))
    finetune.transplant_weights(parent_model, model, parent_vocab, adapted.vocab)
    run = Run.create(run_path, {**run_record(text_corpus, config, adapted.vocab), "parent": record}, adapted.vocab)
    trainer = Trainer(model, config, train_ids, val_ids, callbacks=[*callbacks, SaveCheckpoints(run)],
                      vocab=adapted.vocab, xla=xla)
    return trainer, record


def resume_session(text_corpus: corpus.Corpus, run: Run, given: dict, callbacks=(), xla: bool = True) -> Trainer:
    """A trainer continuing `run` exactly where it stopped: weights, optimiser, step, data position, states.

    `given` holds the run options the user gave explicitly. Only the limits (`config.RESUMABLE`) may
    change; another option that differs from the run's is refused. Giving any of --steps, --epochs and
    --time-limit replaces all three (those not given are lifted), so `--resume --steps N` trains to step N
    whatever stopped the run before; giving none keeps the saved ones, so a plain `--resume` finishes what
    the run set out to do.
    """
    saved = run.config
    expected = saved.get("corpus", {}).get("sha256")
    if expected and expected != text_corpus.sha256:
        raise ChargenError(
            f"the corpus given differs from the one run {run.name} was trained on "
            f"(sha256 {text_corpus.sha256[:12]}… instead of {expected[:12]}…); "
            "pass the same files to resume, or start a new run"
        )
    recorded = TrainingConfig.from_saved(saved["training"])
    config = dataclasses.replace(recorded, **resumed_limits(recorded, given))
    vocab = run.vocabulary()
    dropped = saved.get("parent", {}).get("new_chars") == "drop"  # a fine-tuned run that dropped them drops them again
    train_ids, val_ids = encode_and_split(text_corpus, vocab, config, drop_missing=dropped)
    model = run.load_model("last")
    optimizer = make_optimizer(config)
    optimizer.build(model.trainable_variables)
    run.restore_optimizer(optimizer, "last")
    progress = Progress(**run.load_progress("last"))
    states = run.load_states(config.num_layers, "last") if config.stateful else None
    return Trainer(model, config, train_ids, val_ids, optimizer=optimizer, progress=progress,
                   carried_states=states, callbacks=[*callbacks, SaveCheckpoints(run)], vocab=vocab, xla=xla)


def resumed_limits(saved: TrainingConfig, given: dict) -> dict:
    """The limits a resumed run takes from `given`; any other given option must equal the run's."""
    for name, value in given.items():
        if name not in RESUMABLE and value != getattr(saved, name):
            limits = ", ".join(OPTIONS[limit].flag_name for limit in RESUMABLE)
            raise ChargenError(f"{OPTIONS[name].flag_name} {value} differs from the resumed run's "
                               f"{getattr(saved, name)}; a resumed run keeps its settings (only {limits} may change)")
    limits = {name: value for name, value in given.items() if name in RESUMABLE}
    if limits.keys() & set(STOP_LIMITS):
        limits = {**dict.fromkeys(STOP_LIMITS), **limits}
    return limits


def evaluate_run(run: Run, text_corpus: corpus.Corpus, which: str = "best", precision: str = "float32") -> dict:
    """Bits per character and perplexity (per character) of a saved model on a text, computed in `precision`.

    float32 by default whatever precision the run trained in: the figure then describes the model as
    `chargen sample` runs it by default, and runs trained in different precisions are scored alike.
    """
    config = TrainingConfig.from_saved(run.config["training"])
    ids = encoded.encode(text_corpus).ids_for(run.vocabulary())  # memory-mapped: a text of any size is scored
    model = run.load_model(which).with_precision(PRECISIONS[precision])
    total, count = Evaluator(model, config.seq_len, config.batch_size).score(ids)
    nats = total / count
    return {"bits_per_char": nats / LN2, "nats_per_char": nats, "perplexity": math.exp(nats), "characters": count,
            "precision": precision}
