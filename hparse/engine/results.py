"""Results with provenance: every number the book or README shows is read from a file written here.

A result file is ``results/<profile>/<name>.json`` holding the metrics and, beside them, what produced them: the
config, the profile, the git commit (and whether the tree had uncommitted changes), the device, the torch version,
the wall time and the date. Nothing in ``results/`` is typed by hand.
"""

from __future__ import annotations

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

__all__ = ["results_dir", "provenance", "write_result", "load_result", "find_results", "atomic_write_text"]

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
) -> Path:
    """Write ``results/<profile>/<name>.json`` (``name`` may contain ``/``) and return its path."""
    if not name or name.startswith("/") or ".." in Path(name).parts:
        raise ValueError(f"result name {name!r} must be a relative path without '..'")
    record = {
        "name": name,
        "profile": profile,
        "metrics": _jsonable(metrics),
        "config": _jsonable(config or {}),
        "wall_time_s": wall_time_s,
        "notes": notes,
        "provenance": provenance(device),
    }
    path = (root or results_dir()) / profile / f"{name}.json"
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=False) + "\n")
    return path


def load_result(name: str, profile: str, root: Path | None = None) -> dict[str, Any] | None:
    """The record of ``results/<profile>/<name>.json``, or ``None`` when that run has not been made."""
    path = (root or results_dir()) / profile / f"{name}.json"
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
