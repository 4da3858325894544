"""Shared steps of the data scripts: download, size/checksum report, safe unpacking, and ``hparse data verify``.

Importing this module does nothing; each script calls these functions from its ``main()``. Only the standard
library is imported up front (hparse only when verifying), so ``--help`` works before hparse is installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.request
import zipfile
from pathlib import Path

DATA_ENV = "HPARSE_DATA"
UNKNOWN = "UNKNOWN"


def default_data_dir() -> Path:
    """``$HPARSE_DATA`` if set, else ``data/`` in the working directory (where the book looks for real data)."""
    return Path(os.environ.get(DATA_ENV) or "data")


def say(message: str) -> None:
    print(message, flush=True)


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{size} B"


def sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def report_file(path: Path, expected_size: int | None = None, expected_sha256: str | None = None) -> bool:
    """Print the size and SHA-256 of ``path`` against the published values (``UNKNOWN`` where none is published).

    Returns False when a published value is contradicted. The measured digest is appended to
    ``<folder>/SHA256SUMS.local`` so a later download can be compared with this one.
    """
    size = path.stat().st_size
    ok = True
    size_note = UNKNOWN if expected_size is None else ("OK" if size == expected_size else f"EXPECTED {expected_size}")
    ok &= expected_size is None or size == expected_size
    digest = sha256(path)
    sum_note = UNKNOWN if expected_sha256 is None else ("OK" if digest == expected_sha256 else "MISMATCH")
    ok &= expected_sha256 is None or digest == expected_sha256
    say(f"  {path.name}: {human(size)} ({size} bytes; published size {size_note}); sha256 {digest} "
        f"(published checksum {sum_note})")
    with open(path.parent / "SHA256SUMS.local", "a") as f:
        f.write(f"{digest}  {path.name}\n")
    return ok


def download(url: str, dest: Path) -> Path:
    """Download ``url`` to ``dest`` (through ``dest.part``, renamed at the end); keep an existing ``dest``."""
    if dest.is_file():
        say(f"  {dest} is already here; not downloading it again")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    say(f"  downloading {url}")
    try:
        with urllib.request.urlopen(url) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done, step = 0, max(total // 20, 1 << 24)
            next_report = step
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                done += len(block)
                if done >= next_report:
                    share = f" ({100 * done / total:.0f}%)" if total else ""
                    say(f"    {human(done)}{share}")
                    next_report += step
    except OSError as err:
        part.unlink(missing_ok=True)
        raise SystemExit(f"error: downloading {url} failed: {err}\n"
                         f"Download it yourself and pass the file with the script's archive option.") from None
    part.rename(dest)
    return dest


def _inside(base: Path, target: Path) -> bool:
    base, target = base.resolve(), target.resolve()
    return target == base or base in target.parents


def unpack(archive: Path, dest: Path) -> None:
    """Unpack a .zip, .tar, .tar.gz or .tgz into ``dest``, refusing members that would land outside it."""
    dest.mkdir(parents=True, exist_ok=True)
    say(f"  unpacking {archive.name} into {dest}")
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if not _inside(dest, dest / name):
                    raise SystemExit(f"error: {archive} has a member outside the target folder: {name}")
            zf.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                if not _inside(dest, dest / member.name) or member.issym() or member.islnk():
                    raise SystemExit(f"error: {archive} has an unsafe member: {member.name}")
            if hasattr(tarfile, "data_filter"):  # Python >= 3.12 (and patched 3.8-3.11): the safe extraction filter
                tf.extractall(dest, filter="data")
            else:
                tf.extractall(dest)
    else:
        raise SystemExit(f"error: {archive} is neither a zip nor a tar archive")


def find_dir(base: Path, required: tuple[str, ...]) -> Path | None:
    """The shallowest folder under ``base`` (``base`` included) that holds every name in ``required``."""
    candidates = [base] + sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: len(p.parts))
    for folder in candidates:
        if all((folder / name).exists() for name in required):
            return folder
    return None


def place(source: Path, target: Path) -> None:
    """Move ``source`` to ``target`` (if ``target`` does not exist yet)."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(target))


def link(source: Path, target: Path) -> None:
    """Make ``target`` a symbolic link to the existing folder ``source`` (nothing is copied or moved)."""
    if target.exists() or target.is_symlink():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source.resolve(), target_is_directory=True)
    say(f"  linked {target} -> {source.resolve()}")


def cleanup(folder: Path) -> None:
    """Remove an unpacking folder once what was needed has been moved out of it."""
    if folder.is_dir():
        shutil.rmtree(folder)


def install_from_archive(archive: Path, required: tuple[str, ...], target: Path, staging: Path, what: str,
                         subfolder: str | None = None) -> None:
    """Put the folder of ``archive`` that holds every name in ``required`` (or its ``subfolder``) at ``target``.

    ``archive`` may be an archive file (reported, unpacked into ``staging``, the folder moved, ``staging`` removed)
    or a folder that already holds the unpacked data (linked, not copied or moved).
    """
    if archive.is_dir():
        found = find_dir(archive, required)
        if found is None:
            raise SystemExit(f"error: no folder holding {', '.join(required)} found in {archive}")
        link(found / subfolder if subfolder else found, target)
        return
    if not archive.is_file():
        raise SystemExit(f"error: {archive} does not exist")
    say(f"{what} archive {archive}:")
    report_file(archive)
    unpack(archive, staging)
    found = find_dir(staging, required)
    if found is None:
        raise SystemExit(f"error: no folder holding {', '.join(required)} found in {archive}")
    place(found / subfolder if subfolder else found, target)
    cleanup(staging)


def verify(dataset: str, root: Path, splits: list[str] | None = None) -> int:
    """Run ``hparse data verify`` on the prepared root; returns its exit status (0: no problem)."""
    try:
        from hparse.cli import main as hparse_main
    except ImportError as err:
        raise SystemExit(f"error: hparse cannot be imported ({err}); install it (pip install -e .) and run "
                         f"`hparse data verify --dataset {dataset} --root {root}`") from None
    argv = ["data", "verify", "--dataset", dataset, "--root", str(root)]
    for split in splits or []:
        argv += ["--split", split]
    say("running: hparse " + " ".join(argv))
    return hparse_main(argv)
