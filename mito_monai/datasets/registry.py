"""The datasets by name: their layouts (:data:`LAYOUTS`), their download sources (:data:`DATASETS`), the look-up of a
split's files, and :func:`download_dataset`, which unpacks a public dataset into its layout."""

from __future__ import annotations

import os
import shutil
import urllib.parse
import uuid
from pathlib import Path

from mito_monai.datasets import lucchi, lucchi_pp, mitoem, vnc3
from mito_monai.datasets.download import DatasetSource, download_file, extract_archive
from mito_monai.datasets.folder import FolderLayout
from mito_monai.datasets.layout import DatasetLayout, SplitFiles
from mito_monai.io.errors import DataError
from mito_monai.io.paths import PathLike

__all__ = [
    "LAYOUTS",
    "DATASETS",
    "available_layouts",
    "get_layout",
    "list_splits",
    "split_files",
    "download_dataset",
]

#: Registry of layouts by name.
LAYOUTS: dict[str, DatasetLayout] = {
    layout.name: layout
    for layout in (vnc3.VNC3Layout(), lucchi.LucchiLayout(), lucchi_pp.LucchiPPLayout(), mitoem.MitoEMLayout(), FolderLayout())
}

#: Public datasets by name (the layout each unpacks into is ``DATASETS[name].layout``).
DATASETS: dict[str, DatasetSource] = {module.SOURCE.name: module.SOURCE for module in (vnc3, lucchi, lucchi_pp, mitoem)}


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


def _validate(layout: str, root: Path) -> list[str]:
    splits = list_splits(layout, root)
    for split in splits:
        split_files(layout, root, split)
    return splits


def download_dataset(
    name: str,
    root: str | os.PathLike,
    *,
    base_url: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Download a public dataset and unpack it into its layout at ``root``.

    Files are downloaded into ``.<root>.download`` next to ``root`` (kept on failure, so a new call
    resumes), unpacked into a temporary folder, validated with the layout (every split's files must
    be found and paired), and only then moved into ``root``. An existing valid copy is returned
    without downloading.

    Args:
        name: a key of :data:`DATASETS` (``vnc3``, ``lucchi``, ``lucchi_pp``, ``mitoem``).
        root: dataset folder, e.g. ``data/lucchi_pp``.
        base_url: fetch every file as ``base_url/<filename>`` instead of its public address
            (a mirror, or a local server in tests).
        overwrite: when ``root`` holds something that is not a valid copy, replace the entries the
            dataset provides (other files in ``root`` are left alone).
        progress: print download progress to stderr.

    Returns:
        ``root`` as a Path.

    Raises:
        DataError: unknown name, a non-empty ``root`` that is not a valid copy (without
            ``overwrite``), a failed or corrupt download, or unpacked data that do not form the layout.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; available datasets: {', '.join(sorted(DATASETS))}")
    source = DATASETS[name]
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} is a file; expected a folder for the {name} dataset")
    if root.is_dir() and any(not e.startswith(".") for e in os.listdir(root)):
        try:
            _validate(source.layout, root)
            return root
        except DataError as e:
            if not overwrite:
                raise DataError(
                    f"{root} is not empty but is not a valid {name} dataset ({e}); "
                    "pass overwrite=True to replace its dataset entries, or choose another folder"
                ) from e
    root.parent.mkdir(parents=True, exist_ok=True)
    cache = root.parent / f".{root.name}.download"
    stage = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:10]}"
    try:
        for remote in source.files:
            url = remote.url if base_url is None else f"{base_url.rstrip('/')}/{urllib.parse.quote(remote.filename)}"
            local = download_file(url, cache / remote.filename, sha256=remote.sha256, progress=progress)
            target = stage / remote.dest if remote.dest else stage
            if remote.extract:
                extract_archive(local, target, strip_components=remote.strip_components)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(local, target / remote.filename)
        try:
            _validate(source.layout, stage)
        except DataError as e:
            raise DataError(
                f"the downloaded {name} files do not form the {source.layout} layout ({e}); "
                f"the downloads are kept in {cache}"
            ) from e
        if root.is_dir() and os.listdir(root):
            for entry in sorted(os.listdir(stage)):
                dst = root / entry
                if dst.is_dir() and not dst.is_symlink():
                    shutil.rmtree(dst)
                elif dst.exists() or dst.is_symlink():
                    dst.unlink()
                os.replace(stage / entry, dst)
            shutil.rmtree(stage)
        else:
            if root.is_dir():
                root.rmdir()
            os.replace(stage, root)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    return root
