"""Where training runs: one device, several devices of this machine, or several machines.

All three are `tf.distribute` strategies, so the trainer has one step for all of them:
  - one device: `OneDeviceStrategy` (the CPU, or a GPU when TensorFlow sees one);
  - `--devices N|all`: `MirroredStrategy` over N devices of this machine, each replica taking its share of
    the rows of every batch (on a CPU, N logical devices split from it: the distributed path, not a speed-up);
  - a `TF_CONFIG` environment variable describing a cluster: `MultiWorkerMirroredStrategy`, one process per
    machine, each computing on its own devices. Only the chief (the "chief" task, or worker 0 when the
    cluster has none) writes the run folder.

A worker that dies shows up in the others as a collective operation that fails: `stop_on_peer_failure`
turns that into one line. TensorFlow is imported inside the functions, so this module loads instantly.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass

from chargen.errors import ChargenError

# How long a collective operation (the gradients' all-reduce) may wait for the other workers before it fails:
# longer than the slowest worker's first step (tracing and XLA compilation) and than an evaluation and save
# on the chief, which the others wait for at their next step.
COLLECTIVE_TIMEOUT_SECONDS = 300
# How often each worker checks that the others are alive (TensorFlow's own default is every 30 s).
PEER_CHECK_SECONDS = 5


@dataclass(frozen=True)
class Placement:
    """The strategy a training runs under, and this process's part in it."""

    strategy: object  # a tf.distribute.Strategy; build the model and optimizer inside its scope
    description: str  # for the start line: "device /cpu:0", "2 devices (...)", "worker 1 of 2 ..."
    chief: bool = True  # whether this process writes the run folder
    num_workers: int = 1


def parse_devices(devices: str) -> int | None:
    """`--devices` as a count; None for "all". A mistake is a ChargenError naming the value."""
    if devices == "all":
        return None
    try:
        count = int(devices)
    except ValueError:
        count = 0
    if count < 1:
        raise ChargenError(f"--devices takes a positive number of devices or `all`. Received: --devices {devices}")
    return count


@dataclass(frozen=True)
class ClusterTask:
    """This process's place in the cluster TF_CONFIG describes."""

    task_type: str  # "chief" or "worker"
    index: int
    num_workers: int  # every task that trains, the chief included

    @property
    def chief(self) -> bool:
        return self.task_type == "chief" or (self.task_type == "worker" and self.index == 0 and not self.has_chief)

    has_chief: bool = False

    @property
    def name(self) -> str:
        return f"{self.task_type} {self.index}"


def cluster_task(tf_config: str | None) -> ClusterTask | None:
    """The task TF_CONFIG gives this process, checked; None when TF_CONFIG is unset or names no cluster."""
    if not tf_config:
        return None
    hint = 'set TF_CONFIG to {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}'
    try:
        parsed = json.loads(tf_config)
    except ValueError as error:
        raise ChargenError(f"TF_CONFIG is not JSON ({error}); {hint}") from None
    cluster = parsed.get("cluster") if isinstance(parsed, dict) else None
    if not cluster:
        return None
    task = parsed.get("task") or {}
    task_type, index = task.get("type"), task.get("index")
    if not isinstance(cluster, dict):
        raise ChargenError(f"TF_CONFIG's cluster must be an object; {hint}. Received: cluster={cluster!r}")
    if task_type not in ("chief", "worker") or task_type not in cluster:
        raise ChargenError(f"TF_CONFIG's task must be a \"chief\" or \"worker\" of its cluster; {hint}. "
                           f"Received: task={task!r}, cluster jobs {sorted(cluster)}")
    unknown = set(cluster) - {"chief", "worker"}
    if unknown:
        raise ChargenError(f"TF_CONFIG's cluster may hold only \"chief\" and \"worker\" jobs (chargen trains on every "
                           f"task, with no parameter servers). Received: {sorted(unknown)}")
    if not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise ChargenError(f"TF_CONFIG's task index must name one of the {len(cluster[task_type])} "
                           f"{task_type} addresses. Received: index={index!r}")
    num_workers = sum(len(addresses) for addresses in cluster.values())
    return ClusterTask(task_type, index, num_workers, has_chief=bool(cluster.get("chief")))


