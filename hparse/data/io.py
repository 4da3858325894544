"""Reading and checking the files of the real datasets, with errors that name the file and say what is wrong.

Every real-dataset loader (:mod:`~hparse.data.cihp`, :mod:`~hparse.data.mhp`,
:mod:`~hparse.data.pascal_person_part`, :mod:`~hparse.data.densepose_coco`) reads its files through the helpers
here, so the same problems produce the same messages everywhere:

- a missing root, list file or listed file;
- an unreadable or corrupt image or PNG (PIL cannot decode it, or it is truncated);
- a label map whose size differs from its image (checked from the files' headers before anything is decoded, see
  :func:`check_sizes_before_decode`);
- an image whose header claims more than :data:`MAX_IMAGE_PIXELS` (a corrupt file or a decompression bomb: decoding
  it would take gigabytes);
- an image id listed twice in a split's list file (it would be trained on twice and scored twice);
- label values outside the dataset's label set (255, the ignore value, is always allowed);
- person ids that disagree between two files of one image.

Each is a :class:`DatasetError` whose message starts with the offending file's path. A loader sends the problems
it finds in one image to a :class:`Problems`: by default that raises the first at once (``dataset[i]`` stops with a
message naming the file), while :meth:`ParsingDataset.check` passes a collecting one, so the loader goes on checking
the image's other files and every problem of the image is listed. ``hparse data verify`` (:mod:`hparse.data.verify`)
does that over a whole split.

The writers (``write_cihp``, ``write_mhp``, ...) share :func:`write_image`, :func:`write_label_png` and
:func:`safe_stem`; :func:`synth_segments` and :func:`relabel_by_segment` turn SynthCrowd's CIHP labels into the
body-region labels of PASCAL-Person-Part and DensePose, so SynthCrowd can be exported in those layouts too.

Reading conventions (shared/reference/metrics_and_formats.md §B):

- Images are read with PIL and converted to RGB. EXIF orientation is **not** applied: the label maps were drawn on
  the stored pixel grid, and a rotated image shows up as a size mismatch instead of silently misaligned labels.
- Label PNGs are read with PIL as **indices**: a palette PNG gives its indices, not colours (``cv2.imread(p, 0)``
  would return luminance). A 3-channel label PNG is accepted when the caller names the channel that holds the label
  (MHP v2.0 stores it in channel 0) or when its three channels are equal.
- Person boxes derived from masks are xyxy in continuous pixel coordinates: pixel ``i`` covers ``[i, i + 1)``, so
  a person whose leftmost pixel is column 3 and rightmost column 7 has ``x1 = 3, x2 = 8`` (the convention of
  :mod:`hparse.data.transforms`).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .contract import IGNORE_INDEX, ContractError, validate_sample
from .labels import LabelSet

__all__ = [
    "DatasetError",
    "DatasetNotFoundError",
    "Problems",
    "ParsingDataset",
    "read_image",
    "read_label_png",
    "read_id_list",
    "MAX_IMAGE_PIXELS",
    "header_size",
    "check_sizes_before_decode",
    "require_dir",
    "list_dir",
    "check_same_size",
    "check_label_values",
    "read_checked_label",
    "boxes_from_instances",
    "compact_ids",
    "make_sample",
    "write_label_png",
    "write_image",
    "safe_stem",
    "first_missing",
    "synth_segments",
    "relabel_by_segment",
]


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or inconsistent. ``path`` is the offending file (or folder)."""

    def __init__(self, path: str | os.PathLike, message: str):
        self.path = Path(path)
        self.message = message
        super().__init__(f"{path}: {message}")


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset root, a split folder or a list file does not exist."""


class Problems:
    """Where a loader sends the problems it finds in one image.

    ``Problems()`` raises each :class:`DatasetError` as soon as it is added, so loading stops at the first problem
    with a message naming the file (what ``dataset[i]`` does). ``Problems(collect=True)`` keeps them in ``errors``
    instead, and the loader carries on with the image's remaining checks, skipping only those that need what could
    not be read (what :meth:`ParsingDataset.check` and ``hparse data verify`` do).
    """

    def __init__(self, collect: bool = False):
        self.collect = collect
        self.errors: list[DatasetError] = []

    def add(self, error: DatasetError) -> None:
        """Record ``error``; raise it at once unless collecting (without the exception being handled, if any, as
        its context: the message already says what went wrong)."""
        if not self.collect:
            raise error from None
        self.errors.append(error)

    def attempt(self, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)``; a :class:`DatasetError` it raises is added (so, unless collecting, raised) and
        the result is then ``None``."""
        if not self.collect:
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except DatasetError as err:
            self.errors.append(err)
            return None

    def messages(self) -> list[str]:
        return [str(err) for err in self.errors]

    def __len__(self) -> int:
        return len(self.errors)

    def __bool__(self) -> bool:
        return bool(self.errors)


