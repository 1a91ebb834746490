"""Checkpoints and the output folder, the same for every recipe.

- The output folder is locked by process 0 for the whole run (`lock_output_dir`: a second run into it is
  refused, a lock left by a killed run is taken over), then checked (a folder, writable, not another run's
  unless --resume / --overwrite) before anything is loaded, and an old run's checkpoints are removed
  (--overwrite) only once the arguments, the data and the model have been validated (`check_output_dir`,
  then `claim_output_dir`).
- Checkpoints are written to a temporary name and renamed (`save_atomic`); a failed write removes its
  partial file and raises `OutputWriteError`, leaving the earlier checkpoints as they were.
- They hold tensors and plain Python values only, and are read with ``weights_only=True``: a checkpoint
  file cannot run code. Each carries the run's settings (`run`), compared on resume with the new ones
  (`check_run_config`).
- `restore` loads the newest checkpoint that reads; one that does not (truncated, corrupt, or holding
  objects other than tensors and plain values) is renamed to ``*.invalid`` with a warning naming it, and
  the one before it is used.
"""

from __future__ import annotations

import atexit
import glob
import json
import logging
import os
import random
import re
import shutil
import socket
import tempfile
import time

import numpy as np
import torch

from .errors import (
    ConfigChangedError,
    OutputDirError,
    OutputDirInUseError,
    OutputDirLockedError,
    OutputWriteError,
    ResumeError,
)

logger = logging.getLogger(__name__)

PATTERN = re.compile(r"step-(\d+)\.ckpt$")
TEMP_PREFIX = ".tmp-"


# --------------------------------------------------------------------------------------------------
# RNG state as plain values (weights_only-loadable)
# --------------------------------------------------------------------------------------------------


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) generator states as tensors, tuples and numbers."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(tuple(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------------
# Finding, writing and cleaning up checkpoints
# --------------------------------------------------------------------------------------------------


def checkpoint_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"step-{step:08d}.ckpt")


def checkpoints_newest_first(directory: str) -> list[str]:
    """The checkpoints in `directory`, highest step first (temporary and *.invalid files are not checkpoints)."""
    found = [(int(m.group(1)), p) for p in glob.glob(os.path.join(directory, "step-*.ckpt")) if (m := PATTERN.search(p))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_checkpoint(directory: str) -> str | None:
    """The checkpoint with the highest step in `directory` (temp files of interrupted writes ignored)."""
    found = checkpoints_newest_first(directory)
    return found[0] if found else None


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def remove_temp_files(directory: str) -> list[str]:
    """Delete what interrupted writes left in `directory` (`.tmp-*`); returns their paths."""
    stale = sorted(glob.glob(os.path.join(glob.escape(directory), TEMP_PREFIX + "*")))
    for path in stale:
        _remove(path)
        logger.info("removed %s, left by an interrupted write", path)
    return stale


def any_process(fabric, flag: bool) -> bool:
    """True on every process if `flag` is True on any (so that all of them take the same branch)."""
    if fabric.world_size == 1:
        return flag
    value = torch.tensor(float(flag), device=fabric.device)
    return bool(fabric.all_reduce(value, reduce_op="max").item())


def gather_objects(fabric, obj) -> list:
    """`obj` of every process, in rank order, on every process (a collective: every process calls)."""
    if fabric.world_size == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * fabric.world_size
    dist.all_gather_object(out, obj)
    return out


def _disk_message(error: Exception) -> str:
    if not isinstance(error, OSError):  # safetensors' own error type carries the OS message in its text
        return " ".join(str(error).split())
    return f"{error.strerror or type(error).__name__}" + (f": {error.filename}" if error.filename else "")


def _write_errors() -> tuple[type[Exception], ...]:
    """What a failed file write raises: OSError, and safetensors' SafetensorError (a full disk while
    save_pretrained writes model.safetensors)."""
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover
        return (OSError,)
    return (OSError, SafetensorError)


def save_atomic(fabric, path: str, state: dict, keep: int = 2) -> None:
    """fabric.save to a temporary name, then rename: a reader (or a resume after a crash) never sees a
    half-written checkpoint. Older checkpoints beyond the newest `keep` are removed (rank 0).

    A failed write (a full disk, say) removes the partial file and raises OutputWriteError on every
    process; the checkpoints written before stay as they were."""
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, TEMP_PREFIX + os.path.basename(path))
    if fabric.is_global_zero:
        os.makedirs(directory, exist_ok=True)
    fabric.barrier()
    error = None
    try:
        fabric.save(tmp, state)
    except OSError as caught:
        error = caught
    if any_process(fabric, error is not None):
        if fabric.is_global_zero:
            _remove(tmp)
        previous = latest_checkpoint(directory)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint was affected"
        reason = _disk_message(error) if error is not None else "failed on another process"
        raise OutputWriteError(
            f"could not write checkpoint {path} ({reason}); the partial file was removed and {kept}. Free space "
            "(or fix the folder) and run again with --resume."
        ) from error
    fabric.barrier()
    if fabric.is_global_zero:
        os.replace(tmp, path)
        if keep > 0:
            for old in checkpoints_newest_first(directory)[keep:]:
                _remove(old)
        logger.info("checkpoint written: %s", path)
    fabric.barrier()


