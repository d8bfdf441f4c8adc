"""The one source of configuration: cell kinds, training modes, precisions and every option of `chargen train`.

TensorFlow-free, so `chargen --help` and `chargen info` stay instant. Each fact lives here once and the
rest of chargen reads it: the Click options of `train` are made from `TRAINING_OPTIONS`, the run's
`TrainingConfig` holds the run options, `RESUMABLE` says which of them a resumed run may change, `info`
counts weights from `CELL_KINDS`, and the README's option table is `option_table()` (a test keeps them
equal).

Three kinds of option:
  - a run option is part of the run (saved in config.json, fixed once training starts);
  - a limit is part of the run too, but `--resume` may change it (how long to train, how often to evaluate);
  - a session option is a setting of this command only (where to train, how to report), never saved.
    `--init-from` is one too: it chooses how a new run starts, and the run records its parent in config.json.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chargen.errors import ChargenError


@dataclass(frozen=True)
class CellKind:
    """A recurrent cell as the rest of chargen sees it, without importing it."""

    name: str  # "--cell NAME"
    title: str  # how documents name it
    gate_names: tuple[str, ...]  # the gates in the order the fused kernels stack them
    num_states: int  # state tensors carried from step to step (LSTM: h and c)
    # What the cell's `call(..., return_gates=True)` adds, each after its sigmoid or tanh, as its docstring
    # names them: the gates and the candidate (the GRU's is h~, apart from its state h).
    gate_values: tuple[str, ...]

    @property
    def signals(self) -> tuple[str, ...]:
        """Everything `chargen inspect` shows per unit and step: the states (h, and the LSTM's c), then the gates."""
        return ("h", "c")[:self.num_states] + self.gate_values


CELL_KINDS = {
    kind.name: kind
    for kind in (
        CellKind("rnn", "SimpleRNN", ("h",), 1, ()),
        CellKind("gru", "GRU", ("z", "r", "h"), 1, ("z", "r", "h~")),
        CellKind("lstm", "LSTM", ("i", "f", "g", "o"), 2, ("i", "f", "g", "o")),
    )
}
MODES = ("bptt", "teacher-forcing")
ACTIVATIONS = ("tanh", "sigmoid", "relu")  # --activation: the SimpleRNN's; gated cells keep their own
DEVICES = ("auto", "cpu", "gpu")
ENCODING_ERRORS = ("strict", "replace", "ignore")
LR_SCHEDULES = ("cosine", "constant")
NEW_CHARS = ("error", "drop", "grow")  # --new-chars: a fine-tuned run's characters its parent lacks
SNAPSHOT_CHOICES = ("best", "last")
# What a fine-tuned run (--init-from) takes from its parent: the model's shape and arithmetic.
ARCHITECTURE = ("cell", "reset_after", "activation", "num_layers", "units", "embedding_dim", "precision")
LR_FLOOR = 0.1  # the cosine schedule ends at this fraction of --learning-rate
# --precision NAME -> the Keras dtype policy of the recurrent layers: float32 variables, computing in NAME.
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}

SEED_RANGE = (0, 2**32 - 1)  # what numpy's and Keras's global seeding accepts

RUN, LIMIT, SESSION = "run", "limit", "session"


@dataclass(frozen=True)
class OptionSpec:
    """How one option of `chargen train` is offered on the command line and treated on `--resume`."""

    name: str  # the Python name: a TrainingConfig field or a session keyword argument
    default: Any
    type: type  # int, float, str, bool, or Path for a folder
    help: str  # one line for --help and the README
    kind: str = RUN  # RUN, LIMIT or SESSION (see the module docstring)
    flag: str = ""  # e.g. "--layers"; default: "--" + name with dashes
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    negatable: bool = True  # a bool option also has "--no-..." (False: a plain flag such as --quiet)
    envvar: str | None = None  # an environment variable that replaces the default, for a value users repeat

    @property
    def shows_default(self) -> bool:
        """Whether help and the README show a default: not for None, nor for a plain flag such as --quiet."""
        return self.default is not None and (self.type is not bool or self.negatable)

    @property
    def flag_name(self) -> str:
        """How a message names the option: "--layers"."""
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def flags(self) -> str:
        """The flag as declared: "--layers", or "--stateful/--no-stateful" for a negatable bool."""
        flag = self.flag_name
        return f"{flag}/--no-{flag[2:]}" if self.type is bool and self.negatable else flag