def check_placement_options(devices: str) -> None:
    """Check --devices and TF_CONFIG without TensorFlow, so a mistake shows at once."""
    parse_devices(devices)
    if cluster_task(os.environ.get("TF_CONFIG")) is not None and devices != "1":
        raise ChargenError("--devices applies to one machine; with TF_CONFIG each worker trains on its own "
                           f"devices (every GPU it has, else its CPU). Received: --devices {devices}")


def choose_placement(device: str, devices: str) -> Placement:
    """The strategy for `--device` and `--devices`, or for the cluster in TF_CONFIG.

    Call before TensorFlow has used any device: splitting the CPU into logical devices must come first.
    """
    import tensorflow as tf

    check_placement_options(devices)
    count = parse_devices(devices)
    task = cluster_task(os.environ.get("TF_CONFIG"))
    if task is not None:
        return _cluster_placement(tf, task, device)
    kind = _device_kind(tf, device)
    if kind == "CPU" and count is not None and count > 1:
        _split_cpu(tf, count)
    names = [d.name for d in tf.config.list_logical_devices(kind)]
    if count is not None and count > len(names):
        raise ChargenError(f"--devices {count} asks for more {kind} devices than TensorFlow sees here ({len(names)}); "
                           "give a smaller number or `all`")
    names = names[:count] if count is not None else names
    if len(names) == 1:
        return Placement(tf.distribute.OneDeviceStrategy(names[0]), f"device {names[0]}")
    strategy = tf.distribute.MirroredStrategy(names, cross_device_ops=_cross_device_ops(tf, kind))
    return Placement(strategy, f"{len(names)} devices ({', '.join(names)})")


def _device_kind(tf, device: str) -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise ChargenError("--device gpu was given but TensorFlow sees no GPU here; use --device cpu or auto")
    return "GPU" if gpus and device in ("auto", "gpu") else "CPU"


def _split_cpu(tf, count: int) -> None:
    """Make `count` logical CPU devices out of the one physical CPU (they share its cores)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as error:  # devices already in use: only a second training in the same process
        raise ChargenError(f"cannot split the CPU into {count} devices once TensorFlow has started ({error}); "
                           "run the training in a new process") from None


def _cross_device_ops(tf, kind: str):
    # NCCL exists for GPUs only; on CPU devices the all-reduce is done by copying to one device and adding.
    return None if kind == "GPU" else tf.distribute.ReductionToOneDevice()


def _cluster_placement(tf, task: ClusterTask, device: str) -> Placement:
    _device_kind(tf, device)  # --device gpu without a GPU is still a mistake
    from tensorflow.python.distribute import collective_all_reduce_strategy

    # A dead peer is noticed by this check or by a collective's timeout, whichever comes first; the check's
    # period is a class setting of TensorFlow's (no public option), read when the strategy starts.
    collective_all_reduce_strategy.CollectiveAllReduceExtended._check_health_interval = PEER_CHECK_SECONDS
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=COLLECTIVE_TIMEOUT_SECONDS)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    role = " (chief: writes the run)" if task.chief else ""
    return Placement(strategy, f"{task.name} of {task.num_workers} workers{role}, "
                               f"{strategy.num_replicas_in_sync} replicas in all", task.chief, task.num_workers)


@contextlib.contextmanager
def stop_on_peer_failure(step_of):
    """Turn a collective operation that failed because another worker died or hung into one ChargenError.

    `step_of()` says which step training had reached, for the message.
    """
    import tensorflow as tf

    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
            tf.errors.AbortedError) as error:
        raise ChargenError(
            f"training stopped at step {step_of()}: another worker of the cluster stopped answering "
            f"({_telling_line(error.message or '') or type(error).__name__}); "
            "the run keeps its last snapshot: start every worker again with --resume"
        ) from None


def _telling_line(message: str) -> str:
    """The line of a TensorFlow error that says what happened to the peer ("... is down", "... timed out"),
    rather than its first ("Graph execution error:")."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    clues = ("is down", "abort", "timed out", "deadline", "unavailable", "connect", "socket")
    telling = [line for line in lines if any(clue in line.lower() for clue in clues)] or lines[-1:] or [""]
    return telling[0][:200]


def this_process_writes() -> bool:
    """Whether this process writes run folders: yes, unless TF_CONFIG makes it a worker other than the chief."""
    task = cluster_task(os.environ.get("TF_CONFIG"))
    return task is None or task.chief