def give_default_mode(path: str) -> None:
    """Give `path` the mode open() gives a new file under the process umask (safetensors writes its files
    0600, unlike the other files of an output folder)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def write_folder_atomically(directory: str, write, name: str = "model") -> None:
    """`write(tmp)` fills a temporary folder inside `directory`; its files then replace those of the same
    name in `directory`. A failure (a full disk) removes the temporary folder, leaving `directory`'s
    files as they were, and raises OutputWriteError."""
    try:
        os.makedirs(directory, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{name.replace(' ', '-')}-", dir=directory)
    except OSError as error:
        raise OutputWriteError(f"could not write the {name} to {directory} ({_disk_message(error)}).") from error
    try:
        write(tmp)
        for entry in os.listdir(tmp):
            if entry.endswith(".safetensors"):
                give_default_mode(os.path.join(tmp, entry))
            os.replace(os.path.join(tmp, entry), os.path.join(directory, entry))
    except _write_errors() as error:
        raise OutputWriteError(
            f"could not write the {name} to {directory} ({_disk_message(error)}); what was there before is intact. "
            "Free space (or fix the folder) and run again (--resume continues from the last checkpoint)."
        ) from error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Run settings: saved in every checkpoint, compared on resume
# --------------------------------------------------------------------------------------------------


def _plain(value):
    """JSON-comparable form (tuples become lists)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


# settings a run records that are not options: what the data and the launch came to
DERIVED_SETTINGS = ("class_names", "id2label", "train_examples", "validation_examples", "world_size")


def flag_name(key: str) -> str:
    """The command-line spelling of a setting: "augment.mixup" -> "--mixup" ("train_examples", derived
    from the data, stays as it is)."""
    return key if key in DERIVED_SETTINGS else "--" + key.split(".")[-1].replace("_", "-")


def parse_allowed(text: str | list | tuple | None) -> frozenset[str]:
    """--allow-changed-config "lr,batch-size" -> {"lr", "batch_size"}; "all" allows every setting that can change."""
    if not text:
        return frozenset()
    items = text.split(",") if isinstance(text, str) else list(text)
    return frozenset(i.strip().lstrip("-").replace("-", "_") for i in items if i.strip())