def _run_option(name, default, type_, help_, **extra) -> OptionSpec:
    return OptionSpec(name, default, type_, help_, kind=RUN, **extra)


def _limit(name, default, type_, help_, **extra) -> OptionSpec:
    return OptionSpec(name, default, type_, help_, kind=LIMIT, **extra)


def _session(name, default, type_, help_, **extra) -> OptionSpec:
    return OptionSpec(name, default, type_, help_, kind=SESSION, **extra)


TRAINING_OPTIONS = (
    _run_option("cell", "lstm", str, "Recurrent cell.", choices=tuple(CELL_KINDS)),
    _run_option("reset_after", False, bool,
                "GRU only: apply the reset gate after the recurrent product (the cuDNN form, Keras's default)."),
    _run_option("activation", "tanh", str,
                "rnn only: the SimpleRNN's activation (the gated cells keep sigmoid gates and a tanh candidate).",
                choices=ACTIVATIONS),
    _run_option("num_layers", 2, int, "Recurrent layers stacked.", flag="--layers"),
    _run_option("units", 256, int, "Hidden units per layer."),
    _run_option("embedding_dim", 64, int, "Size of the character vectors."),
    _run_option("seq_len", 50, int, "Window length (the BPTT horizon)."),
    _run_option("batch_size", 16, int, "Windows per step."),
    _run_option("mode", "bptt", str, "bptt: gradient through every step; teacher-forcing: no gradient through time.",
                choices=MODES),
    _run_option("stateful", False, bool, "Carry the state from one window to the next of the same stream (bptt)."),
    _run_option("precision", "float32", str,
                "Arithmetic of the recurrent layers; weights, optimizer, logits and loss stay float32 "
                "(float16 adds loss scaling).", choices=tuple(PRECISIONS)),
    _limit("steps", None, int, "Stop after this many steps in total."),
    _limit("epochs", None, float, "Stop after this many passes over the training text."),
    _limit("time_limit", None, float, "Stop after this many seconds.", metavar="SECONDS"),
    _run_option("learning_rate", 5e-3, float, "Adam's learning rate."),
    _run_option("lr_schedule", "cosine", str,
                "cosine: from --learning-rate down to a tenth of it at the step, epoch or time limit "
                "(constant when none is set); constant: --learning-rate throughout.", choices=LR_SCHEDULES),
    _run_option("clip_norm", 5.0, float, "Clip gradients to this global norm (0: off)."),
    _run_option("dropout", 0.0, float, "Dropout between layers."),
    _run_option("val_fraction", 0.1, float, "Tail of the text held out for validation."),
    _limit("eval_every", 500, int, "Steps between evaluations and saves (0: only at the end)."),
    _run_option("val_chars", 20_000, int,
                "Characters of the validation text each evaluation during training scores, from its start "
                "(0: all); `chargen eval` scores all of it."),
    _run_option("seed", 0, int, "Seed for weights, window order and dropout."),
    _session("run_name", None, str, "Name of the run folder inside --checkpoint-dir, one plain name without / or \\ "
             "(default: cell, corpus and time)."),
    _session("checkpoint_dir", "checkpoints", Path, "Folder that holds the runs.", envvar="CHARGEN_CHECKPOINT_DIR"),
    _session("resume", False, bool, "Continue --run-name (or the newest run) where it stopped.", negatable=False),
    _session("init_from", None, str,
             "Start a new run from this run's weights and vocabulary (fine-tuning); the model options are its.",
             metavar="RUN"),
    _session("init_checkpoint", "best", str, "Which snapshot of the --init-from run to start from.",
             choices=SNAPSHOT_CHOICES),
    _session("new_chars", "error", str,
             "--init-from: characters its vocabulary lacks are an error (listed), dropped from the text, "
             "or grown into the vocabulary (new rows initialised fresh, old rows kept).", choices=NEW_CHARS),
    _session("encoding", "utf-8", str, "Text encoding of the corpus files."),
    _session("encoding_errors", "strict", str,
             "What to do with bytes that do not decode: strict (stop), replace or ignore.", choices=ENCODING_ERRORS),
    _session("device", "auto", str, "Where to train (auto: a GPU when TensorFlow sees one).", choices=DEVICES),
    _session("devices", "1", str,
             "Train data-parallel on N devices of --device's kind (all: every one), sharing each batch's rows "
             "(on a CPU: N logical devices split from it). With TF_CONFIG, each worker uses its own.", metavar="N"),
    _session("xla", True, bool, "Compile the training step with XLA (faster steps, a few seconds more to start)."),
    _session("preview_length", 120, int,
             "Characters of sample shown at each evaluation, and logged for TensorBoard (0: none)."),
    _session("histograms", True, bool,
             "Log weight and gradient histograms for TensorBoard at each evaluation."),
    _session("quiet", False, bool, "No progress bar or previews; only the final summary.", negatable=False),
)
OPTIONS = {option.name: option for option in TRAINING_OPTIONS}
RESUMABLE = tuple(option.name for option in TRAINING_OPTIONS if option.kind == LIMIT)
STOP_LIMITS = ("steps", "epochs", "time_limit")  # training stops at whichever comes first


