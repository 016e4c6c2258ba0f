"""Dataset layouts: where the image and label volumes of each split of a dataset live on disk.

A layout is named (``vnc3``, ``lucchi``, ``lucchi_pp``, ``mitoem``, ``folder``; one module each in this package,
with the dataset's download source) and knows, for a dataset root folder, which splits exist and which files make
each split. Validation happens when the files of a split are looked up: anything missing or unpaired is reported
as a :class:`~mito_monai.io.errors.DataError` that names it. This module holds what every layout shares: the
:class:`SplitFiles` record, the :class:`DatasetLayout` base class and its checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mito_monai.io.errors import DataError

__all__ = ["SplitFiles", "DatasetLayout", "require_root", "require_folder", "require_file", "name_list"]


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


def require_root(root: Path, layout: DatasetLayout) -> None:
    """DataError unless ``root`` is an existing folder (the message names the layout and what it expects)."""
    if not root.exists():
        raise DataError(f"dataset folder {root} does not exist; expected the {layout.name} layout ({layout.expected})")
    if not root.is_dir():
        raise DataError(f"{root} is a file; expected a dataset folder in the {layout.name} layout ({layout.expected})")


def require_folder(path: Path, what: str) -> None:
    """DataError unless ``path`` is a folder; ``what`` says what it should hold."""
    if not path.is_dir():
        found = "a file" if path.exists() else "nothing"
        raise DataError(f"{path}: expected a folder with {what}, found {found}")


def require_file(path: Path, what: str) -> None:
    """DataError unless ``path`` is a file; ``what`` says what it should be."""
    if not path.is_file():
        found = "a folder" if path.exists() else "nothing"
        raise DataError(f"{path}: expected {what}, found {found}")


def name_list(paths, limit: int = 8) -> str:
    """The names of ``paths`` (or numbers), at most ``limit`` of them, for a message."""
    names = [p.name if isinstance(p, Path) else str(p) for p in paths]
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


class DatasetLayout:
    """Base class of a dataset layout: subclasses list splits and locate/validate their files."""

    name: str = ""
    #: one-line description of the expected files, used in error messages.
    expected: str = ""
    #: the dataset's in-plane pixel size in nm, when the layout is of one known dataset (None: unknown, e.g.
    #: ``folder``); what ``auto`` pixel sizes read (:func:`~mito_monai.datasets.pixel_size_option`).
    pixel_size: float | None = None

    def list_splits(self, root: Path) -> list[str]:
        raise NotImplementedError

    def split_files(self, root: Path, split: str) -> SplitFiles:
        raise NotImplementedError

    def check_split(self, root: Path, split: str) -> None:
        """DataError unless ``split`` is one of the splits at ``root``."""
        splits = self.list_splits(root)
        if split not in splits:
            raise DataError(
                f"{root}: unknown split {split!r} for layout {self.name}; available splits: {', '.join(splits)}"
            )
