"""Bits per character after a short, fixed training budget: BPTT against teacher forcing.

A small LSTM is trained on tiny shakespeare (read in place from ../shared/corpora; never copied) for
the same number of steps, on the same batches (same seed), in each mode, and scored on the
validation tail (the last 10%, nanoGPT's split) with the state carried across windows, by chargen's
own evaluator, a few times along the way (the curve). The training time of each run (evaluations
excluded) is reported too: teacher forcing takes cheaper steps, so at an equal time budget it would
see more text. Skipped when the corpus is not there.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from bench.common import ROOT
from chargen.training import Callback

CORPUS = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"
MODES = ("bptt", "teacher-forcing")


class Curve(Callback):
    """Keeps (step, validation bits per character) at each evaluation."""

    def __init__(self):
        self.points: list[tuple[int, float]] = []

    def on_evaluate(self, trainer, logs: dict) -> None:
        self.points.append((logs["step"], logs["val_bpc"]))


def sizes(quick: bool) -> dict:
    base = {"cell": "lstm", "layers": 2, "units": 128, "embedding": 32, "batch": 32, "window": 100}
    return {**base, "steps": 60 if quick else 1000, "evaluations": 2 if quick else 4}


def run(quick: bool, corpus_path: Path = CORPUS, log=print, size: dict | None = None, xla: bool = True) -> dict:
    """Train and score both modes; `size` replaces `sizes(quick)` and `xla` turns compiling off (for the tests)."""
    if not corpus_path.is_file():
        return {"skipped": f"{corpus_path} not found"}
    from chargen.config import TrainingConfig
    from chargen.corpus import read_corpus, split_ids
    from chargen.training import Trainer, build_model
    from chargen.vocab import Vocabulary

    size = size or sizes(quick)
    corpus = read_corpus(corpus_path)
    vocab = Vocabulary.from_text(corpus.text)
    ids = vocab.encode(corpus.text)
    train_ids, val_ids = split_ids(ids, 0.1, size["window"])
    rows = []
    for mode in MODES:
        config = TrainingConfig(
            cell=size["cell"], num_layers=size["layers"], units=size["units"], embedding_dim=size["embedding"],
            seq_len=size["window"], batch_size=size["batch"], mode=mode, steps=size["steps"],
            eval_every=size["steps"] // size["evaluations"], seed=0,
        )
        model = build_model(config, len(vocab))
        curve = Curve()
        trainer = Trainer(model, config, train_ids, val_ids, vocab=vocab, callbacks=[curve], xla=xla)
        run_evaluation = trainer.run_evaluation
        evaluation_seconds = []

        def timed_evaluation(logs, run_evaluation=run_evaluation, evaluation_seconds=evaluation_seconds):
            start = time.perf_counter()
            try:
                run_evaluation(logs)
            finally:
                evaluation_seconds.append(time.perf_counter() - start)

        trainer.run_evaluation = timed_evaluation
        start = time.perf_counter()
        progress = trainer.fit()
        seconds = time.perf_counter() - start
        rows.append({
            "mode": mode, "steps": progress.step, "chars_seen": progress.chars_seen,
            "val_bpc": progress.last_val_bpc, "curve": curve.points,
            "training_seconds": seconds - sum(evaluation_seconds), "evaluation_seconds": sum(evaluation_seconds),
        })
        log(f"    {mode}: {progress.last_val_bpc:.3f} bits/char after {progress.step} steps ({seconds:.0f} s)")
    return {"corpus": str(corpus_path), "characters": len(ids), "sha256": corpus.sha256, "vocab": len(vocab),
            "uniform_bpc": math.log2(len(vocab)), "sizes": size, "rows": rows}
