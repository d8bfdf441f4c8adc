"""Fixed-time trials for choosing `chargen train`'s defaults: each trial trains for the same wall-clock time.

    python -m bench.sweep_defaults --seconds 180 '{}' '{"learning_rate": 0.005, "seq_len": 50}' ...

Each argument is a trial: `TrainingConfig` fields that differ from the defaults ('{}' is the defaults
themselves). Trials run one after the other in this process on the first 90% of tiny shakespeare, with
XLA as `chargen train` uses it, evaluating only at the end (on the last 10%, as `chargen eval` would score
the last snapshot), and print one JSON line each. A trial of 180 seconds ranks settings for early training;
the ten-minute row of `python -m bench` is the one that judges the chosen defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import quiet_tensorflow  # noqa: E402
from bench.quality import CORPUS  # noqa: E402


def trial(text: str, seconds: float, overrides: dict) -> dict:
    """Train with `overrides` for `seconds`; the validation bits per character and the steps taken."""
    from chargen import corpus
    from chargen.config import TrainingConfig
    from chargen.training import Trainer, build_model
    from chargen.vocab import Vocabulary

    # val_chars 0: the one evaluation scores the whole validation text, as `chargen eval` and the ten-minute
    # row do (the default cap would score its first 20,000 characters only).
    config = TrainingConfig(**{"eval_every": 0, **overrides, "time_limit": seconds, "val_chars": 0})
    vocab = Vocabulary.from_text(text)
    train_ids, val_ids = corpus.split_ids(vocab.encode(text), config.val_fraction, config.seq_len)
    trainer = Trainer(build_model(config, len(vocab)), config, train_ids, val_ids, vocab=vocab, xla=True)
    started = time.monotonic()
    progress = trainer.fit()
    return {**overrides, "seconds": seconds, "val_bpc": round(progress.last_val_bpc, 4), "steps": progress.step,
            "wall_seconds": round(time.monotonic() - started, 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trials", nargs="+", help="JSON objects of TrainingConfig fields")
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    args = parser.parse_args(argv)
    if not args.corpus.is_file():
        sys.exit(f"{args.corpus} not found: the sweep reads tiny shakespeare from ../shared/corpora")
    quiet_tensorflow()
    text = args.corpus.read_text(encoding="utf-8")
    for overrides in map(json.loads, args.trials):
        print(json.dumps(trial(text, args.seconds, overrides)), flush=True)


if __name__ == "__main__":
    main()