def check_run_config(
    saved: dict, current: dict, allowed: frozenset[str], fixed: tuple[str, ...], free: tuple[str, ...], path: str
) -> list[tuple[str, object, object]]:
    """Compare the settings a checkpoint was written with to the new ones. Settings in `free` may change
    (they do not alter the result: logging, workers, the output folder...); those in `fixed` never may (the
    checkpoint's weights are for the old architecture or classes); the others only if named in `allowed`
    (or "all"). Returns the allowed changes; raises ConfigChangedError otherwise."""
    changes = []
    for key in sorted(set(saved) | set(current)):
        if key in free:
            continue
        old, new = _plain(saved.get(key)), _plain(current.get(key))
        if old != new:
            changes.append((key, old, new))
    where = f"the checkpoint {path} was written"

    def describe(items):
        return "; ".join(f"{flag_name(k)} was {old!r}, now {new!r}" for k, old, new in items)

    fixed_changes = [c for c in changes if c[0] in fixed]
    if fixed_changes:
        raise ConfigChangedError(
            f"--resume: {where} for another model ({describe(fixed_changes)}), and a run cannot change its "
            "model. Resume with the old value, or start a new run (another --output-dir, or --overwrite)."
        )
    refused = [c for c in changes if "all" not in allowed and c[0] not in allowed and c[0].split(".")[-1] not in allowed]
    if refused:
        names = ",".join(flag_name(k).lstrip("-").replace("_", "-") for k, _, _ in refused)
        raise ConfigChangedError(
            f"--resume: {where} with other settings ({describe(refused)}). Resume with the same settings, or pass "
            f"--allow-changed-config {names} to continue the run with the new values."
        )
    return changes


def read_run_info(path: str) -> dict | None:
    """The `run` entry of a checkpoint file without reading its tensors (weights_only, memory-mapped);
    None for a sharded checkpoint (a folder). Raises what torch.load raises for an unreadable file."""
    if os.path.isdir(path):
        return None
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(checkpoint, dict) or "run" not in checkpoint:
        raise ValueError("it holds no run settings (not written by this recipe)")
    return checkpoint["run"]


def precheck_resume(directory: str, settings: dict, allowed, fixed, free) -> None:
    """Before anything is loaded: compare `settings` with those of the newest checkpoint that reads (only
    the settings both know; `restore` compares the rest). Raises ConfigChangedError; unreadable files are
    left for `restore` to report."""
    for path in checkpoints_newest_first(directory):
        try:
            saved = read_run_info(path)
        except Exception:  # noqa: BLE001
            continue
        if saved is not None:
            old = {k: v for k, v in saved.get("config", {}).items() if k in settings}
            check_run_config(old, {k: v for k, v in settings.items() if k in old}, allowed, fixed, free, path)
        return


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    if "weights_only" in str(error) or "Unsupported global" in str(error):
        first = "it holds Python objects other than tensors and plain values, which are never unpickled"
    return f"{type(error).__name__}: {first[:200]}"


def _is_mismatch(error: BaseException) -> bool:
    """True for a checkpoint that reads but does not fit the objects it is loaded into."""
    text = str(error)
    return any(
        s in text
        for s in ("size mismatch", "Missing key", "Unexpected key", "does not exist in the loaded checkpoint", "loaded state dict",
                  "must match the size of tensor")
    )


def _set_aside(fabric, path: str, error: BaseException) -> str:
    fabric.barrier()
    if fabric.is_global_zero:
        logger.warning(
            "--resume: cannot read checkpoint %s (%s); it is renamed to %s.invalid and the previous one is used.",
            path, _reason(error), os.path.basename(path),
        )
        os.replace(path, path + ".invalid")
    fabric.barrier()
    return f"{os.path.basename(path)} ({_reason(error)})"