# ------------------------------------------------------------------------------------------------ reading


def require_dir(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` if it is a folder, else raise :class:`DatasetNotFoundError` saying what was expected there."""
    path = Path(path)
    if not path.is_dir():
        state = "is a file, not a folder" if path.exists() else "does not exist"
        raise DatasetNotFoundError(path, f"{state}; expected {what}")
    return path


def list_dir(path: Path) -> set[str]:
    """Names of the entries of a folder (one ``scandir``, so a 30,000-file folder costs milliseconds)."""
    with os.scandir(path) as entries:
        return {entry.name for entry in entries}


def read_id_list(path: str | os.PathLike, what: str, unique: bool = True) -> list[str]:
    """Non-empty stripped lines of a list file; raise a :class:`DatasetNotFoundError` if it is missing.

    With ``unique`` (the default) a line listed twice is a :class:`DatasetError` naming both line numbers: a split
    with an image twice trains on it twice and, worse, scores it twice.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(path, f"does not exist; expected {what}")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(path, f"cannot be read as a text list ({err})") from None
    ids, first_line = [], {}
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        if unique and line in first_line:
            raise DatasetError(path, f"line {number}: {line!r} is already listed on line {first_line[line]}; each "
                               "image may be listed once (remove the duplicate line)")
        first_line.setdefault(line, number)
        ids.append(line)
    return ids


#: The largest image hparse decodes, in pixels (width x height). The real datasets' images are far smaller (CIHP and
#: PASCAL at most ~0.5 megapixels, MHP v2 and COCO a few megapixels); a header claiming more is a corrupt file or a
#: decompression bomb, and decoding it would take gigabytes of memory. Raise it here for a dataset of larger images.
MAX_IMAGE_PIXELS = 50_000_000


def _open_header(path: Path, kind: str) -> Image.Image:
    """Open ``path`` reading only its header (size, mode); refuse a missing file and an oversized image."""
    if not path.is_file():
        raise DatasetError(path, f"{kind} is missing")
    try:
        img = Image.open(path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(path, f"{kind} is unreadable or corrupt ({err})") from None
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        img.close()
        raise DatasetError(path, f"{kind} header says {width}x{height} pixels, more than hparse.data.io."
                           f"MAX_IMAGE_PIXELS ({MAX_IMAGE_PIXELS:,}); the file is corrupt or not a dataset image "
                           "(raise the limit if it is a genuine image)")
    return img


def header_size(path: str | os.PathLike, kind: str = "image") -> tuple[int, int]:
    """(H, W) of an image file from its header alone (no decode); :class:`DatasetError` naming the file if it is
    missing, unreadable or larger than :data:`MAX_IMAGE_PIXELS`."""
    with _open_header(Path(path), kind) as img:
        width, height = img.size
    return height, width


def check_sizes_before_decode(image_path: Path, label_paths: Sequence[Path], problems: Problems) -> None:
    """Compare the sizes in the headers of an image and its label maps before any of them is decoded.

    A mismatch then costs two header reads instead of decoding a possibly huge image first. Only for a raising
    ``problems`` (``dataset[i]``): a collecting one (``hparse data verify``) decodes every file anyway and reports
    the same mismatch, with the label values, from the full read. Missing labels are left to that read too.
    """
    if problems.collect:
        return
    hw = header_size(image_path, "image")
    for path in label_paths:
        if path.is_file():
            label_hw = header_size(path, "label PNG")
            if label_hw != hw:
                (h, w), (ih, iw) = label_hw, hw
                raise DatasetError(path, f"size {w}x{h} differs from its image {image_path} ({iw}x{ih})")


def _open(path: Path, kind: str) -> Image.Image:
    img = _open_header(path, kind)
    try:
        img.load()  # decode now, so truncated or corrupt data fails here and not deep inside a batch
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(path, f"{kind} is unreadable or corrupt ({err})") from None
    return img


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB. Returns (H, W, 3) uint8; raises :class:`DatasetError` naming the file."""
    img = _open(Path(path), "image")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only arrays)


def read_label_png(path: str | os.PathLike, channel: int | None = None) -> np.ndarray:
    """Read a label PNG as indices. Returns (H, W) int64.

    Args:
        path: the PNG. Palette (``P``), grey (``L``), 16-bit (``I;16``/``I``) and 3-channel files are accepted.
        channel: for 3-channel files, the channel holding the label (MHP v2.0: 0). With ``None`` a 3-channel file
            is accepted only if its channels are equal (a grey image saved as RGB); a real colour image is an error,
            because its colours are not label values.
    """
    path = Path(path)
    img = _open(path, "label PNG")
    if img.mode == "P":
        # The palette maps indices to colours for display only; the indices are the labels.
        array = np.asarray(img)
    elif img.mode in ("L", "I", "I;16", "I;16B", "I;16L", "1"):
        array = np.asarray(img)
    elif img.mode in ("RGB", "RGBA", "LA"):
        rgb = np.asarray(img)
        if img.mode == "LA":
            array = rgb[..., 0]
        elif channel is not None:
            array = rgb[..., channel]
        elif (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all():
            array = rgb[..., 0]
        else:
            raise DatasetError(path, f"is a colour ({img.mode}) image, not a label map: its channels differ, so "
                               "its colours are not label values (is this a colour visualisation?)")
    else:
        raise DatasetError(path, f"has PIL mode {img.mode!r}, which is not a label map")
    return array.astype(np.int64)


def check_same_size(label: np.ndarray, image_hw: tuple[int, int], path: Path, image_path: Path) -> None:
    """Raise :class:`DatasetError` on ``path`` if ``label``'s (H, W) differs from its image's."""
    if tuple(label.shape[:2]) != tuple(image_hw):
        (h, w), (ih, iw) = label.shape[:2], image_hw
        raise DatasetError(path, f"size {w}x{h} differs from its image {image_path} ({iw}x{ih})")


def check_label_values(label: np.ndarray, labels: LabelSet, path: Path, what: str = "label") -> None:
    """Raise :class:`DatasetError` on ``path`` listing the values of ``label`` outside ``0..C-1`` and 255."""
    bad = (label >= labels.num_classes) & (label != IGNORE_INDEX) | (label < 0)
    if bad.any():
        values, counts = np.unique(label[bad], return_counts=True)
        listed = ", ".join(f"{v} ({c} px)" for v, c in zip(values[:8].tolist(), counts[:8].tolist()))
        raise DatasetError(path, f"{what} values {listed} are outside the {labels.name} label set "
                           f"(0..{labels.num_classes - 1}, and 255 for ignore)")


def read_checked_label(path: Path, image_hw: tuple[int, int] | None, image_path: Path, problems: Problems,
                       labels: LabelSet | None = None, what: str = "label", channel: int | None = None
                       ) -> np.ndarray | None:
    """Read a label PNG and check it against its image: the size (when the image could be read) and, with
    ``labels``, the values. Each problem goes to ``problems``, in that order.

    Returns the (H, W) map, or ``None`` when it could not be read or its size differs from the image's (its values
    are still checked then, so a collecting ``problems`` gets both).
    """
    label = problems.attempt(read_label_png, path, channel)
    if label is None:
        return None
    size_ok = image_hw is None or tuple(label.shape[:2]) == tuple(image_hw)
    if not size_ok:
        problems.attempt(check_same_size, label, image_hw, path, image_path)
    if labels is not None:
        problems.attempt(check_label_values, label, labels, path, what)
    return label if size_ok else None


# ------------------------------------------------------------------------------------------ derived fields


def boxes_from_instances(instances: np.ndarray, num_persons: int) -> np.ndarray:
    """Tight xyxy boxes of persons ``1..num_persons`` of an (H, W) id map. Returns (N, 4) float32.

    A person with no pixels gets an all-zero box. Vectorised: one ``bincount`` per axis gives, for every person,
    which rows and which columns it occupies.
    """
    height, width = instances.shape
    boxes = np.zeros((num_persons, 4), dtype=np.float32)
    if num_persons == 0:
        return boxes
    ids = instances.astype(np.int64).ravel()
    keep = (ids > 0) & (ids <= num_persons)
    ids = ids[keep] - 1
    flat = np.flatnonzero(keep)
    rows, cols = flat // width, flat % width
    in_col = np.bincount(ids * width + cols, minlength=num_persons * width).reshape(num_persons, width) > 0
    in_row = np.bincount(ids * height + rows, minlength=num_persons * height).reshape(num_persons, height) > 0
    present = in_col.any(axis=1)
    boxes[:, 0] = in_col.argmax(axis=1)
    boxes[:, 2] = width - in_col[:, ::-1].argmax(axis=1)
    boxes[:, 1] = in_row.argmax(axis=1)
    boxes[:, 3] = height - in_row[:, ::-1].argmax(axis=1)
    boxes[~present] = 0
    return boxes


def compact_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the nonzero values of an id map to ``1..N`` in increasing order, 0 staying 0.

    Returns ``(compact, original)`` with ``original[k - 1]`` the file's id of person ``k``. Datasets whose person
    ids can have gaps (a person id with no pixel) are compacted so that every contract person has pixels and a
    non-degenerate box; ``original`` goes into ``meta['person_ids']`` so the file's numbering is not lost.
    """
    present = np.flatnonzero(np.bincount(ids.ravel(), minlength=1))
    original = present[present > 0]
    lut = np.zeros(int(ids.max(initial=0)) + 1, dtype=np.int64)
    lut[original] = np.arange(1, len(original) + 1)
    return lut[ids], original.astype(np.int64)


def make_sample(image: np.ndarray, semantic: np.ndarray, instances: np.ndarray, boxes: np.ndarray,
                keypoints: np.ndarray, meta: dict) -> dict:
    """Assemble a data-contract sample from numpy arrays (image (H, W, 3) uint8, maps (H, W), boxes (N, 4),
    keypoints (N, K, 3))."""
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0),
        "semantic": torch.from_numpy(np.ascontiguousarray(semantic, dtype=np.int64)),
        "instances": torch.from_numpy(np.ascontiguousarray(instances, dtype=np.int64)),
        "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)).reshape(-1, 4),
        "keypoints": torch.from_numpy(np.ascontiguousarray(keypoints, dtype=np.float32)),
        "meta": meta,
    }


# ------------------------------------------------------------------------------------------------ writing


def safe_stem(sample: dict, index: int) -> str:
    """The file stem a writer uses for ``sample``: its ``meta['id']`` if that is a plain file name."""
    stem = str(sample.get("meta", {}).get("id", f"{index:07d}"))
    if not stem or any(c in stem for c in "/\\:") or stem.startswith("."):
        raise ValueError(f"sample {index}: meta['id'] {stem!r} cannot be used as a file name")
    return stem


def write_image(image: torch.Tensor | np.ndarray, path: Path, quality: int = 95) -> None:
    """Write a (3, H, W) [0, 1] tensor or (H, W, 3) uint8 array; the format follows the suffix (JPEG for .jpg)."""
    if isinstance(image, torch.Tensor):
        image = (image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image, dtype=np.uint8), "RGB").save(path, quality=quality)


def write_label_png(label: torch.Tensor | np.ndarray, path: Path) -> None:
    """Write an (H, W) label map with values 0..255 as an 8-bit single-channel PNG."""
    array = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"{path}: label values {array.min()}..{array.max()} do not fit an 8-bit PNG")
    array = array.astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, "L").save(path)


def synth_segments(dataset, index: int) -> np.ndarray:
    """The body-segment map (H, W) of SynthCrowd image ``index`` (segment ids of
    :data:`hparse.data.synth_render.SEGMENTS` on person pixels, 0 elsewhere).

    SynthCrowd's labels are CIHP's, whose arms and legs are single parts; the segment map says which piece of the
    body drew each pixel (upper arm, forearm, thigh, ...), which is what the PASCAL-Person-Part and DensePose part
    sets need. The scene is re-rasterised, so the map matches ``dataset[index]`` pixel for pixel.
    """
    from .synth_render import decode, rasterize

    slot, segment, _ = decode(rasterize(dataset.scene(index)).code)
    return np.where(slot > 0, segment, 0).astype(np.int64)


def relabel_by_segment(sample: dict, segments: np.ndarray, segment_to_label: dict[str, str], labels: LabelSet,
                       keypoints: bool = True) -> dict:
    """A SynthCrowd sample with its part labels replaced by ``labels``' parts, chosen by body segment.

    ``segment_to_label`` maps segment names (:data:`hparse.data.synth_render.SEGMENTS`) to part names of
    ``labels``; person pixels of an unlisted segment become background, 255 stays 255. ``keypoints=False`` drops
    the keypoints (K = 0) for label sets whose keypoints SynthCrowd does not draw.
    """
    from .synth_render import SEGMENTS

    lut = np.zeros(max(SEGMENTS.values()) + 1, dtype=np.int64)
    for segment, part in segment_to_label.items():
        lut[SEGMENTS[segment]] = labels.index(part)
    semantic = sample["semantic"].numpy()
    relabelled = np.where((semantic > 0) & (sample["instances"].numpy() > 0), lut[segments], 0)
    relabelled = np.where(semantic == IGNORE_INDEX, IGNORE_INDEX, relabelled)
    out = {**sample, "semantic": torch.from_numpy(relabelled.astype(np.int64)),
           "meta": {**sample["meta"], "relabelled_to": labels.name}}
    if not keypoints:
        out["keypoints"] = torch.zeros((len(sample["boxes"]), 0, 3), dtype=torch.float32)
    return out


# -------------------------------------------------------------------------------------------- base class


class ParsingDataset(torch.utils.data.Dataset, ABC):
    """Common behaviour of the real-dataset loaders: indexing, the optional transform, and per-item checks.

    Subclasses set ``name``, ``labels``, ``root``, ``split`` and ``ids`` and implement
    ``load(index, thorough, problems)``, which returns a data-contract sample and sends every problem it finds to
    ``problems`` (a :class:`Problems`; by default one that raises the first). ``thorough=True`` adds the checks that
    cost an extra file read (for instance CIHP's ``Instance_ids``); ``hparse data verify`` uses it.
    """

    name: str = ""
    labels: LabelSet
    root: Path
    split: str
    ids: list[str]
    transform: Callable[[dict], dict] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name} {self.split} has {len(self)} images; index {index} is out of range")
        sample = self.load(index % len(self), thorough=False)
        return self.transform(sample) if self.transform is not None else sample

    @abstractmethod
    def load(self, index: int, thorough: bool = False, problems: Problems | None = None) -> dict | None:
        """Image ``index`` as a data-contract sample (no transform).

        With ``problems=None`` the first problem raises a :class:`DatasetError` naming the file. With a collecting
        :class:`Problems`, every problem found is added to it, the checks go on with the image's other files, and
        the result is ``None`` when any was found.
        """

    def check(self, index: int) -> list[str]:
        """Every problem found in image ``index`` (an empty list when it loads and passes the data contract)."""
        where = f"{self.name} {self.split} image {self.ids[index]!r}"
        problems = Problems(collect=True)
        try:
            sample = self.load(index, thorough=True, problems=problems)
        except DatasetError as err:
            return problems.messages() + [str(err)]
        except Exception as err:  # a damaged file can fail in ways no check foresaw; report it, keep scanning
            return problems.messages() + [f"{where}: unexpected {type(err).__name__} while loading: {err}"]
        if problems or sample is None:
            return problems.messages() or [f"{where}: could not be loaded"]
        try:
            validate_sample(sample, self.labels, where=where)
        except ContractError as err:
            return [str(err)]
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, images={len(self)})"


def first_missing(paths: Sequence[Path], what: str) -> None:
    """Raise one :class:`DatasetError` naming the first missing file and counting the others."""
    if paths:
        more = f" (and {len(paths) - 1} more listed files are missing; run `hparse data verify` for all)" \
            if len(paths) > 1 else ""
        raise DatasetError(paths[0], f"{what} is missing{more}")
