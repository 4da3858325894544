"""Check a whole real dataset split and list every problem, before any training starts (``hparse data verify``).

A loader stops at the first broken file it meets, which may be hours into training. :func:`verify_split` instead
opens the split without the construction-time file check, loads **every** image with the thorough checks of
:meth:`~hparse.data.io.ParsingDataset.check` (the extra ``Instance_ids`` consistency of CIHP, for instance) and the
data-contract validator, and collects one line per problem, each naming the file and what is wrong. Within one
image, too, every problem is listed (a label map of the wrong size *and* with values outside the label set gives two
lines), not only the first.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .cihp import CIHP
from .densepose_coco import DensePoseCOCO
from .io import DatasetError, DatasetNotFoundError, ParsingDataset
from .mhp import MHPv2
from .pascal_person_part import PascalPersonPart

__all__ = [
    "DATASETS",
    "DEFAULT_SPLITS",
    "DATA_ENV",
    "DEFAULT_ROOTS",
    "SplitReport",
    "SplitError",
    "open_dataset",
    "open_split",
    "dataset_key",
    "find_data_root",
    "verify_split",
]

DATASETS: dict[str, type[ParsingDataset]] = {
    "cihp": CIHP,
    "mhp": MHPv2,
    "ppp": PascalPersonPart,
    "densepose": DensePoseCOCO,
}
_ALIASES = {"mhp_v2": "mhp", "mhpv2": "mhp", "pascal_person_part": "ppp", "densepose_coco": "densepose"}

#: the labelled splits each dataset ships (what ``verify`` checks when no split is given)
DEFAULT_SPLITS: dict[str, tuple[str, ...]] = {
    "cihp": ("train", "val"),
    "mhp": ("train", "val"),
    "ppp": ("train", "val"),
    "densepose": ("train2014", "valminusminival2014", "minival2014"),
}


#: environment variable naming the folder the data scripts fill (default: ``data/`` in the working directory)
DATA_ENV = "HPARSE_DATA"

#: where each dataset's root lies inside that folder (what ``data_scripts/`` create)
DEFAULT_ROOTS: dict[str, str] = {
    "cihp": "CIHP/instance-level_human_parsing",
    "mhp": "LV-MHP-v2",
    "ppp": "PascalPersonPart",
    "densepose": "DensePoseCOCO",
}


def find_data_root(name: str, search: tuple[str | os.PathLike, ...] = ("data", "../data")) -> Path | None:
    """The prepared root of a dataset, if there is one: ``$HPARSE_DATA/<DEFAULT_ROOTS[name]>``, else the same
    under each folder of ``search`` (relative to the working directory). ``None`` when none exists."""
    relative = DEFAULT_ROOTS[dataset_key(name)]
    bases = ([os.environ[DATA_ENV]] if os.environ.get(DATA_ENV) else []) + list(search)
    for base in bases:
        candidate = Path(base) / relative
        if candidate.is_dir():
            return candidate
    return None


def dataset_key(name: str) -> str:
    """Canonical dataset name (``cihp``, ``mhp``, ``ppp``, ``densepose``) of a name or alias."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        known = ", ".join(sorted(DATASETS) + sorted(_ALIASES))
        raise KeyError(f"unknown dataset {name!r}; known: {known}")
    return key


def open_dataset(name: str, root: str | os.PathLike, split: str, **kwargs) -> ParsingDataset:
    """``DATASETS[name](root, split, **kwargs)`` with aliases resolved."""
    return DATASETS[dataset_key(name)](root, split, **kwargs)


class SplitError(DatasetError):
    """A dataset split cannot be opened (missing root, unknown name, broken list file) or lists no images; the
    message names the dataset, the split and the root."""

    def __init__(self, root: str | os.PathLike, message: str):
        super().__init__(root, message)

    def __str__(self) -> str:
        return self.message


def open_split(name: str, root: str | os.PathLike | None, split: str, *, label: str | None = None,
               purpose: str = "nothing to do") -> ParsingDataset:
    """Open a real dataset's split for a command, or say why it cannot be: the one place commands open datasets.

    Args:
        name: the loader (``cihp``, ``mhp``, ``ppp``, ``densepose`` or an alias).
        root: the dataset root (``None``: the message asks for ``--root``).
        split: the split.
        label: the dataset's name in messages (default ``name``; ``synth`` for a SynthCrowd export read as CIHP).
        purpose: what an empty split leaves undone, for the message (``"nothing to score"``).

    Raises:
        SplitError: the root is missing or unreadable, the name unknown, or the split lists no images.
    """
    label = label or name
    if root is None:
        raise SplitError(".", f"--dataset {label} needs --root (the dataset folder; see data_scripts/README.md)")
    try:
        dataset = open_dataset(name, root, split)
    except KeyError as err:
        raise SplitError(root, err.args[0]) from None
    except (DatasetError, ValueError, FileNotFoundError) as err:
        raise SplitError(root, f"cannot read the {label} {split} split in {root}: {err}") from None
    if len(dataset) == 0:
        raise SplitError(root, f"the {label} {split} split in {root} lists no images (its image list is empty); "
                         f"{purpose}")
    return dataset


@dataclass
class SplitReport:
    """What :func:`verify_split` found: ``problems`` has one line per problem (an image can have several), or one
    for the split when it cannot be opened."""

    dataset: str
    split: str
    root: str
    images: int = 0
    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        state = "OK" if self.ok else f"{len(self.problems)} problem{'s' * (len(self.problems) != 1)}"
        return f"{self.dataset} {self.split}: {self.checked} of {self.images} images checked, {state}"


# Worker processes open the dataset once (the DensePose json is hundreds of MB: never pickle it per task).
_WORKER_DATASET: ParsingDataset | None = None


def _init_worker(name: str, root: str, split: str) -> None:
    global _WORKER_DATASET
    _WORKER_DATASET = open_dataset(name, root, split, check_files=False)


def _check_in_worker(index: int) -> list[str]:
    return _WORKER_DATASET.check(index)


def verify_split(name: str, root: str | os.PathLike, split: str, limit: int | None = None, workers: int = 0,
                 on_problem: Callable[[str], None] | None = None) -> SplitReport:
    """Load every image of one split with the thorough checks and collect every problem.

    Args:
        name: dataset name or alias (see :data:`DATASETS`).
        root: the dataset root the loader takes.
        split: the split to check.
        limit: check only the first ``limit`` images (a quick look).
        workers: processes to spread the checks over (0: in this process).
        on_problem: called with each problem line as soon as it is found (the CLI prints them).

    Raises:
        DatasetNotFoundError: if ``root`` itself does not exist (nothing can be checked). A missing split folder
            or list file is reported as a problem of the split instead.
    """
    key = dataset_key(name)
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(root, "does not exist; expected the dataset root")
    report = SplitReport(dataset=DATASETS[key].name, split=split, root=str(root))
    emit = on_problem or (lambda line: None)
    try:
        dataset = open_dataset(key, root, split, check_files=False)
    except (DatasetError, ValueError) as err:
        report.problems.append(str(err))
        emit(str(err))
        return report
    report.images = len(dataset)
    indices = range(len(dataset) if limit is None else min(limit, len(dataset)))
    if workers and len(indices) > 1:
        with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                                 initargs=(key, str(root), split)) as pool:
            results = pool.map(_check_in_worker, indices, chunksize=max(1, len(indices) // (8 * workers)))
            for problems in results:
                report.checked += 1
                for line in problems:
                    report.problems.append(line)
                    emit(line)
    else:
        for index in indices:
            report.checked += 1
            for line in dataset.check(index):
                report.problems.append(line)
                emit(line)
    return report
