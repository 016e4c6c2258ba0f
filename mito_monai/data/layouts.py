"""Dataset layouts: where the image and label volumes of each split of a dataset live on disk.

A layout is named (``vnc3``, ``lucchi``, ``lucchi_pp``, ``mitoem``, ``folder``) and knows, for a
dataset root folder, which splits exist and which files make each split. Validation happens when
the files of a split are looked up (:func:`split_files`): anything missing or unpaired is reported
as a :class:`~mito_monai.data.errors.DataError` that names it.

Layouts (paths relative to the root given by the user):

``vnc3`` (VNC III, Gerhard et al.)
    ``stack1/raw/NN.tif`` and ``stack1/mitochondria/NN.png``, paired by file stem; split ``train``.
``lucchi`` (EPFL originals)
    ``training.tif``, ``training_groundtruth.tif``, ``testing.tif``, ``testing_groundtruth.tif``;
    splits ``train`` and ``test``.
``lucchi_pp`` (Lucchi++, Casser et al.)
    ``Train_In``/``Train_Out`` and ``Test_In``/``Test_Out`` slice folders (``mask0000.png`` raw,
    ``0.png`` labels), paired in natural-sort order; splits ``train`` and ``test``.
``mitoem`` (MitoEM, Wei et al.)
    ``MitoEM-R`` and/or ``MitoEM-H``, each with ``im/im0000.png``... (the full stack) and label
    folders ``mito-train-v2/seg0000.tif``... (slices 0-399) and ``mito-val-v2/seg0400.tif``...
    (slices 400-499), or the HDF5 files ``im_train.h5``, ``im_val.h5``, ``mito_train.h5``,
    ``mito_val.h5`` (dataset ``main``, else the first one); splits ``R-train``, ``R-val``,
    ``H-train``, ``H-val``. Images and labels are paired by the slice number in their names.
``folder`` (generic)
    ``images`` and optional ``labels``, each a folder of 2D slices or one volume file
    (``images.tif``, ``images.h5``, ``images.nii.gz``, a zarr / OME-Zarr store ``images.zarr`` or
    ``images.ome.zarr``... or a folder holding a single volume file or store), either directly in the
    root (one split, ``all``) or in split sub-folders (``root/<split>/images``, ``root/<split>/labels``).

Every split is opened through the one lazy volume API, :func:`mito_monai.data.open_volume`
(:func:`open_split`), so a zarr / OME-Zarr stack trains, validates and is described exactly like the
same voxels in a TIFF.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mito_monai.data.errors import DataError
from mito_monai.data.io import (
    VOLUME_EXTENSIONS,
    _is_ignored,
    _suffix,
    list_h5_datasets,
    list_image_files,
    natural_sort_key,
)
from mito_monai.data.volume import Volume, open_volume
from mito_monai.data.zarr_store import is_zarr_path

__all__ = [
    "SplitFiles",
    "DatasetLayout",
    "LAYOUTS",
    "MITOEM_SPLITS",
    "available_layouts",
    "get_layout",
    "list_splits",
    "split_files",
    "open_split",
    "load_split",
    "dataset_info",
]

PathLike = str | os.PathLike


@dataclass(frozen=True)
class SplitFiles:
    """The files of one split of a dataset.

    Attributes:
        layout: layout name.
        split: split name.
        image: image volume file or slice folder.
        label: label volume file or slice folder, None when the split has no labels.
        image_key: HDF5 dataset of the image, when ``image`` is HDF5.
        label_key: HDF5 dataset of the label, when ``label`` is HDF5.
        z_range: ``(start, stop)`` slice indices of the split in the dataset's full stack, when the
            split is a range of a larger stack (MitoEM); informational.
        image_files: the image slices in Z order, when the layout selects or pairs slice files
            (otherwise the whole of ``image`` is read).
        label_files: the label slices in the same Z order as ``image_files``.
    """

    layout: str
    split: str
    image: Path
    label: Path | None
    image_key: str | None = None
    label_key: str | None = None
    z_range: tuple[int, int] | None = None
    image_files: tuple[Path, ...] | None = None
    label_files: tuple[Path, ...] | None = None

    def describe(self, part: str) -> str:
        """``"path"`` or ``"path:key"`` of the image (``part="image"``) or label."""
        path, key = (self.image, self.image_key) if part == "image" else (self.label, self.label_key)
        return f"{path}:{key}" if key else str(path)


def _require_root(root: Path, layout: DatasetLayout) -> None:
    if not root.exists():
        raise DataError(f"dataset folder {root} does not exist; expected the {layout.name} layout ({layout.expected})")
    if not root.is_dir():
        raise DataError(f"{root} is a file; expected a dataset folder in the {layout.name} layout ({layout.expected})")


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        found = "a file" if path.exists() else "nothing"
        raise DataError(f"{path}: expected a folder with {what}, found {found}")


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        found = "a folder" if path.exists() else "nothing"
        raise DataError(f"{path}: expected {what}, found {found}")


def _names(paths, limit: int = 8) -> str:
    names = [p.name if isinstance(p, Path) else str(p) for p in paths]
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


class DatasetLayout:
    """Base class of a dataset layout: subclasses list splits and locate/validate their files."""

    name: str = ""
    #: one-line description of the expected files, used in error messages.
    expected: str = ""

    def list_splits(self, root: Path) -> list[str]:
        raise NotImplementedError

    def split_files(self, root: Path, split: str) -> SplitFiles:
        raise NotImplementedError

    def _check_split(self, root: Path, split: str) -> None:
        splits = self.list_splits(root)
        if split not in splits:
            raise DataError(
                f"{root}: unknown split {split!r} for layout {self.name}; available splits: {', '.join(splits)}"
            )


class VNC3Layout(DatasetLayout):
    name = "vnc3"
    expected = "stack1/raw/NN.tif slices with stack1/mitochondria/NN.png labels"

    def list_splits(self, root: Path) -> list[str]:
        _require_root(root, self)
        _require_dir(root / "stack1" / "raw", "the raw slices NN.tif of the vnc3 layout")
        _require_dir(root / "stack1" / "mitochondria", "the mitochondria masks NN.png of the vnc3 layout")
        return ["train"]

    def split_files(self, root: Path, split: str) -> SplitFiles:
        self._check_split(root, split)
        raw, mito = root / "stack1" / "raw", root / "stack1" / "mitochondria"
        images, labels = list_image_files(raw), list_image_files(mito)
        by_stem = {p.stem: p for p in labels}
        image_stems = {p.stem for p in images}
        lonely_images = [p for p in images if p.stem not in by_stem]
        lonely_labels = [p for p in labels if p.stem not in image_stems]
        if lonely_images or lonely_labels:
            parts = []
            if lonely_images:
                parts.append(f"images without a label in {mito}: {_names(lonely_images)}")
            if lonely_labels:
                parts.append(f"labels without an image in {raw}: {_names(lonely_labels)}")
            raise DataError(f"{root}: image and label slices must pair up by name; " + "; ".join(parts))
        return SplitFiles(
            self.name,
            split,
            raw,
            mito,
            image_files=tuple(images),
            label_files=tuple(by_stem[p.stem] for p in images),
        )


class LucchiLayout(DatasetLayout):
    name = "lucchi"
    expected = "training.tif, training_groundtruth.tif, testing.tif, testing_groundtruth.tif"
    _FILES = {"train": ("training.tif", "training_groundtruth.tif"), "test": ("testing.tif", "testing_groundtruth.tif")}

    def list_splits(self, root: Path) -> list[str]:
        _require_root(root, self)
        splits = [s for s, (img, _) in self._FILES.items() if (root / img).exists()]
        if not splits:
            raise DataError(
                f"{root}: neither training.tif nor testing.tif found; expected the lucchi layout ({self.expected})"
            )
        return splits

    def split_files(self, root: Path, split: str) -> SplitFiles:
        self._check_split(root, split)
        img, lab = (root / n for n in self._FILES[split])
        _require_file(img, f"the {split} image stack of the lucchi layout")
        _require_file(lab, f"the {split} ground-truth stack of the lucchi layout")
        return SplitFiles(self.name, split, img, lab)


class LucchiPPLayout(DatasetLayout):
    name = "lucchi_pp"
    expected = "Train_In/Train_Out and Test_In/Test_Out slice folders"
    _FOLDERS = {"train": ("Train_In", "Train_Out"), "test": ("Test_In", "Test_Out")}

    def list_splits(self, root: Path) -> list[str]:
        _require_root(root, self)
        splits = [s for s, (img, _) in self._FOLDERS.items() if (root / img).is_dir()]
        if not splits:
            raise DataError(
                f"{root}: neither Train_In nor Test_In found; expected the lucchi_pp layout ({self.expected})"
            )
        return splits

    def split_files(self, root: Path, split: str) -> SplitFiles:
        self._check_split(root, split)
        img_name, lab_name = self._FOLDERS[split]
        img_dir, lab_dir = root / img_name, root / lab_name
        _require_dir(lab_dir, f"the {split} label slices of the lucchi_pp layout")
        images, labels = list_image_files(img_dir), list_image_files(lab_dir)
        if len(images) != len(labels):
            raise DataError(
                f"{root}: {img_name} has {len(images)} slices but {lab_name} has {len(labels)}; "
                "raw and label slices are paired in sorted order, so the counts must be equal"
            )
        return SplitFiles(self.name, split, img_dir, lab_dir, image_files=tuple(images), label_files=tuple(labels))


#: MitoEM splits: name -> (first slice, stop slice, label folder, image HDF5, label HDF5).
MITOEM_SPLITS: dict[str, tuple[int, int, str, str, str]] = {
    "train": (0, 400, "mito-train-v2", "im_train.h5", "mito_train.h5"),
    "val": (400, 500, "mito-val-v2", "im_val.h5", "mito_val.h5"),
}
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def _slice_number(path: Path) -> int:
    stem = path.name[: len(path.name) - len(_suffix(path))]
    match = _LAST_NUMBER.search(stem)
    if match is None:
        raise DataError(f"{path}: no slice number in the file name; expected names like im0000.png / seg0000.tif")
    return int(match.group(1))


def _numbered(files: list[Path]) -> dict[int, Path]:
    out: dict[int, Path] = {}
    for f in files:
        n = _slice_number(f)
        if n in out:
            raise DataError(f"{f}: slice number {n} also used by {out[n].name}; expected one file per slice")
        out[n] = f
    return out


def _h5_key(path: Path) -> str:
    names = list_h5_datasets(path)
    if not names:
        raise DataError(f"{path}: HDF5 file holds no dataset; expected a (Z, Y, X) dataset named 'main'")
    return "main" if "main" in names else names[0]


class MitoEMLayout(DatasetLayout):
    name = "mitoem"
    expected = "MitoEM-R and/or MitoEM-H with im/ + mito-train-v2/ + mito-val-v2/, or im_train.h5/mito_train.h5..."
    _VARIANTS = ("R", "H")

    def _available(self, vdir: Path, part: str) -> bool:
        _, _, lab_folder, img_h5, lab_h5 = MITOEM_SPLITS[part]
        return (vdir / img_h5).is_file() or ((vdir / "im").is_dir() and (vdir / lab_folder).is_dir())

    def list_splits(self, root: Path) -> list[str]:
        _require_root(root, self)
        variants = [v for v in self._VARIANTS if (root / f"MitoEM-{v}").is_dir()]
        if not variants:
            raise DataError(
                f"{root}: neither MitoEM-R nor MitoEM-H found; expected the mitoem layout ({self.expected})"
            )
        splits = [
            f"{v}-{part}" for v in variants for part in MITOEM_SPLITS if self._available(root / f"MitoEM-{v}", part)
        ]
        if not splits:
            raise DataError(
                f"{root}: MitoEM-{'/'.join(variants)} holds neither im/ with mito-train-v2/ or mito-val-v2/ "
                "nor im_train.h5/im_val.h5; expected the mitoem layout"
            )
        return splits

    def split_files(self, root: Path, split: str) -> SplitFiles:
        self._check_split(root, split)
        variant, part = split.split("-", 1)
        vdir = root / f"MitoEM-{variant}"
        start, stop, lab_folder, img_h5, lab_h5 = MITOEM_SPLITS[part]
        if (vdir / img_h5).is_file():
            _require_file(vdir / lab_h5, f"the {split} labels matching {img_h5}")
            return SplitFiles(
                self.name,
                split,
                vdir / img_h5,
                vdir / lab_h5,
                image_key=_h5_key(vdir / img_h5),
                label_key=_h5_key(vdir / lab_h5),
                z_range=(start, stop),
            )
        images = _numbered(list_image_files(vdir / "im"))
        labels = _numbered(list_image_files(vdir / lab_folder))
        wanted = range(start, stop)
        missing_labels = [z for z in wanted if z not in labels]
        if missing_labels:
            raise DataError(
                f"{vdir / lab_folder}: labels of slices {_names(missing_labels)} are missing; "
                f"split {split} needs slices {start}-{stop - 1}"
            )
        extra = sorted(z for z in labels if z not in wanted)
        if extra:
            raise DataError(
                f"{vdir / lab_folder}: label slices {_names(extra)} are outside {start}-{stop - 1}, "
                f"the range of split {split}"
            )
        missing_images = [z for z in wanted if z not in images]
        if missing_images:
            raise DataError(
                f"{vdir / 'im'}: images of slices {_names(missing_images)} are missing; "
                f"they have labels in {lab_folder}"
            )
        return SplitFiles(
            self.name,
            split,
            vdir / "im",
            vdir / lab_folder,
            z_range=(start, stop),
            image_files=tuple(images[z] for z in wanted),
            label_files=tuple(labels[z] for z in wanted),
        )


class FolderLayout(DatasetLayout):
    name = "folder"
    expected = "root/images (+ root/labels), or root/<split>/images (+ labels): slice folders or volume files"

    @staticmethod
    def _is_volume(path: Path, part: str | None = None) -> bool:
        """A volume file or a zarr store (named ``part`` + suffix when ``part`` is given)."""
        name = path.name.lower()
        if path.is_dir() and is_zarr_path(path):
            stem = name.removesuffix(".zarr").removesuffix(".ome")
        elif path.is_file() and _suffix(path) in VOLUME_EXTENSIONS:
            stem = path.name[: len(path.name) - len(_suffix(path))]
        else:
            return False
        return part is None or stem == part

    @classmethod
    def _find_part(cls, base: Path, part: str) -> Path | None:
        folder = base / part
        if folder.is_dir() and not is_zarr_path(folder):
            entries = [e for e in sorted(os.listdir(folder)) if not _is_ignored(e)]
            if len(entries) == 1 and cls._is_volume(folder / entries[0]):
                return folder / entries[0]
            return folder
        if folder.is_dir():  # a zarr store named images/
            return folder
        candidates = [p for p in (base.iterdir() if base.is_dir() else []) if cls._is_volume(p, part)]
        if len(candidates) > 1:
            raise DataError(f"{base}: several '{part}' volumes ({_names(candidates)}); keep only one")
        return candidates[0] if candidates else None

    def list_splits(self, root: Path) -> list[str]:
        _require_root(root, self)
        top = self._find_part(root, "images")
        subs = sorted(
            (
                d.name
                for d in root.iterdir()
                if d.is_dir() and not _is_ignored(d.name) and d.name not in ("images", "labels") and not is_zarr_path(d)
            ),
            key=natural_sort_key,
        )
        split_dirs = [s for s in subs if self._find_part(root / s, "images") is not None]
        if top is not None and split_dirs:
            raise DataError(
                f"{root}: has both 'images' and split sub-folders with images ({_names(split_dirs)}); "
                "use one arrangement or the other"
            )
        if top is not None:
            return ["all"]
        if not split_dirs:
            raise DataError(
                f"{root}: no 'images' folder or file and no split sub-folder holding one; expected {self.expected}"
            )
        return split_dirs

    def split_files(self, root: Path, split: str) -> SplitFiles:
        self._check_split(root, split)
        base = root if split == "all" else root / split
        image = self._find_part(base, "images")
        label = self._find_part(base, "labels")
        return SplitFiles(self.name, split, image, label)  # type: ignore[arg-type]


#: Registry of layouts by name.
LAYOUTS: dict[str, DatasetLayout] = {
    layout.name: layout for layout in (VNC3Layout(), LucchiLayout(), LucchiPPLayout(), MitoEMLayout(), FolderLayout())
}


def available_layouts() -> list[str]:
    """Names of the registered layouts."""
    return sorted(LAYOUTS)


def get_layout(name: str) -> DatasetLayout:
    """The layout registered as ``name``; DataError listing the available names otherwise."""
    try:
        return LAYOUTS[name]
    except (KeyError, TypeError):
        raise DataError(
            f"unknown dataset layout {name!r}; available layouts: {', '.join(available_layouts())}"
        ) from None


def list_splits(name: str, root: PathLike) -> list[str]:
    """Splits of the dataset at ``root`` in layout ``name`` (validates that the layout's folders exist)."""
    return get_layout(name).list_splits(Path(root))


def split_files(name: str, root: PathLike, split: str) -> SplitFiles:
    """Locate and validate the files of ``split``; DataError naming what is missing or unpaired."""
    return get_layout(name).split_files(Path(root), split)


def _shape_mismatch(sf: SplitFiles, image_shape, label_shape) -> DataError:
    return DataError(
        f"image {sf.describe('image')} has shape {tuple(image_shape)} but label {sf.describe('label')} "
        f"has shape {tuple(label_shape)}; image and label must have the same (Z, Y, X) shape"
    )


def _open_part(sf: SplitFiles, part: str) -> Volume:
    files = sf.image_files if part == "image" else sf.label_files
    path, key = (sf.image, sf.image_key) if part == "image" else (sf.label, sf.label_key)
    return open_volume(files if files is not None else path, key, label=part == "label")


def open_split(name: str, root: PathLike, split: str, *, with_label: bool = True) -> tuple[Volume, Volume | None]:
    """Open a split lazily (:func:`mito_monai.data.open_volume`): nothing but headers or first slices is read.

    Returns:
        ``(image, label)`` volumes; the label reads as uint8 {0, 1}, and is None when ``with_label`` is
        False or the split has no labels. Close them (or use them as context managers) when done.

    Raises:
        DataError: as :func:`load_split`, except for unreadable voxels, which only reading finds.
    """
    sf = split_files(name, root, split)
    image = _open_part(sf, "image")
    label = None
    if with_label and sf.label is not None:
        try:
            label = _open_part(sf, "label")
        except BaseException:
            image.close()
            raise
        if label.shape != image.shape:
            image.close()
            label.close()
            raise _shape_mismatch(sf, image.shape, label.shape)
    return image, label


def load_split(
    name: str, root: PathLike, split: str, *, with_label: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load a split into memory (through :func:`open_split`).

    Returns:
        ``(image, label)``: image (Z, Y, X) in its native dtype; label (Z, Y, X) uint8 {0, 1}, or
        None when ``with_label`` is False or the split has no labels.

    Raises:
        DataError: unknown layout or split, missing/unpaired files, unreadable data, NaN/Inf voxels, or
            image and label shapes that differ (the message names both and their shapes).
    """
    image_volume, label_volume = open_split(name, root, split, with_label=with_label)
    with image_volume:
        image = image_volume.read(check_finite=True)
    if label_volume is None:
        return image, None
    with label_volume:
        return image, label_volume.read()


def _foreground_fraction(label: Volume) -> float:
    """Fraction of non-zero label voxels, read slab by slab (whole only where the format is read whole)."""
    total, step = 0, max(1, int(2**26 // max(1, label.shape[1] * label.shape[2])))
    for z in range(0, label.shape[0], step):
        total += int(np.count_nonzero(label.read((slice(z, z + step), slice(None), slice(None)))))
    return total / float(np.prod(label.shape))


def dataset_info(name: str, root: PathLike) -> dict:
    """Summary of every split: shape, dtype, label foreground fraction and paths.

    Returns:
        ``{split: {"image_shape": [Z, Y, X], "dtype": "uint8", "label_foreground_fraction": float or
        None, "image": str, "label": str or None}}``. Images are opened lazily (:func:`open_split`: headers
        or first slices); labels are read slab by slab to count the foreground.
    """
    out: dict[str, dict] = {}
    for split in list_splits(name, root):
        sf = split_files(name, root, split)
        image, label = open_split(name, root, split)
        with image:
            shape, dtype = image.shape, image.dtype
        fraction = None
        if label is not None:
            with label:
                fraction = _foreground_fraction(label)
        out[split] = {
            "image_shape": [int(s) for s in shape],
            "dtype": str(np.dtype(dtype)),
            "label_foreground_fraction": fraction,
            "image": sf.describe("image"),
            "label": sf.describe("label") if sf.label is not None else None,
        }
    return out
