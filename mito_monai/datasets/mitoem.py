"""MitoEM (Wei et al.): ``MitoEM-R`` and/or ``MitoEM-H``, each with ``im/im0000.png``... (the full stack) and label
folders ``mito-train-v2/seg0000.tif``... (slices 0-399) and ``mito-val-v2/seg0400.tif``... (slices 400-499), or the
HDF5 files ``im_train.h5``, ``im_val.h5``, ``mito_train.h5``, ``mito_val.h5`` (dataset ``main``, else the first
one); splits ``R-train``, ``R-val``, ``H-train``, ``H-val``. Images and labels are paired by the slice number in
their names."""

from __future__ import annotations

import re
from pathlib import Path

from mito_monai.datasets.download import DatasetSource, RemoteFile
from mito_monai.datasets.layout import DatasetLayout, SplitFiles, name_list, require_file, require_root
from mito_monai.io.errors import DataError
from mito_monai.io.hdf5 import list_h5_datasets
from mito_monai.io.image_folder import list_image_files
from mito_monai.io.paths import file_suffix

__all__ = ["MitoEMLayout", "MITOEM_SPLITS", "SOURCE"]

#: Where the dataset comes from: address, licence, citation, the layout it unpacks into.
SOURCE = DatasetSource(
    name="mitoem",
    layout="mitoem",
    files=(
        RemoteFile(
            url="https://huggingface.co/datasets/pytc/EM30/resolve/main/EM30-R-im.zip",
            filename="EM30-R-im.zip",
            extract=True,
            dest="MitoEM-R",
        ),
        RemoteFile(
            url="https://huggingface.co/datasets/pytc/MitoEM/resolve/main/EM30-R-mito-train-val-v2.zip",
            filename="EM30-R-mito-train-val-v2.zip",
            extract=True,
            dest="MitoEM-R",
        ),
        RemoteFile(
            url="https://www.dropbox.com/s/z41qtu4y735j95e/EM30-H-im.zip?dl=1",
            filename="EM30-H-im.zip",
            extract=True,
            dest="MitoEM-H",
        ),
        RemoteFile(
            url="https://huggingface.co/datasets/pytc/MitoEM/resolve/main/EM30-H-mito-train-val-v2.zip",
            filename="EM30-H-mito-train-val-v2.zip",
            extract=True,
            dest="MitoEM-H",
        ),
    ),
    homepage="https://mitoem.grand-challenge.org/",
    license="see the challenge page",
    citation="Wei et al., MitoEM dataset: large-scale 3D mitochondria instance segmentation from EM images, "
    "MICCAI 2020",
    note="tens of GB; the human images come from the original release because the Hugging Face copy "
    "is padded to 1040 slices and does not line up with the labels",
)


#: MitoEM splits: name -> (first slice, stop slice, label folder, image HDF5, label HDF5).
MITOEM_SPLITS: dict[str, tuple[int, int, str, str, str]] = {
    "train": (0, 400, "mito-train-v2", "im_train.h5", "mito_train.h5"),
    "val": (400, 500, "mito-val-v2", "im_val.h5", "mito_val.h5"),
}
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def _slice_number(path: Path) -> int:
    stem = path.name[: len(path.name) - len(file_suffix(path))]
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
    pixel_size = 8.0  # nm per pixel in-plane (MitoEM-R and -H: 8 x 8 nm, 30 nm sections)
    _VARIANTS = ("R", "H")

    def _available(self, vdir: Path, part: str) -> bool:
        _, _, lab_folder, img_h5, lab_h5 = MITOEM_SPLITS[part]
        return (vdir / img_h5).is_file() or ((vdir / "im").is_dir() and (vdir / lab_folder).is_dir())

    def list_splits(self, root: Path) -> list[str]:
        require_root(root, self)
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
        self.check_split(root, split)
        variant, part = split.split("-", 1)
        vdir = root / f"MitoEM-{variant}"
        start, stop, lab_folder, img_h5, lab_h5 = MITOEM_SPLITS[part]
        if (vdir / img_h5).is_file():
            require_file(vdir / lab_h5, f"the {split} labels matching {img_h5}")
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
                f"{vdir / lab_folder}: labels of slices {name_list(missing_labels)} are missing; "
                f"split {split} needs slices {start}-{stop - 1}"
            )
        extra = sorted(z for z in labels if z not in wanted)
        if extra:
            raise DataError(
                f"{vdir / lab_folder}: label slices {name_list(extra)} are outside {start}-{stop - 1}, "
                f"the range of split {split}"
            )
        missing_images = [z for z in wanted if z not in images]
        if missing_images:
            raise DataError(
                f"{vdir / 'im'}: images of slices {name_list(missing_images)} are missing; "
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
