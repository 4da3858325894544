"""Predictions on disk: the folder layout ``hparse evaluate`` scores, its writer and its readers.

Any method's output can be scored, not only hparse's: the layout is the union of the CIHP challenge submission
format and the MHP v2 per-person naming (``shared/reference/metrics_and_formats.md`` §A2 item 9, §A3, §B2), and
the two official submission formats are read as they are. All label maps are single-channel PNGs holding label
values (8-bit; 16-bit where an id exceeds 255), read as indices, never as colours.

**hparse layout** (written by :func:`write_predictions`; every metric)::

    <pred>/
      global_parsing/<id>.png            semantic map: part label 0..n-1 per pixel (mIoU)
      person_parsing/<id>.txt            one line per predicted person: "<KK> <score>" or
                                         "<KK> <score> <s_0> ... <s_{n-1}>" with the n per-part scores (AP^r)
      person_parsing/<id>_<NN>_<KK>.png  part map of person KK (1..NN) of NN, 0 = not this person (MHP v2 naming);
                                         persons may overlap (AP^p, PCP; painted by score for AP^r)
      instance_parsing/<id>.png, .txt    the CIHP challenge part instances, also written for submission (below)

**CIHP challenge layout** (``global_parsing/`` + ``instance_parsing/``; mIoU and AP^r only)::

      global_parsing/<id>.png            semantic map
      instance_parsing/<id>.png          part-instance map: pixel value k (1..K) belongs to instance k, 0 = none
      instance_parsing/<id>.txt          line k: "<class_id> <score>" of instance k

  This is what the official AP^r script reads (``CIHP_PGN/evaluation/test_inst_part_ap.py``). Part instances are not
  grouped into persons, so AP^p and PCP cannot be computed from it. Each instance becomes a one-part "person" of the
  prediction contract with its own score, which gives exactly the script's regions. A listed instance without
  pixels is left out (the official script would misalign its scores instead).

**MHP v2 submission layout** (``results.txt`` + ``global_seg/`` + ``global_tag/``; every metric)::

      results.txt                        lines "<id> <pid> <score> <pid> <score> ..."
      global_seg/<id>.png                part labels
      global_tag/<id>.png                person id per pixel (0 = none)

  As in ``v2/eval_submission.py``: person ``pid``'s part map is ``(global_tag == pid) * global_seg`` and persons
  without pixels are dropped. Persons cannot overlap in this format. mIoU uses ``global_parsing/<id>.png`` when it
  exists, else ``global_seg``.

Image ids are the ground truth's ``meta['id']`` (CIHP: the 7-digit stem; MHP v2: the image stem).

**Scoring a folder** (:func:`score_folder`, ``hparse evaluate --pred``): every image of a ground-truth split is read
back and scored with :class:`~hparse.metrics.ParsingEvaluator`; an image without a prediction stops the run (the
default), is left out (``missing="skip"``) or is scored as an empty prediction (``missing="empty"``).

What would corrupt the scores is refused with the file and line: an image listed twice in ``results.txt``, a person
listed twice for one image, a score outside [0, 1] (scores are probabilities; a raw logit would sort persons on
another scale; ``allow_raw_scores=True``, ``--allow-raw-scores``, accepts any finite score). Predictions of images
that are not in the ground truth are not an error but are listed (:meth:`PredictionReader.image_ids`), because
they usually mean the wrong split or renamed files.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.io import DatasetError, read_label_png
from .painting import paint_persons, painted_maps, person_pixels

__all__ = ["LAYOUTS", "MISSING", "write_predictions", "detect_layout", "PredictionReader", "PredictionFormatError",
           "FolderScore", "score_folder"]

#: Layout name -> metric groups it supports.
LAYOUTS = {"hparse": ("miou", "app", "apr"), "cihp": ("miou", "apr"), "mhp": ("miou", "app", "apr")}


#: What :func:`score_folder` does with a ground-truth image that has no prediction.
MISSING = ("error", "skip", "empty")


class PredictionFormatError(ValueError):
    """A prediction folder or file does not follow its layout; the message names the file."""


def _write_png(values: np.ndarray, path: Path) -> None:
    """Single-channel PNG: 8-bit when every value fits, else 16-bit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.asarray(values)
    if values.size and values.max() > 65535:
        raise ValueError(f"{path}: value {int(values.max())} does not fit a 16-bit PNG")
    if values.size and values.max() > 255:
        Image.fromarray(values.astype(np.uint16)).save(path)
    else:
        Image.fromarray(values.astype(np.uint8), "L").save(path)


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def write_predictions(pred: dict, out_dir: str | os.PathLike, image_id: str) -> None:
    """Write one image's prediction-contract dict in the hparse layout (which includes the CIHP challenge files).

    Args:
        pred: ``semantic`` (H, W) (painted from the persons when absent), ``person_parts`` (N, H, W),
            ``person_scores`` (N,), optional ``part_scores`` (N, n).
        out_dir: the ``<pred>`` folder.
        image_id: the ground truth's ``meta['id']``.
    """
    out = Path(out_dir)
    if not image_id or "/" in image_id or image_id.startswith("."):
        raise ValueError(f"image id {image_id!r} cannot be a file name")
    parts = pred["person_parts"]
    scores = pred["person_scores"]
    part_scores = pred.get("part_scores")
    pixels = person_pixels(parts)
    semantic = pred.get("semantic")
    if semantic is None:
        semantic, _ = painted_maps(paint_persons(pixels, scores))
    _write_png(_np(semantic), out / "global_parsing" / f"{image_id}.png")

    num = int(parts.shape[0])
    width = max(2, len(str(num)))
    lines = []
    parts_np, scores_np = _np(parts), _np(scores).astype(np.float64)
    part_np = _np(part_scores).astype(np.float64) if part_scores is not None else None
    for k in range(num):
        _write_png(parts_np[k], out / "person_parsing" / f"{image_id}_{num:0{width}d}_{k + 1:0{width}d}.png")
        extra = "" if part_np is None else " " + " ".join(repr(float(v)) for v in part_np[k])
        lines.append(f"{k + 1} {float(scores_np[k])!r}{extra}\n")
    (out / "person_parsing").mkdir(parents=True, exist_ok=True)
    (out / "person_parsing" / f"{image_id}.txt").write_text("".join(lines))

    # CIHP challenge part instances: paint (highest score on top), one instance per (person, class) region.
    painted = paint_persons(pixels, scores)
    n = int(max(int(parts.max()) + 1 if parts.numel() else 1, part_np.shape[1] if part_np is not None else 1))
    key = (painted.person * n + painted.label).cpu()
    regions, inverse = torch.unique(key, return_inverse=True)  # sorted by person, then class
    instance = torch.zeros(pixels.num_pixels, dtype=torch.int64)
    instance[painted.pixel.cpu()] = inverse + 1
    _write_png(instance.reshape(pixels.shape).numpy(), out / "instance_parsing" / f"{image_id}.png")
    rows = []
    for region in regions.tolist():
        person, label = divmod(region, n)
        score = part_np[person, label] if part_np is not None else scores_np[person]
        rows.append(f"{label} {float(score)!r}\n")
    (out / "instance_parsing" / f"{image_id}.txt").write_text("".join(rows))


