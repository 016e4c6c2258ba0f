"""VNC III (Gerhard et al.): ``stack1/raw/NN.tif`` and ``stack1/mitochondria/NN.png``, paired by file stem; split
``train``. Licence CC BY-NC-SA 3.0."""

from __future__ import annotations

from pathlib import Path

from mito_monai.datasets.download import DatasetSource, RemoteFile
from mito_monai.datasets.layout import DatasetLayout, SplitFiles, name_list, require_folder, require_root
from mito_monai.io.errors import DataError
from mito_monai.io.image_folder import list_image_files

__all__ = ["VNC3Layout", "SOURCE"]

#: Where the dataset comes from: address, licence, citation, the layout it unpacks into.
SOURCE = DatasetSource(
    name="vnc3",
    layout="vnc3",
    files=(
        RemoteFile(
            url="https://github.com/unidesigner/groundtruth-drosophila-vnc/archive/refs/heads/master.zip",
            filename="groundtruth-drosophila-vnc-master.zip",
            extract=True,
            strip_components=1,
        ),
    ),
    homepage="https://github.com/unidesigner/groundtruth-drosophila-vnc",
    license="CC BY-NC-SA 3.0",
    citation="Gerhard et al., Segmented anisotropic ssTEM dataset of neural tissue, figshare, "
    "doi:10.6084/m9.figshare.856713",
)


class VNC3Layout(DatasetLayout):
    name = "vnc3"
    expected = "stack1/raw/NN.tif slices with stack1/mitochondria/NN.png labels"
    pixel_size = 4.6  # nm per pixel in-plane (ssTEM, 4.6 x 4.6 nm, 45-50 nm sections)

    def list_splits(self, root: Path) -> list[str]:
        require_root(root, self)
        require_folder(root / "stack1" / "raw", "the raw slices NN.tif of the vnc3 layout")
        require_folder(root / "stack1" / "mitochondria", "the mitochondria masks NN.png of the vnc3 layout")
        return ["train"]

    def split_files(self, root: Path, split: str) -> SplitFiles:
        self.check_split(root, split)
        raw, mito = root / "stack1" / "raw", root / "stack1" / "mitochondria"
        images, labels = list_image_files(raw), list_image_files(mito)
        by_stem = {p.stem: p for p in labels}
        image_stems = {p.stem for p in images}
        lonely_images = [p for p in images if p.stem not in by_stem]
        lonely_labels = [p for p in labels if p.stem not in image_stems]
        if lonely_images or lonely_labels:
            parts = []
            if lonely_images:
                parts.append(f"images without a label in {mito}: {name_list(lonely_images)}")
            if lonely_labels:
                parts.append(f"labels without an image in {raw}: {name_list(lonely_labels)}")
            raise DataError(f"{root}: image and label slices must pair up by name; " + "; ".join(parts))
        return SplitFiles(
            self.name,
            split,
            raw,
            mito,
            image_files=tuple(images),
            label_files=tuple(by_stem[p.stem] for p in images),
        )