def restore(
    fabric, directory: str, state: dict, run_info: dict, allowed=frozenset(), fixed=(), free=(), optional=()
) -> tuple[str | None, list[str], list[tuple[str, object, object]]]:
    """Load the newest readable checkpoint of `directory` into `state` (fabric.load, weights_only) after
    checking that it was written by a run with the same settings (`check_run_config`). Unreadable ones are
    renamed to *.invalid with a warning and the previous one is tried. Entries of `state` named in
    `optional` (an EMA switched on since) may be absent from the checkpoint.

    Returns (the path loaded or None when the folder has no checkpoint, the optional entries it lacked, the
    allowed setting changes as (name, old, new)); raises ResumeError when none of them reads,
    ConfigChangedError for changed settings that are not allowed."""
    candidates = checkpoints_newest_first(directory)
    problems = []
    for path in candidates:
        try:
            saved = read_run_info(path)
        except Exception as error:  # noqa: BLE001 - any unreadable file: fall back to the previous one
            problems.append(_set_aside(fabric, path, error))
            continue
        changes = []
        if saved is not None:
            changes = check_run_config(saved.get("config", {}), run_info["config"], allowed, fixed, free, path)
        stored = set(saved.get("entries", state)) if saved is not None else set(state)
        missing = [k for k in optional if k in state and k not in stored]
        loading = {**{k: v for k, v in state.items() if k not in missing}, "run": None}
        try:
            fabric.load(path, loading, weights_only=True)
        except Exception as error:
            if _is_mismatch(error):
                raise ResumeError(
                    f"--resume: the checkpoint {path} does not fit the model built from these arguments "
                    f"({_reason(error)}). Resume with the run's original settings, or start a new run."
                ) from error
            problems.append(_set_aside(fabric, path, error))
            continue
        if saved is None:  # sharded: the settings came with the state
            saved = loading.get("run") or {}
            changes = check_run_config(saved.get("config", {}), run_info["config"], allowed, fixed, free, path)
        for key in loading:
            if key in state:
                state[key] = loading[key]
        return path, missing, changes
    if problems:
        raise ResumeError(
            f"--resume: none of the {len(candidates)} checkpoint(s) in {directory} can be read: {'; '.join(problems)}. "
            "They were renamed to *.invalid; run without --resume (with --overwrite) to start over."
        )
    return None, [], []


# --------------------------------------------------------------------------------------------------
# The output folder
# --------------------------------------------------------------------------------------------------


LOCK_FILE = ".swin_hf.lock"  # locked (filelock: an OS lock, released when its process ends) for a whole run
OWNER_FILE = ".swin_hf.lock.owner"  # {pid, host, started} of the run holding the lock; removed when it ends
_held_locks: dict = {}  # real path of an output folder -> the FileLock this process holds on it


def _lock_owner(out: str) -> dict:
    try:
        with open(os.path.join(out, OWNER_FILE)) as f:
            owner = json.load(f)
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


