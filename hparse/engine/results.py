"""Results with provenance: every number the book or README shows is read from a file written here.

A result file is ``results/<profile>/<name>.json`` holding the metrics and, beside them, what produced them: the
config, the profile, the git commit (and whether the tree had uncommitted changes), the device, the torch version,
the wall time and the date. Nothing in ``results/`` is typed by hand.

Who may write what (DESIGN.md, "Results and provenance"):

- A run's own record is ``<run folder>/result.json`` (:func:`write_run_record`), in the same format. It belongs to
  that folder's run and is rewritten by it.
- A file under ``results/`` is the number the book shows, so it is written only when asked for by name (``--record
  NAME``, or an experiment command that owns the name), and :func:`write_result` refuses to replace it with a
  different run (another config) or a shorter one (fewer iterations) unless ``force=True`` (``--force``): a one-step
  smoke run must never silently overwrite a 500-step record. :func:`check_replace` applies the same rule before a
  run starts, so a long run is not trained only to be refused at the end.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["results_dir", "provenance", "write_result", "load_result", "find_results", "atomic_write_text",
           "result_path", "write_run_record", "check_replace", "config_differences", "ResultConflictError",
           "RUN_RECORD_NAME"]

#: a run's own record inside its run folder
RUN_RECORD_NAME = "result.json"

#: config keys that say how a run was executed, not what it computed: a rerun may change them freely
ENVIRONMENT_KEYS = frozenset({"num_workers", "progress", "device", "amp", "channels_last", "eval_every",
                              "eval_batch_size", "checkpoint_every"})

#: config keys compared as "longer or shorter" rather than "same or different": a longer run of the same recipe may
#: replace a record (the CLI derives the warm-up from the iterations, so it changes with them)
_LENGTH_KEYS = frozenset({"iterations", "warmup"})


class ResultConflictError(ValueError):
    """A results file would be replaced by a different or shorter run; the message names the file, what differs
    and the flag that allows it."""

_REPO_ROOT = Path(__file__).resolve().parents[2]


def results_dir() -> Path:
    """``$HPARSE_RESULTS`` if set, else the repository's ``results/`` folder."""
    return Path(os.environ.get("HPARSE_RESULTS", _REPO_ROOT / "results"))


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=_REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device | str | None = None) -> str:
    device = torch.device(device) if device is not None else None
    if (device is None or device.type == "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(device if device is not None else 0)
    cpu = platform.processor() or platform.machine()
    return f"cpu ({cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def provenance(device: torch.device | str | None = None) -> dict[str, Any]:
    """Where a number comes from: commit, dirty flag, device, library versions, host, date (UTC).

    ``git_dirty`` says whether tracked files *other than* ``results/`` differ from the commit: a run that rewrites a
    committed results file (the second variant of an ablation, a rerun) is still a run of the committed code.
    """
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "device": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _jsonable(value.item())
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Path):
        return str(value)
    return value


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def result_path(name: str, profile: str, root: Path | None = None) -> Path:
    """``results/<profile>/<name>.json``; ``name`` (which may contain ``/``) must stay inside ``results/``."""
    if not name or name.startswith("/") or ".." in Path(name).parts:
        raise ValueError(f"result name {name!r} must be a relative path without '..'")
    return (root or results_dir()) / profile / f"{name}.json"


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}`` (lists stay values)."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def config_differences(saved: dict[str, Any], requested: dict[str, Any],
                       ignore: frozenset[str] | set[str] = ENVIRONMENT_KEYS) -> list[str]:
    """``"key: saved -> requested"`` for every (dotted) key whose value differs, ``ignore``'d leaf names left out.

    Values are compared in their JSON form (a tuple equals a list, a path its string); a key absent on one side
    equals ``None`` on the other, so a field added to the config later does not by itself make runs differ.
    """
    old, new = _flatten(_jsonable(saved or {})), _flatten(_jsonable(requested or {}))
    lines = []
    for key in sorted(set(old) | set(new), key=lambda k: (k.count("."), k)):
        if key.rsplit(".", 1)[-1] in ignore:
            continue
        if old.get(key) != new.get(key):
            lines.append(f"{key}: {_show(old, key)} -> {_show(new, key)}")
    return lines


def _show(flat: dict[str, Any], key: str) -> str:
    return repr(flat[key]) if key in flat else "(absent)"