def detect_layout(pred_dir: str | os.PathLike) -> str:
    """``"hparse"``, ``"mhp"`` or ``"cihp"`` from the folders present in ``pred_dir`` (checked in that order)."""
    root = Path(pred_dir)
    if not root.is_dir():
        raise PredictionFormatError(f"{root}: the prediction folder does not exist")
    if (root / "person_parsing").is_dir():
        return "hparse"
    if (root / "results.txt").is_file() and (root / "global_tag").is_dir() and (root / "global_seg").is_dir():
        return "mhp"
    if (root / "instance_parsing").is_dir():
        return "cihp"
    if (root / "global_parsing").is_dir():
        return "cihp"
    raise PredictionFormatError(
        f"{root}: not a prediction folder: expected person_parsing/ (hparse layout), results.txt + global_seg/ + "
        "global_tag/ (MHP v2 submission) or global_parsing/ + instance_parsing/ (CIHP challenge); see "
        "`hparse evaluate --help`")


def _read_png(path: Path) -> np.ndarray:
    try:
        return read_label_png(path)
    except DatasetError as err:
        raise PredictionFormatError(str(err)) from None


def _read_lines(path: Path) -> list[list[str]]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise PredictionFormatError(f"{path}: cannot be read ({err})") from None
    return [line.split() for line in text.splitlines() if line.strip()]


def _float(value: str, path: Path, line: int) -> float:
    try:
        return float(value)
    except ValueError:
        raise PredictionFormatError(f"{path}, line {line}: {value!r} is not a number") from None