# What a run saved before an option existed had, where that differs (or may come to differ) from the option's default.
BEFORE_THE_OPTION_EXISTED = {"lr_schedule": "constant", "val_chars": 0, "activation": "tanh"}


def _field(name: str):
    """A TrainingConfig field whose default is the option's, so the two cannot drift apart."""
    return dataclasses.field(default=OPTIONS[name].default, metadata={"help": OPTIONS[name].help})


@dataclass(frozen=True)
class TrainingConfig:
    """Every setting of a run, saved with it in config.json so a run describes itself; checked by `validate`.

    The defaults and help texts are those of `TRAINING_OPTIONS`.
    """

    cell: str = _field("cell")  # a key of CELL_KINDS
    reset_after: bool = _field("reset_after")  # GRU's candidate form
    activation: str = _field("activation")  # one of ACTIVATIONS; not tanh for --cell rnn only
    num_layers: int = _field("num_layers")
    units: int = _field("units")  # hidden size per layer
    embedding_dim: int = _field("embedding_dim")
    seq_len: int = _field("seq_len")  # characters per training window: the BPTT horizon
    batch_size: int = _field("batch_size")  # windows per step
    mode: str = _field("mode")  # one of MODES
    stateful: bool = _field("stateful")
    precision: str = _field("precision")  # a key of PRECISIONS
    steps: int | None = _field("steps")  # None: no step limit
    epochs: float | None = _field("epochs")
    time_limit: float | None = _field("time_limit")  # seconds of this session
    learning_rate: float = _field("learning_rate")  # Adam's, at the start
    lr_schedule: str = _field("lr_schedule")  # one of LR_SCHEDULES
    clip_norm: float = _field("clip_norm")  # 0: no clipping
    dropout: float = _field("dropout")  # between layers, while training
    val_fraction: float = _field("val_fraction")
    eval_every: int = _field("eval_every")  # 0: only at the end
    val_chars: int = _field("val_chars")  # 0: evaluations during training score the whole validation text
    seed: int = _field("seed")

    def __post_init__(self):
        validate(self)

    @classmethod
    def from_saved(cls, saved: dict) -> TrainingConfig:
        """The config recorded in a run; a damaged record is the user's to fix.

        A run saved before an option existed gets the value that gives its behaviour then.
        """
        unknown = sorted(set(saved) - set(OPTIONS))
        if unknown:
            raise ChargenError(f"the run's config.json has a field training.{unknown[0]} that this chargen does not "
                               "know; it was written by another version of chargen, or the file is damaged")
        for name, value in saved.items():
            if not _has_type(value, OPTIONS[name]):
                raise ChargenError(f"the run's config.json has training.{name} = {value!r}, which is not "
                                   f"{_TYPE_NAMES[OPTIONS[name].type]}; the file is damaged: restore it or delete "
                                   "the run")
        try:
            return cls(**{**BEFORE_THE_OPTION_EXISTED, **saved})
        except ChargenError as error:
            raise ChargenError(f"the run's config.json breaks a rule: {error}; the file is damaged: restore it or "
                               "delete the run") from None

    def model_arguments(self) -> dict:
        """What `CharModel` is built from."""
        return {"cell": self.cell, "num_layers": self.num_layers, "units": self.units,
                "embedding_dim": self.embedding_dim, "dropout": self.dropout, "reset_after": self.reset_after,
                "activation": self.activation, "dtype": PRECISIONS[self.precision]}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_TYPE_NAMES = {int: "an integer", float: "a number", str: "text", bool: "true or false"}