def record_iterations(record: dict[str, Any]) -> int | None:
    """How long the run of a record trained: ``metrics.iterations``, else ``config.train.iterations``, else the
    checkpoint ``config.step`` of an evaluation record; ``None`` for records of no training run."""
    metrics, config = record.get("metrics") or {}, record.get("config") or {}
    for value in (metrics.get("iterations"), (config.get("train") or {}).get("iterations")
                  if isinstance(config.get("train"), dict) else None, config.get("step")):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value)
    return None


def check_replace(path: Path, config: dict[str, Any] | None, iterations: int | None, force: bool = False) -> None:
    """Refuse to replace the record at ``path`` with a run of another config or fewer iterations (unless ``force``).

    Raises:
        ResultConflictError: naming the file, each difference, and ``--force``.
    """
    path = Path(path)
    if force or not path.exists():
        return
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ResultConflictError(f"results file {path} exists but cannot be read ({err}); pass --force (force=True) "
                                  "to replace it") from None
    differ = config_differences(record.get("config") or {}, config or {}, ENVIRONMENT_KEYS | _LENGTH_KEYS)
    old_iterations = record_iterations(record)
    if iterations is not None and old_iterations is not None and iterations < old_iterations:
        differ.insert(0, f"iterations: {old_iterations} -> {iterations} (a shorter run)")
    if differ:
        listed = "\n  ".join(differ)
        raise ResultConflictError(
            f"results file {path} holds another run, which this one would replace:\n  {listed}\n"
            f"Pass --force (force=True) to replace it, record this run under another name (--record), or leave "
            f"--record out (the run's own record is written to its run folder).")


def _record(name: str | None, metrics: dict[str, Any], profile: str, config: dict[str, Any] | None,
            wall_time_s: float | None, device, notes: str | None) -> dict[str, Any]:
    return {
        "name": name,
        "profile": profile,
        "metrics": _jsonable(metrics),
        "config": _jsonable(config or {}),
        "wall_time_s": wall_time_s,
        "notes": notes,
        "provenance": provenance(device),
    }


_REPLACING: contextvars.ContextVar[bool] = contextvars.ContextVar("hparse_replacing_results", default=False)


@contextlib.contextmanager
def replacing(allowed: bool = True):
    """Within the block, :func:`write_result` replaces records as with ``force=True`` (``hparse bench --force``:
    a benchmark writes its record itself, deep inside the measurement)."""
    token = _REPLACING.set(bool(allowed))
    try:
        yield
    finally:
        _REPLACING.reset(token)


def write_result(
    name: str,
    metrics: dict[str, Any],
    *,
    profile: str,
    config: dict[str, Any] | None = None,
    wall_time_s: float | None = None,
    device: torch.device | str | None = None,
    notes: str | None = None,
    root: Path | None = None,
    force: bool = False,
) -> Path:
    """Write ``results/<profile>/<name>.json`` (``name`` may contain ``/``) and return its path.

    An existing file is replaced only by a run of the same config with at least as many iterations, or with
    ``force=True`` or inside :func:`replacing` (:func:`check_replace`; raises :class:`ResultConflictError`
    otherwise).
    """
    path = result_path(name, profile, root)
    record = _record(name, metrics, profile, config, wall_time_s, device, notes)
    check_replace(path, record["config"], record_iterations(record), force or _REPLACING.get())
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=False) + "\n")
    return path


def write_run_record(
    out_dir: str | os.PathLike,
    metrics: dict[str, Any],
    *,
    profile: str,
    name: str | None = None,
    config: dict[str, Any] | None = None,
    wall_time_s: float | None = None,
    device: torch.device | str | None = None,
    notes: str | None = None,
) -> Path:
    """Write a run's own record, ``<out_dir>/result.json``, in :func:`write_result`'s format (always replaced: the
    folder belongs to the run)."""
    path = Path(out_dir) / RUN_RECORD_NAME
    record = _record(name, metrics, profile, config, wall_time_s, device, notes)
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=False) + "\n")
    return path


def load_result(name: str, profile: str, root: Path | None = None) -> dict[str, Any] | None:
    """The record of ``results/<profile>/<name>.json``, or ``None`` when that run has not been made."""
    path = result_path(name, profile, root)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"result file {path} is not valid JSON: {err}") from err


def find_results(name: str, profiles: tuple[str, ...] = ("gpu", "cpu"), root: Path | None = None):
    """The first existing record of ``name`` among ``profiles`` (the book prefers gpu runs, then cpu runs)."""
    for profile in profiles:
        record = load_result(name, profile, root)
        if record is not None:
            return record
    return None
