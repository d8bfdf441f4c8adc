"""Fine-tuning: a new run that starts from another run's trained weights and vocabulary.

The new run takes its parent's model options (`config.ARCHITECTURE`: the shape of the network and its
arithmetic), since the weights only fit that model; its training options (learning rate, batch, window,
limits...) are its own. Its optimiser and step counter start afresh.

Characters of the new text that the parent's vocabulary lacks have no weights, so `--new-chars` decides:
  - error (the default): stop, listing them;
  - drop: remove them from the text (a resumed run drops them again);
  - grow: add them to the vocabulary. The vocabulary stays sorted by code point, so ids move: every old
    character keeps its embedding row and its output row (kernel column and bias) exactly, under its new
    id, and the new characters' rows are those of a freshly built model of the grown size, initialised as
    any new run's are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chargen.config import ARCHITECTURE, OPTIONS, TrainingConfig
from chargen.errors import ChargenError
from chargen.vocab import Vocabulary

SHOWN_CHARACTERS = 20  # an error lists at most this many of the missing characters
COUNT_CHUNK = 1 << 24  # ids counted at a time: a corpus larger than memory is never read whole


@dataclass(frozen=True)
class AdaptedVocabulary:
    """The vocabulary a fine-tuned run trains with, and what `--new-chars` changed."""

    vocab: Vocabulary
    missing: str  # the distinct characters the parent's vocabulary lacks, sorted
    dropped: int  # their occurrences, removed from the text (drop)


def inherited_config(parent: TrainingConfig, options: dict, given: dict, parent_name: str) -> TrainingConfig:
    """The new run's config: `options` with the parent's model options; a given one that differs is refused."""
    for name in ARCHITECTURE:
        if name in given and given[name] != getattr(parent, name):
            kept = ", ".join(OPTIONS[option].flag_name for option in ARCHITECTURE)
            raise ChargenError(f"{OPTIONS[name].flag_name} {given[name]} differs from the --init-from run "
                               f"{parent_name}'s {getattr(parent, name)}; a fine-tuned run keeps its parent's "
                               f"model ({kept}): leave the option out")
    return TrainingConfig(**{**options, **{name: getattr(parent, name) for name in ARCHITECTURE}})


def adapt_vocabulary(ids: np.ndarray, corpus_vocab: Vocabulary, parent_vocab: Vocabulary, new_chars: str,
                     parent_name: str) -> AdaptedVocabulary:
    """Reconcile a corpus (`ids` in its own `corpus_vocab`, a memory map of any size) with the parent's
    vocabulary as `new_chars` ("error", "drop" or "grow") says. The text itself is never decoded: dropping
    happens when the ids are translated (`EncodedCorpus.ids_for`)."""
    missing = sorted(set(corpus_vocab.chars) - set(parent_vocab.chars))
    if not missing:
        return AdaptedVocabulary(parent_vocab, "", 0)
    if new_chars == "grow":
        return AdaptedVocabulary(Vocabulary(parent_vocab.chars + missing), "".join(missing), 0)
    is_missing = np.zeros(len(corpus_vocab), bool)
    is_missing[corpus_vocab.encode("".join(missing))] = True
    occurrences = sum(int(np.count_nonzero(is_missing[ids[start:start + COUNT_CHUNK]]))
                      for start in range(0, len(ids), COUNT_CHUNK))
    if new_chars == "drop":
        return AdaptedVocabulary(parent_vocab, "".join(missing), occurrences)
    shown = "".join(missing[:SHOWN_CHARACTERS])
    more = f" and {len(missing) - SHOWN_CHARACTERS} more" if len(missing) > SHOWN_CHARACTERS else ""
    raise ChargenError(f"{len(missing)} distinct character(s) of the corpus ({occurrences:,} occurrences) are not "
                       f"in the vocabulary of run {parent_name}: {shown!r}{more}; pass --new-chars drop to remove "
                       "them from the text, or --new-chars grow to add them to the vocabulary")


def transplant_weights(parent_model, model, parent_vocab: Vocabulary, vocab: Vocabulary) -> None:
    """Copy every trained weight of `parent_model` into `model` (the same architecture, built, `vocab` a
    superset of `parent_vocab`): the recurrent layers whole, the embedding and output rows by character.

    Rows of characters new in `vocab` keep the values `model` was initialised with.
    """
    rows = vocab.encode("".join(parent_vocab.chars))  # each old character's id in the new vocabulary
    for layer, parent_layer in zip(model.recurrent_layers, parent_model.recurrent_layers, strict=True):
        layer.set_weights(parent_layer.get_weights())
    embeddings = np.array(model.embedding.embeddings)  # (vocab, embedding_dim)
    embeddings[rows] = np.asarray(parent_model.embedding.embeddings)
    model.embedding.embeddings.assign(embeddings)
    kernel, bias = np.array(model.head.kernel), np.array(model.head.bias)  # (units, vocab), (vocab,)
    kernel[:, rows] = np.asarray(parent_model.head.kernel)
    bias[rows] = np.asarray(parent_model.head.bias)
    model.head.kernel.assign(kernel)
    model.head.bias.assign(bias)


def parent_record(parent_path, which: str, snapshot_name: str, step: int, new_chars: str,
                  adapted: AdaptedVocabulary) -> dict:
    """What config.json records of the parent (and what `chargen info` shows)."""
    return {"run": str(parent_path), "snapshot": which, "snapshot_folder": snapshot_name, "step": step,
            "new_chars": new_chars, "missing_chars": adapted.missing, "dropped_occurrences": adapted.dropped}