def _has_type(value, option: OptionSpec) -> bool:
    """Whether a value read from JSON has the option's type (JSON's whole numbers count as floats too)."""
    if value is None:
        return option.default is None
    if option.type is bool or isinstance(value, bool):
        return option.type is bool and isinstance(value, bool)
    if option.type is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, option.type)


def validate(config: TrainingConfig) -> None:
    """All option checks in one place, each failing with the option, the rule and the value."""
    for name in ("num_layers", "units", "embedding_dim", "seq_len", "batch_size"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ChargenError(f"{name} must be a positive integer. Received: {name}={value!r}")
    checks = [
        (config.mode in MODES, f"mode must be one of {', '.join(MODES)}", "mode"),
        (config.cell in CELL_KINDS, f"cell must be one of {', '.join(CELL_KINDS)}", "cell"),
        (config.activation in ACTIVATIONS, f"activation must be one of {', '.join(ACTIVATIONS)}", "activation"),
        (config.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}", "lr_schedule"),
        (config.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}", "precision"),
        (0.0 <= config.dropout < 1.0, "dropout must be in [0, 1)", "dropout"),
        (config.learning_rate > 0 and math.isfinite(config.learning_rate), "learning_rate must be positive",
         "learning_rate"),
        (config.clip_norm >= 0, "clip_norm must be 0 (off) or positive", "clip_norm"),
        (config.steps is None or config.steps >= 1, "steps must be at least 1", "steps"),
        (config.epochs is None or config.epochs > 0, "epochs must be positive", "epochs"),
        (config.time_limit is None or config.time_limit > 0, "time_limit must be positive", "time_limit"),
        (0.0 <= config.val_fraction < 1.0, "val_fraction must be in [0, 1)", "val_fraction"),
        (config.eval_every >= 0, "eval_every must be 0 (only at the end) or positive", "eval_every"),
        (config.val_chars == 0 or config.val_chars >= 2, "val_chars must be 0 (all) or at least 2", "val_chars"),
        (SEED_RANGE[0] <= config.seed <= SEED_RANGE[1], f"seed must be from {SEED_RANGE[0]} to {SEED_RANGE[1]}",
         "seed"),
    ]
    for ok, rule, name in checks:
        if not ok:
            raise ChargenError(f"{rule}. Received: {name}={getattr(config, name)!r}")
    if config.stateful and config.mode != "bptt":
        raise ChargenError("stateful training carries the state between windows and applies to bptt only. "
                           "Received: mode='teacher-forcing', stateful=True")
    if config.reset_after and config.cell != "gru":
        raise ChargenError(f"reset_after is a form of the GRU's candidate and applies to --cell gru only. "
                           f"Received: cell={config.cell!r}, reset_after=True")
    if config.activation != "tanh" and config.cell != "rnn":
        raise ChargenError(f"activation is the SimpleRNN's and applies to --cell rnn only (the gated cells keep "
                           f"their sigmoid gates and tanh candidate). "
                           f"Received: cell={config.cell!r}, activation={config.activation!r}")


def option_table() -> str:
    """The README's table of `chargen train` options, made from `TRAINING_OPTIONS`."""
    kinds = {RUN: "run", LIMIT: "run; may change on --resume", SESSION: "this command"}
    rows = ["| option | default | meaning | belongs to |", "|---|---|---|---|"]
    for option in TRAINING_OPTIONS:
        flag = option.flags
        if option.choices:
            flag += " [" + "\\|".join(option.choices) + "]"
        if option.metavar:
            flag += " " + option.metavar
        rows.append(f"| `{flag}` | {_shown(option)} | {option.help} | {kinds[option.kind]} |")
    return "\n".join(rows)


def _shown(option: OptionSpec) -> str:
    if not option.shows_default:
        return ""
    if option.type is bool:
        return "on" if option.default else "off"
    return str(option.default)