def lock_output_dir(out: str) -> None:
    """Take the lock of the output folder `out` (created if missing) for this process until it ends or
    `release_output_dirs` runs; raises OutputDirLockedError naming the process that holds it. A lock whose
    run was killed is free again (the OS drops it with the process): it is taken over with a log line
    naming that run. Taking a lock this process already holds does nothing."""
    from filelock import FileLock, Timeout

    key = os.path.realpath(out)
    if key in _held_locks:
        return
    os.makedirs(out, exist_ok=True)
    lock = FileLock(os.path.join(out, LOCK_FILE), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        owner = _lock_owner(out)
        who = f"process {owner.get('pid', '?')} on {owner.get('host', '?')}, started {owner.get('started', '?')}"
        raise OutputDirLockedError(
            f"--output-dir {out!r} is in use by another run ({who}); wait for it to end, or choose another --output-dir."
        ) from None
    previous = _lock_owner(out)
    if previous:
        logger.warning("--output-dir %r: taking over the lock of process %s on %s (started %s), which ended without "
                       "releasing it.", out, previous.get("pid", "?"), previous.get("host", "?"), previous.get("started", "?"))
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    with open(os.path.join(out, OWNER_FILE), "w") as f:
        json.dump(owner, f)
    if not _held_locks:
        atexit.register(release_output_dirs)
    _held_locks[key] = (out, lock)


def release_output_dirs() -> None:
    """Release every output folder lock this process holds (every recipe's end; also at exit)."""
    while _held_locks:
        _, (out, lock) = _held_locks.popitem()
        try:
            os.remove(os.path.join(out, OWNER_FILE))
        except OSError:
            pass
        lock.release()


def _run_files(out: str) -> list[str]:
    """The entries of `out` other than its lock files."""
    return [name for name in os.listdir(out) if name not in (LOCK_FILE, OWNER_FILE)]


def _output_dir_problem(out: str, overwrite: bool, resume: bool) -> tuple[type, str] | None:
    """(error class, message) if `out` cannot take this run; creates the folder if it is missing and takes
    its lock (`lock_output_dir`) before anything else is written."""
    if os.path.exists(out) and not os.path.isdir(out):
        return OutputDirError, f"--output-dir {out!r} is a file, not a folder; choose a folder path."
    try:
        lock_output_dir(out)
        fd, probe = tempfile.mkstemp(prefix=TEMP_PREFIX + "write-test-", dir=out)
        os.close(fd)
        os.remove(probe)
    except OutputDirLockedError as error:
        return OutputDirLockedError, str(error)
    except OSError as error:
        return OutputDirError, (
            f"--output-dir {out!r} cannot be written to ({_disk_message(error)}); choose a folder you can write to."
        )
    if _run_files(out) and not (resume or overwrite):
        hint = " Pass --resume to continue it," if latest_checkpoint(os.path.join(out, "checkpoints")) else ""
        return OutputDirInUseError, (
            f"--output-dir {out!r} is not empty.{hint} pass --overwrite to train into it anyway, or choose another directory."
        )
    return None


def check_output_dir(fabric, out: str, overwrite: bool, resume: bool) -> None:
    """Every recipe's first check of its --output-dir, before anything is loaded or deleted: rank 0 takes the
    folder's lock (held until the run ends) and looks, every process raises the same error (OutputDirError,
    OutputDirInUseError, OutputDirLockedError) if the folder cannot be used."""
    problem = _output_dir_problem(out, overwrite, resume) if fabric.is_global_zero else None
    if getattr(fabric, "world_size", 1) > 1:
        problem = fabric.broadcast(problem, src=0)
    if problem is not None:
        kind, message = problem
        raise kind(message)


def claim_output_dir(fabric, out: str, overwrite: bool, resume: bool) -> None:
    """After the arguments, data and model were validated: with --overwrite (and no --resume) the old run's
    checkpoints are removed, so that a later --resume cannot pick up a stale one; temporary files of
    interrupted writes are removed in any case."""
    if fabric.is_global_zero:
        checkpoints = os.path.join(out, "checkpoints")
        if overwrite and not resume:
            shutil.rmtree(checkpoints, ignore_errors=True)
        if os.path.isdir(checkpoints):
            remove_temp_files(checkpoints)
        remove_temp_files(out)
    fabric.barrier()


def prepare_output_dir(fabric, out: str, overwrite: bool, resume: bool) -> None:
    """`check_output_dir` then `claim_output_dir`, for a caller with nothing to validate in between.

    A non-empty folder needs --resume (continue its latest checkpoint) or --overwrite (train into it;
    its old checkpoints are removed, so a later --resume cannot pick up a stale one).
    """
    check_output_dir(fabric, out, overwrite, resume)
    claim_output_dir(fabric, out, overwrite, resume)


__all__ = [
    "any_process",
    "check_output_dir",
    "check_run_config",
    "checkpoint_path",
    "checkpoints_newest_first",
    "claim_output_dir",
    "flag_name",
    "gather_objects",
    "give_default_mode",
    "latest_checkpoint",
    "lock_output_dir",
    "parse_allowed",
    "precheck_resume",
    "prepare_output_dir",
    "read_run_info",
    "release_output_dirs",
    "remove_temp_files",
    "restore",
    "rng_state",
    "save_atomic",
    "set_rng_state",
    "write_folder_atomically",
]