def _score(value: str, path: Path, line: int, allow_raw: bool) -> float:
    """A score field: a number, finite, and in [0, 1] unless ``allow_raw``."""
    score = _float(value, path, line)
    if not np.isfinite(score):
        raise PredictionFormatError(f"{path}, line {line}: score {value!r} is not a finite number")
    if not allow_raw and not 0.0 <= score <= 1.0:
        raise PredictionFormatError(f"{path}, line {line}: score {value} is outside [0, 1]; scores are "
                                    "probabilities (pass --allow-raw-scores to score raw, unbounded values)")
    return score


def _int(value: str, path: Path, line: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise PredictionFormatError(f"{path}, line {line}: {value!r} is not an integer") from None


class PredictionReader:
    """Reads one image's prediction-contract dict from a folder in one of the :data:`LAYOUTS`.

    Args:
        pred_dir: the ``<pred>`` folder.
        num_classes: n, for the part-score columns of the hparse layout.
        layout: ``"auto"`` (:func:`detect_layout`), ``"hparse"``, ``"cihp"`` or ``"mhp"``.
        allow_raw_scores: accept finite scores outside [0, 1] (default: an error naming the file and line).
    """

    def __init__(self, pred_dir: str | os.PathLike, num_classes: int, layout: str = "auto",
                 allow_raw_scores: bool = False):
        self.root = Path(pred_dir)
        self.num_classes = num_classes
        self.allow_raw_scores = allow_raw_scores
        self.layout = detect_layout(self.root) if layout == "auto" else layout
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {sorted(LAYOUTS)} or 'auto', got {layout!r}")
        self._mhp_results: dict[str, list[tuple[int, float]]] | None = None

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metric groups this folder supports (a CIHP folder without ``instance_parsing/``: mIoU only)."""
        if self.layout == "cihp" and not (self.root / "instance_parsing").is_dir():
            return ("miou",)
        return LAYOUTS[self.layout]

    def _marker(self, image_id: str) -> Path:
        """The file whose presence means "this image has a prediction"."""
        if self.layout == "hparse":
            return self.root / "person_parsing" / f"{image_id}.txt"
        if self.layout == "mhp":
            return self.root / "global_tag" / f"{image_id}.png"
        if (self.root / "instance_parsing").is_dir():
            return self.root / "instance_parsing" / f"{image_id}.txt"
        return self.root / "global_parsing" / f"{image_id}.png"

    def has(self, image_id: str) -> bool:
        """Whether the folder holds a prediction for ``image_id``."""
        return self._marker(image_id).is_file()

    def image_ids(self) -> set[str]:
        """The ids of every image the folder holds a prediction for (to find those the ground truth lacks)."""
        if self.layout == "mhp":
            return {p.stem for p in (self.root / "global_tag").glob("*.png")} | set(self._load_mhp_results())
        marker = self._marker("any")  # the folder and suffix that mark a prediction
        return {p.stem for p in marker.parent.glob(f"*{marker.suffix}")}

    def read(self, image_id: str, shape: tuple[int, int]) -> dict:
        """The prediction of ``image_id`` as a prediction-contract dict (int64 maps, float32 scores).

        Args:
            image_id: the ground truth's ``meta['id']``.
            shape: (H, W) of the ground truth, used when the prediction has no person and no semantic map.
        """
        if not self.has(image_id):
            raise PredictionFormatError(f"{self._marker(image_id)}: missing (no prediction for image {image_id!r})")
        reader = {"hparse": self._read_hparse, "cihp": self._read_cihp, "mhp": self._read_mhp}[self.layout]
        pred = reader(image_id, tuple(shape))
        semantic_path = self.root / "global_parsing" / f"{image_id}.png"
        if "semantic" not in pred and semantic_path.is_file():
            pred["semantic"] = torch.from_numpy(_read_png(semantic_path))
        if "semantic" not in pred and "miou" in self.metrics:
            semantic, _ = painted_maps(paint_persons(person_pixels(pred["person_parts"]), pred["person_scores"]))
            pred["semantic"] = semantic
        return pred

    @staticmethod
    def _stack(maps: list[np.ndarray], shape: tuple[int, int], path: Path) -> torch.Tensor:
        for m in maps:
            if m.shape != maps[0].shape:
                raise PredictionFormatError(f"{path}: person maps of different sizes {m.shape} and {maps[0].shape}")
        if not maps:
            return torch.zeros((0, *shape), dtype=torch.int64)
        return torch.from_numpy(np.stack(maps))

    def _read_hparse(self, image_id: str, shape) -> dict:
        txt = self.root / "person_parsing" / f"{image_id}.txt"
        rows = _read_lines(txt)
        num = len(rows)
        width = max(2, len(str(num)))
        maps, scores, part_scores, seen = [], [], [], {}
        for line, row in enumerate(rows, start=1):
            if len(row) not in (2, 2 + self.num_classes):
                raise PredictionFormatError(f"{txt}, line {line}: expected '<KK> <score>' or '<KK> <score>' and "
                                            f"{self.num_classes} part scores, got {len(row)} fields")
            kk = _int(row[0], txt, line)
            if kk in seen:
                raise PredictionFormatError(f"{txt}, line {line}: person {kk} is already listed on line {seen[kk]}")
            seen[kk] = line
            path = self.root / "person_parsing" / f"{image_id}_{num:0{width}d}_{kk:0{width}d}.png"
            if not path.is_file():
                raise PredictionFormatError(f"{path}: missing (person {kk} is listed in {txt.name})")
            maps.append(_read_png(path))
            scores.append(_score(row[1], txt, line, self.allow_raw_scores))
            if len(row) > 2:
                part_scores.append([_score(v, txt, line, self.allow_raw_scores) for v in row[2:]])
        if part_scores and len(part_scores) != num:
            raise PredictionFormatError(f"{txt}: part scores on some lines only; give them on every line or none")
        pred = {"person_parts": self._stack(maps, shape, txt),
                "person_scores": torch.tensor(scores, dtype=torch.float32)}
        if part_scores:
            pred["part_scores"] = torch.tensor(part_scores, dtype=torch.float32)
        return pred

    def _read_cihp(self, image_id: str, shape) -> dict:
        png = self.root / "instance_parsing" / f"{image_id}.png"
        txt = self.root / "instance_parsing" / f"{image_id}.txt"
        if not png.is_file() and not txt.is_file():  # global_parsing only: mIoU alone
            return {"person_parts": torch.zeros((0, *shape), dtype=torch.int64), "person_scores": torch.zeros(0)}
        instance = _read_png(png)
        rows = _read_lines(txt)
        classes, scores = [], []
        for line, row in enumerate(rows, start=1):
            if len(row) != 2:
                raise PredictionFormatError(f"{txt}, line {line}: expected '<class_id> <score>', got {' '.join(row)!r}")
            classes.append(_int(row[0], txt, line))
            scores.append(_score(row[1], txt, line, self.allow_raw_scores))
        if instance.size and int(instance.max()) > len(rows):
            raise PredictionFormatError(f"{png}: pixel value {int(instance.max())} but {txt.name} lists only "
                                        f"{len(rows)} instances")
        ids = np.arange(1, len(rows) + 1)
        present = np.isin(ids, np.unique(instance))
        maps = [np.where(instance == k, classes[k - 1], 0) for k in ids[present]]
        return {"person_parts": self._stack(maps, shape, png),
                "person_scores": torch.tensor([scores[k - 1] for k in ids[present]], dtype=torch.float32)}

    def _load_mhp_results(self) -> dict[str, list[tuple[int, float]]]:
        if self._mhp_results is None:
            path = self.root / "results.txt"
            results, first_line = {}, {}
            for line, row in enumerate(_read_lines(path), start=1):
                if len(row) % 2 != 1:
                    raise PredictionFormatError(f"{path}, line {line}: expected '<id> <pid> <score> ...' pairs")
                if row[0] in first_line:
                    raise PredictionFormatError(f"{path}, line {line}: image {row[0]!r} is already listed on line "
                                                f"{first_line[row[0]]}; list each image once, with all its persons")
                first_line[row[0]] = line
                persons = [(_int(row[i], path, line), _score(row[i + 1], path, line, self.allow_raw_scores))
                           for i in range(1, len(row), 2)]
                pids = [pid for pid, _ in persons]
                repeated = sorted({pid for pid in pids if pids.count(pid) > 1})
                if repeated:
                    raise PredictionFormatError(f"{path}, line {line}: person id {repeated[0]} of image {row[0]!r} "
                                                "is listed more than once (each person once, with one score)")
                results[row[0]] = persons
            self._mhp_results = results
        return self._mhp_results

    def _read_mhp(self, image_id: str, shape) -> dict:
        seg = _read_png(self.root / "global_seg" / f"{image_id}.png")
        tag = _read_png(self.root / "global_tag" / f"{image_id}.png")
        if seg.shape != tag.shape:
            raise PredictionFormatError(f"{self.root / 'global_tag' / f'{image_id}.png'}: size {tag.shape} differs "
                                        f"from global_seg's {seg.shape}")
        maps, scores = [], []
        for pid, score in self._load_mhp_results().get(image_id, []):
            person = np.where(tag == pid, seg, 0)
            if person.any():  # eval_submission.py drops empty persons
                maps.append(person)
                scores.append(score)
        pred = {"person_parts": self._stack(maps, shape, self.root / "results.txt"),
                "person_scores": torch.tensor(scores, dtype=torch.float32)}
        if not (self.root / "global_parsing" / f"{image_id}.png").is_file():
            pred["semantic"] = torch.from_numpy(seg)
        return pred


# ------------------------------------------------------------------------------------------- scoring a folder


def _finite(value):
    """JSON has no NaN: an undefined metric is ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return [_finite(v) for v in value] if isinstance(value, list) else value


@dataclass
class FolderScore:
    """The result of :func:`score_folder`: the metrics, the evaluator's mode, and what was not scored."""

    metrics: dict
    evaluator: dict
    layout: str
    skipped: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)

    def record(self, **context) -> dict:
        """A JSON-ready record (undefined metrics as ``None``) with ``context`` (dataset, split, folders)."""
        return {"metrics": {k: _finite(v) for k, v in self.metrics.items()}, "evaluator": self.evaluator, **context,
                "layout": self.layout, "skipped": sorted(self.skipped), "unmatched_predictions": self.unmatched}


