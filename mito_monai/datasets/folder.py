"""The generic ``folder`` layout: ``images`` and optional ``labels``, each a folder of 2D slices or one volume file
(``images.tif``, ``images.h5``, ``images.nii.gz``, a zarr / OME-Zarr store ``images.zarr`` or ``images.ome.zarr``...
or a folder holding a single volume file or store), either directly in the root (one split, ``all``) or in split
sub-folders (``root/<split>/images``, ``root/<split>/labels``). No download source."""

from __future__ import annotations

import os
from pathlib import Path

from mito_monai.datasets.layout import DatasetLayout, SplitFiles, name_list, require_root
from mito_monai.io.errors import DataError
from mito_monai.io.paths import VOLUME_EXTENSIONS, file_suffix, is_ignored_name, natural_sort_key
from mito_monai.io.zarr_store import is_zarr_path

__all__ = ["FolderLayout"]

class FolderLayout(DatasetLayout):
    name = "folder"
    expected = "root/images (+ root/labels), or root/<split>/images (+ labels): slice folders or volume files"

    @staticmethod
    def _is_volume(path: Path, part: str | None = None) -> bool:
        """A volume file or a zarr store (named ``part`` + suffix when ``part`` is given)."""
        name = path.name.lower()
        if path.is_dir() and is_zarr_path(path):
            stem = name.removesuffix(".zarr").removesuffix(".ome")
        elif path.is_file() and file_suffix(path) in VOLUME_EXTENSIONS:
            stem = path.name[: len(path.name) - len(file_suffix(path))]
        else:
            return False
        return part is None or stem == part

    @classmethod
    def _find_part(cls, base: Path, part: str) -> Path | None:
        folder = base / part
        if folder.is_dir() and not is_zarr_path(folder):
            entries = [e for e in sorted(os.listdir(folder)) if not is_ignored_name(e)]
            if len(entries) == 1 and cls._is_volume(folder / entries[0]):
                return folder / entries[0]
            return folder
        if folder.is_dir():  # a zarr store named images/
            return folder
        candidates = [p for p in (base.iterdir() if base.is_dir() else []) if cls._is_volume(p, part)]
        if len(candidates) > 1:
            raise DataError(f"{base}: several '{part}' volumes ({name_list(candidates)}); keep only one")
        return candidates[0] if candidates else None

    def list_splits(self, root: Path) -> list[str]:
        require_root(root, self)
        top = self._find_part(root, "images")
        subs = sorted(
            (
                d.name
                for d in root.iterdir()
                if d.is_dir() and not is_ignored_name(d.name) and d.name not in ("images", "labels") and not is_zarr_path(d)
            ),
            key=natural_sort_key,
        )
        split_dirs = [s for s in subs if self._find_part(root / s, "images") is not None]
        if top is not None and split_dirs:
            raise DataError(
                f"{root}: has both 'images' and split sub-folders with images ({name_list(split_dirs)}); "
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
        self.check_split(root, split)
        base = root if split == "all" else root / split
        image = self._find_part(base, "images")
        label = self._find_part(base, "labels")
        return SplitFiles(self.name, split, image, label)  # type: ignore[arg-type]
