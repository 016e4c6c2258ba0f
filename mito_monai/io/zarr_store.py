"""Zarr and OME-Zarr volumes: open a (Z, Y, X) array inside a store, create chunked OME-Zarr outputs.

Input paths that name a zarr store:

- ``vol.zarr`` holding one array (zarr v2 or v3);
- ``vol.zarr/raw``, a path inside the store to an array, or to a group that holds exactly one array;
- an OME-Zarr image (``img.ome.zarr``, or ``out.zarr/labels/mask``): level 0 of its ``multiscales``
  (NGFF 0.4 attributes or 0.5 ``ome`` attributes); its axes come from the metadata, singleton
  ``t``/``c`` axes are dropped, and its level-0 scale gives the voxel size.

Outputs are OME-Zarr images (NGFF 0.4, zarr v2, the version napari-ome-zarr and neuroglancer read most
widely) written through the ``zarr`` library and annotated with the ``ome-zarr`` library's metadata
writers, so that ``ome_zarr.reader.Reader`` reads them back. Blocks are written straight into the
arrays (:class:`ZarrBoxWriter`), by any process that can reach the store; writers that touch
different chunks never interfere.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mito_monai.io.errors import DataError

__all__ = [
    "ZARR_SUFFIXES",
    "ZarrVolumeInfo",
    "is_zarr_path",
    "split_zarr_path",
    "open_zarr_volume",
    "create_ome_zarr_image",
    "ZarrBoxWriter",
]

ZARR_SUFFIXES = (".zarr",)
_ZARR_MARKERS = (".zarray", ".zgroup", "zarr.json")
_SPATIAL = ("z", "y", "x")


def _is_store_root(path: Path) -> bool:
    return path.name.lower().endswith(ZARR_SUFFIXES) or (
        path.is_dir() and any((path / m).exists() for m in _ZARR_MARKERS)
    )


def split_zarr_path(path: str | os.PathLike, key: str | None = None) -> tuple[Path, str] | None:
    """``("a/vol.zarr/raw/0")`` -> ``(Path("a/vol.zarr"), "raw/0")``; None when no zarr store is named.

    The store is the first path component ending in ``.zarr`` (or a folder holding zarr metadata);
    ``key`` is appended to the inner path.
    """
    p = Path(os.fspath(path))
    parts = p.parts
    for i in range(len(parts)):
        root = Path(*parts[: i + 1])
        if _is_store_root(root):
            inner = "/".join(parts[i + 1 :])
            if key:
                inner = f"{inner}/{key.strip('/')}" if inner else key.strip("/")
            return root, inner
    return None


def is_zarr_path(path: str | os.PathLike) -> bool:
    """True when ``path`` names a zarr store or a node inside one."""
    return split_zarr_path(path) is not None


@dataclass
class ZarrVolumeInfo:
    """An opened zarr array seen as (Z, Y, X).

    Attributes:
        array: the zarr array.
        index: the leading index that selects (Z, Y, X) (singleton ``t``/``c`` axes set to 0).
        axes: the axis names found (e.g. ``"tczyx"``), or None when the array carries none.
        voxel_size: (z, y, x) physical size of a voxel from OME-Zarr metadata, else None.
        unit: the unit of ``voxel_size`` (e.g. ``"nanometer"``), else None.
        name: ``store/inner/path`` of the array, for messages.
    """

    array: object
    index: tuple
    axes: str | None
    voxel_size: tuple[float, float, float] | None
    unit: str | None
    name: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(self.array.shape[i]) for i, s in enumerate(self.index) if s == slice(None))  # type: ignore[return-value]


def _ome_attrs(attrs: dict) -> dict:
    return attrs.get("ome", attrs) if isinstance(attrs.get("ome"), dict) else attrs


def _axis_names(axes: Sequence) -> str:
    return "".join((a["name"] if isinstance(a, dict) else str(a)).lower()[:1] for a in axes)


def _zyx_index(shape: Sequence[int], axes: str | None, name: str) -> tuple:
    if axes is None:
        if len(shape) != 3:
            raise DataError(
                f"{name}: array of shape {tuple(shape)} ({len(shape)}D, no axis names stored); expected a 3D (Z, Y, X) array"
            )
        return (slice(None),) * 3
    if len(axes) != len(shape) or not all(a in axes for a in _SPATIAL):
        raise DataError(
            f"{name}: array of shape {tuple(shape)} with axes {axes!r}; expected the axes z, y and x (a (Z, Y, X) volume)"
        )
    index = []
    for a, n in zip(axes, shape):
        if a in _SPATIAL:
            index.append(slice(None))
        elif n == 1:
            index.append(0)
        else:
            raise DataError(
                f"{name}: array of shape {tuple(shape)} with axes {axes!r} has {n} entries along {a!r}; "
                "expected one channel and one time point (a (Z, Y, X) volume)"
            )
    if [a for a in axes if a in _SPATIAL] != list(_SPATIAL):
        raise DataError(f"{name}: axes {axes!r} are not in z, y, x order; expected a (Z, Y, X) volume")
    return tuple(index)


def _open_node(store: Path, inner: str):
    import zarr

    name = f"{store}/{inner}" if inner else str(store)
    if not store.exists():
        raise DataError(f"{store} does not exist; expected a zarr store")
    try:
        node = zarr.open(str(store), mode="r", path=inner or None)
    except FileNotFoundError as e:
        raise DataError(f"{name}: no zarr array or group at this path ({e})") from e
    except Exception as e:  # zarr raises many types for broken metadata
        raise DataError(f"{name}: cannot be opened as zarr ({type(e).__name__}: {e}); expected a zarr array or group") from e
    return node, name


def open_zarr_volume(path: str | os.PathLike, key: str | None = None) -> ZarrVolumeInfo:
    """Open the (Z, Y, X) array named by ``path`` (see the module docstring for the forms accepted).

    Raises:
        DataError: no store, a group without an array, an OME-Zarr group without ``multiscales``, or an
            array that is not (Z, Y, X) (the message names the axes found).
    """
    import zarr

    split = split_zarr_path(path, key)
    if split is None:
        raise DataError(f"{path}: not a zarr store (expected a path ending in .zarr)")
    store, inner = split
    node, name = _open_node(store, inner)
    voxel_size = unit = None
    axes = None
    if isinstance(node, zarr.Group):
        attrs = _ome_attrs(dict(node.attrs))
        if "multiscales" in attrs:
            try:
                ms = attrs["multiscales"][0]
                level0 = ms["datasets"][0]
                axes = _axis_names(ms["axes"]) if "axes" in ms else None
            except (KeyError, IndexError, TypeError) as e:
                raise DataError(f"{name}: malformed OME-Zarr multiscales metadata ({e!r}); expected datasets and axes") from e
            if axes is None:  # NGFF 0.1-0.3 have no axes: always 5D tczyx
                axes = "tczyx"
            scale = [t.get("scale") for t in level0.get("coordinateTransformations", []) if t.get("type") == "scale"]
            for t in ms.get("coordinateTransformations", []) or []:  # multiscale-level transform applies on top
                if t.get("type") == "scale" and scale:
                    scale = [[a * b for a, b in zip(scale[0], t["scale"])]]
            if scale and len(scale[0]) == len(axes):
                voxel_size = tuple(float(scale[0][axes.index(a)]) for a in _SPATIAL if a in axes)
                units = {(_axis_names([a]), a.get("unit")) for a in ms.get("axes", []) if isinstance(a, dict)}
                unit = next((u for n, u in units if n in _SPATIAL and u), None)
            inner = f"{inner}/{level0['path']}".strip("/")
            node, name = _open_node(store, inner)
            if not isinstance(node, zarr.Array):
                raise DataError(f"{name}: level 0 of the OME-Zarr multiscales is not an array")
        elif "ome" in dict(node.attrs) or any(k in attrs for k in ("omero", "image-label", "plate", "well")):
            raise DataError(f"{name}: OME-Zarr group without multiscales metadata; expected an OME-Zarr image")
        else:
            arrays = sorted(n for n, _ in node.arrays())
            if len(arrays) != 1:
                found = f"arrays {arrays}" if arrays else f"no array (groups: {sorted(n for n, _ in node.groups())})"
                raise DataError(
                    f"{name}: a zarr group holding {found}; expected an array, or a group with exactly one "
                    f"(name it as {name}/NAME)"
                )
            inner = f"{inner}/{arrays[0]}".strip("/")
            node, name = _open_node(store, inner)
    if axes is None:
        dims = getattr(node.metadata, "dimension_names", None) or node.attrs.get("_ARRAY_DIMENSIONS")
        axes = _axis_names(dims) if dims and all(dims) else None
    index = _zyx_index(node.shape, axes, name)
    return ZarrVolumeInfo(node, index, axes, voxel_size, unit, name)


def missing_chunks(info: ZarrVolumeInfo, box: Sequence[slice]) -> list[tuple[int, ...]]:
    """Chunk coordinates (of the stored objects: shards where the array is sharded) inside ``box``
    (a (z, y, x) box) whose files are missing from a local store. Empty for non-local stores."""
    arr = info.array
    root = getattr(arr.store, "root", None)
    if root is None:
        return []
    grid = arr.shards or arr.chunks
    full: list[slice] = []
    spatial = iter(box)
    for s in info.index:
        full.append(next(spatial) if s == slice(None) else slice(s, s + 1))
    ranges = [range(sl.start // g, (sl.stop - 1) // g + 1) for sl, g in zip(full, grid)]
    base = Path(root) / arr.path if arr.path else Path(root)
    out = []
    for coords in np.ndindex(*[len(r) for r in ranges]):
        c = tuple(r[i] for r, i in zip(ranges, coords))
        if not (base / arr.metadata.encode_chunk_key(c)).exists():
            out.append(c)
    return out


def _chunks_for(shape: Sequence[int], chunks: Sequence[int]) -> tuple[int, ...]:
    return tuple(max(1, min(int(c), int(s))) for c, s in zip(chunks, shape))


def create_ome_zarr_image(
    path: str | os.PathLike,
    name: str,
    shape: Sequence[int],
    dtype: np.dtype | str | type,
    chunks: Sequence[int],
    voxel_size: Sequence[float] | None = None,
    unit: str | None = None,
    label_of: str | os.PathLike | None = None,
):
    """Create an empty single-level OME-Zarr image (NGFF 0.4) and return its level-0 zarr array.

    Args:
        path: the image group (a store ``x.zarr`` or a path inside it); created, must not hold data.
        name: the image name in the metadata.
        shape: (Z, Y, X).
        dtype: voxel type.
        chunks: (z, y, x) chunk shape (clipped to ``shape``).
        voxel_size: physical (z, y, x) voxel size for the ``scale`` transform (default 1, 1, 1).
        unit: unit of ``voxel_size`` for the axes (e.g. ``"nanometer"``), or None.
        label_of: when given, the image is a label image listed under the ``labels`` group of this
            OME-Zarr image (``path`` must then be ``label_of/labels/<name>``).
    """
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_label_metadata, write_multiscales_metadata

    fmt = FormatV04()
    group = zarr.open_group(str(path), mode="a", zarr_format=2)
    array = group.create_array("0", shape=tuple(int(s) for s in shape), chunks=_chunks_for(shape, chunks), dtype=dtype, fill_value=0)
    axes = [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in _SPATIAL]
    scale = [float(v) for v in (voxel_size or (1.0, 1.0, 1.0))]
    datasets = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]
    write_multiscales_metadata(group, datasets, fmt=fmt, axes=axes, name=name)
    if label_of is not None:
        labels = zarr.open_group(str(Path(label_of) / "labels"), mode="a", zarr_format=2)
        write_label_metadata(labels, name, fmt=fmt)
        listed = list(labels.attrs.get("labels", []))
        labels.attrs["labels"] = listed + [name] if name not in listed else listed
    return array


class ZarrBoxWriter:
    """Write (z, y, x) boxes into an existing zarr array; picklable, opens the array on first use.

    Args:
        path: the array (``store.zarr/inner/path``).
        dtype: the array's voxel type; float values in [0, 1] are scaled to 0-255 for a uint8 array of
            probabilities when ``scale_probabilities``.
    """

    def __init__(self, path: str | os.PathLike, scale_probabilities: bool = False) -> None:
        self.path = str(path)
        self.scale_probabilities = scale_probabilities
        self._array = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "scale_probabilities": self.scale_probabilities, "_array": None}

    @property
    def array(self):
        if self._array is None:
            import zarr

            store, inner = split_zarr_path(self.path)  # type: ignore[misc]
            self._array = zarr.open_array(str(store), mode="r+", path=inner)
        return self._array

    def write(self, box: Sequence[slice], data: np.ndarray) -> None:
        """Store ``data`` (the box's shape) at ``box``."""
        if self.scale_probabilities:
            data = np.round(np.asarray(data, np.float32) * 255).astype(np.uint8)
        self.array[tuple(box)] = np.asarray(data).astype(self.array.dtype, copy=False)