def score_folder(pred_dir: str | os.PathLike, dataset, *, layout: str = "auto", missing: str = "error",
                 allow_raw_scores: bool = False, on_unmatched=None, **evaluator_kwargs) -> FolderScore:
    """Score the predictions stored in ``pred_dir`` against every image of ``dataset`` (a ground-truth split).

    Args:
        pred_dir: the prediction folder, in one of :data:`LAYOUTS` (``"auto"`` detects it).
        dataset: data-contract samples with ``ids`` and ``labels`` (a loader of :mod:`hparse.data`).
        missing: an image without a prediction: ``"error"`` (raise, naming a few), ``"skip"`` (leave it out) or
            ``"empty"`` (score it as a prediction with no person).
        allow_raw_scores: accept finite scores outside [0, 1].
        on_unmatched: called with the sorted ids of predictions for images not in ``dataset`` before scoring (they
            are not scored; usually the wrong split or renamed files).
        evaluator_kwargs: :class:`~hparse.metrics.ParsingEvaluator` mode (``absent_class``, ``score_thresh``, ...).

    Raises:
        PredictionFormatError: the folder or one of its files does not follow its layout, an image has no
            prediction (``missing="error"``), or a prediction cannot be scored against its ground truth.
    """
    from .checks import MetricInputError
    from .evaluator import ParsingEvaluator

    if missing not in MISSING:
        raise ValueError(f"missing must be one of {', '.join(MISSING)}, got {missing!r}")
    labels = dataset.labels
    reader = PredictionReader(pred_dir, labels.num_classes, layout, allow_raw_scores=allow_raw_scores)
    unmatched = sorted(reader.image_ids() - set(dataset.ids))
    if unmatched and on_unmatched is not None:
        on_unmatched(unmatched)
    absent = [i for i in dataset.ids if not reader.has(i)]
    if absent and missing == "error":
        raise PredictionFormatError(
            f"{len(absent)} of {len(dataset)} {dataset.split} images have no prediction in {pred_dir} "
            f"({reader.layout} layout), e.g. {', '.join(absent[:3])}; pass --missing skip or --missing empty to "
            "score them anyway")
    evaluator = ParsingEvaluator(labels.num_classes, class_names=labels.names, metrics=reader.metrics,
                                 **evaluator_kwargs)
    skipped = set(absent) if missing == "skip" else set()
    absent = set(absent)
    for index, image_id in enumerate(dataset.ids):
        if image_id in skipped:
            continue
        target = dataset[index]
        shape = tuple(target["semantic"].shape)
        try:
            if image_id in absent:  # missing="empty": no person, everything background
                pred = {"semantic": torch.zeros(shape, dtype=torch.int64),
                        "person_parts": torch.zeros((0, *shape), dtype=torch.int64), "person_scores": torch.zeros(0)}
            else:
                pred = reader.read(image_id, shape)
            evaluator.update(pred, target)
        except (PredictionFormatError, MetricInputError) as err:
            raise PredictionFormatError(f"{pred_dir}: {err}") from None
    return FolderScore(evaluator.compute(), evaluator.config(), reader.layout, sorted(skipped), unmatched)
