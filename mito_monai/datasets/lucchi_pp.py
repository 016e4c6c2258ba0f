"""Lucchi++ (Casser et al.): ``Train_In``/``Train_Out`` and ``Test_In``/``Test_Out`` slice folders (``mask0000.png``
raw, ``0.png`` labels), paired in natural-sort order; splits ``train`` and ``test``."""

from __future__ import annotations

from pathlib import Path

from mito_monai.datasets.download import DatasetSource, RemoteFile
from mito_monai.datasets.layout import DatasetLayout, SplitFiles, require_folder, require_root
from mito_monai.io.errors import DataError
from mito_monai.io.image_folder import list_image_files

__all__ = ["LucchiPPLayout", "SOURCE"]

#: Where the dataset comes from: address, licence, citation, the layout it unpacks into.
SOURCE = DatasetSource(
    name="lucchi_pp",
    layout="lucchi_pp",
    files=(
        RemoteFile(
            url="http://www.casser.io/files/lucchi_pp.zip",
            filename="lucchi_pp.zip",
            extract=True,
            strip_components=None,
        ),
    ),
    homepage="https://casser.io/connectomics/",
    license="see the dataset page",
    citation="Casser et al., Fast mitochondria detection for connectomics, MIDL 2020 (arXiv:1812.06024)",
)


class LucchiPPLayout(DatasetLayout):
    name = "lucchi_pp"
    expected = "Train_In/Train_Out and Test_In/Test_Out slice folders"
    pixel_size = 5.0  # nm per pixel in-plane (the Lucchi FIB-SEM volumes, about 5 x 5 x 5 nm)
    _FOLDERS = {"train": ("Train_In", "Train_Out"), "test": ("Test_In", "Test_Out")}

    def list_splits(self, root: Path) -> list[str]:
        require_root(root, self)
        splits = [s for s, (img, _) in self._FOLDERS.items() if (root / img).is_dir()]
        if not splits:
            raise DataError(
                f"{root}: neither Train_In nor Test_In found; expected the lucchi_pp layout ({self.expected})"
            )
        return splits

    def split_files(self, root: Path, split: str) -> SplitFiles:
        self.check_split(root, split)
        img_name, lab_name = self._FOLDERS[split]
        img_dir, lab_dir = root / img_name, root / lab_name
        require_folder(lab_dir, f"the {split} label slices of the lucchi_pp layout")
        images, labels = list_image_files(img_dir), list_image_files(lab_dir)
        if len(images) != len(labels):
            raise DataError(
                f"{root}: {img_name} has {len(images)} slices but {lab_name} has {len(labels)}; "
                "raw and label slices are paired in sorted order, so the counts must be equal"
            )
        return SplitFiles(self.name, split, img_dir, lab_dir, image_files=tuple(images), label_files=tuple(labels))
