"""The compiled-step cache: a second `chargen train` of the same model and shapes loads the training step
that XLA compiled for the first, instead of compiling it again (most of the wait before the first step).

This is TensorFlow's own persistent XLA cache (the `--tf_xla_persistent_cache_directory` flag of
TF_XLA_FLAGS), pointed at a folder inside chargen's cache folder. TensorFlow keys each entry by the
traced function's signature and a fingerprint of its XLA program, checks the whole program before it
uses an entry, and writes an entry to a temporary file that it renames into place, so concurrent runs
can share the folder. What the key leaves out decides the folder's name: the TensorFlow version (which
built the machine code), this machine's CPU (the code uses its instruction set) and XLA_FLAGS (which
change how the code is generated).

TensorFlow fails the step, rather than compiling again, on an entry it cannot read (a file cut short by
a crash or a full disk) and on a folder it cannot write to. So `enable` checks the folder and removes
damaged entries before TensorFlow sees them, and leaves the cache off when the folder is unusable.
Only CPU compilations are cached: executables for a GPU also depend on its model, which is not checked.

TensorFlow reads its XLA flags once, the first time it needs them: `enable` must run before that, in
practice before TensorFlow is imported (the CLI calls it then).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

from chargen import cpuinfo, encoded

SUBFOLDER = "compiled"  # inside the cache folder, `encoded.cache_folder()`
FLAGS_VARIABLE = "TF_XLA_FLAGS"
DIRECTORY_FLAG = "--tf_xla_persistent_cache_directory"
ENTRY_PREFIX = "xla_compile_cache"  # TensorFlow's default `--tf_xla_persistent_cache_prefix`
MINIMUM_FREE_BYTES = 256 << 20  # an entry of the default model takes about 1 MB


def machine_description() -> str:
    """This machine's architecture and CPU model and features, as far as the system tells them."""
    fields = cpuinfo.first_cpu_fields()
    cpu = " ".join(fields.get(name, "") for name in ("model name", "flags", "Features")) if fields \
        else platform.processor()  # not Linux: the processor's name is all there is
    return f"{platform.machine()} {cpu}"


def step_folder() -> Path:
    """Where this TensorFlow, on this machine with these XLA_FLAGS, keeps its compiled steps."""
    version = metadata.version("tensorflow")
    variant = json.dumps([version, machine_description(), os.environ.get("XLA_FLAGS", "")])
    digest = hashlib.sha256(variant.encode("utf-8")).hexdigest()[:16]
    return encoded.cache_folder() / SUBFOLDER / f"tensorflow-{version}-{digest}"


def enable(environ=os.environ) -> Path | None:
    """Point TensorFlow's persistent XLA cache at `step_folder()` through `environ`'s TF_XLA_FLAGS.

    Returns the folder, or None when the cache stays off: TF_XLA_FLAGS names a cache folder of its own (or is
    a file of flags), or the folder cannot be made, written or given room. Damaged entries are removed first.
    """
    flags = environ.get(FLAGS_VARIABLE, "").strip()
    if DIRECTORY_FLAG in flags or (flags and not flags.startswith("--")):
        return None
    folder = step_folder()
    if '"' in str(folder) or not _usable(folder):  # a double quote would end the flag's quoted value
        return None
    remove_damaged_entries(folder)
    ours = f'{DIRECTORY_FLAG}="{folder}" --tf_xla_persistent_cache_device_types=CPU'
    environ[FLAGS_VARIABLE] = f"{flags} {ours}".strip()
    return folder


def _usable(folder: Path) -> bool:
    """Whether `folder` exists or can be made, takes a new file, and has room for entries."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        return shutil.disk_usage(folder).free >= MINIMUM_FREE_BYTES
    except OSError:
        return False


def remove_damaged_entries(folder: Path) -> list[Path]:
    """Remove the entries of `folder` that TensorFlow would fail on; returns those removed."""
    removed = []
    for path in sorted(folder.glob(f"{ENTRY_PREFIX}__*.pb")):
        try:
            if not entry_is_whole(path):
                path.unlink()
                removed.append(path)
        except OSError:  # gone meanwhile (another run removed it), or unreadable: TensorFlow will say
            continue
    return removed


def entry_is_whole(path: Path) -> bool:
    """Whether the entry at `path` parses, carries the key its name gives, and holds an executable: the
    checks TensorFlow makes before it trusts an entry, short of comparing the program with the one traced."""
    from google.protobuf.message import DecodeError

    parts = path.name.removesuffix(".pb").split("__")
    entry = _entry_message_type()()
    try:
        entry.ParseFromString(path.read_bytes())
    except DecodeError:
        return False
    key = entry.key
    return len(parts) == 4 and parts == [key.prefix, str(key.signature_fingerprint), str(key.cluster_fingerprint),
                                         key.device_type] and len(entry.executable) > 0


@functools.cache
def _entry_message_type():
    """The message class of an entry's file, `tensorflow.XlaSerializedCacheEntry` (whose definition TensorFlow's
    wheel does not ship for Python), declared here with the program as plain bytes: the same bytes on disk."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    schema = descriptor_pb2.FileDescriptorProto(name="chargen_compiled_step.proto", package="chargen_compiled_step",
                                                syntax="proto3")
    key = schema.message_type.add(name="Key")
    key_fields = (("signature_fingerprint", field.TYPE_UINT64), ("cluster_fingerprint", field.TYPE_UINT64),
                  ("device_type", field.TYPE_STRING), ("prefix", field.TYPE_STRING),
                  ("compiled_using_pjrt", field.TYPE_BOOL))
    for number, (name, kind) in enumerate(key_fields, 1):
        key.field.add(name=name, number=number, type=kind, label=field.LABEL_OPTIONAL)
    entry = schema.message_type.add(name="Entry")
    entry.field.add(name="key", number=1, type=field.TYPE_MESSAGE, type_name=".chargen_compiled_step.Key",
                    label=field.LABEL_OPTIONAL)
    entry.field.add(name="hlo_module", number=2, type=field.TYPE_BYTES, label=field.LABEL_OPTIONAL)
    entry.field.add(name="executable", number=3, type=field.TYPE_BYTES, label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(schema)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("chargen_compiled_step.Entry"))
