"""Built-in synthetic EM demo data: two domains with a real domain gap.

:func:`make_demo_data` writes, deterministically for a seed:

- ``root/source``: an ssTEM-like stack (think VNC III) in the ``vnc3`` layout:
  ``stack1/raw/NN.tif`` and ``stack1/mitochondria/NN.png`` (one split, ``train``);
- ``root/target``: a FIB-SEM-like pair of stacks (think Lucchi++) in the ``lucchi_pp`` layout:
  ``Train_In/mask0000.png``, ``Train_Out/0.png``, ``Test_In``, ``Test_Out`` (splits ``train``,
  ``test``, two independent volumes of the same style).

Both are rendered the same way: a membrane-rich cellular background (the boundaries of a Voronoi
tessellation whose seeds drift slowly in z), mitochondria as elongated ellipses with a darker
interior, a double outer membrane and cristae stripes across the long axis, which grow, drift and
shrink smoothly over several slices, and distractor organelles that are not mitochondria (vesicles
with a dark rim, dark round blobs). The label is the union of the mitochondria.

The domain gap is real and measurable: the target has ~1.6x larger objects (smaller pixel size),
larger cells with thinner, fainter membranes, a different intensity mapping (darker mid-grey
background, compressed contrast, different gamma), stronger blur and noise, a coarser texture and
many more distractors (the source has a few vesicles and no dark blobs).

The files also reproduce quirks of the real datasets that loaders must handle: every fourth source
label is a 1-bit PNG with foreground 1 (the others 8-bit {0, 255}), and the target's test labels
are RGBA PNGs with R = G = B.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from mito_monai.io.errors import DataError
from mito_monai.io.writer import commit_folder

__all__ = [
    "DEMO_VERSION",
    "DEMO_LAYOUTS",
    "DEMO_MARKER",
    "DomainStyle",
    "SOURCE_STYLE",
    "TARGET_STYLE",
    "render_domain",
    "make_demo_data",
    "ensure_demo_data",
    "default_demo_root",
]

#: Version of the generator; bump it whenever the output for a given seed changes.
DEMO_VERSION = 1
#: Layout of each demo domain, for :func:`mito_monai.datasets.load_split`.
DEMO_LAYOUTS: dict[str, str] = {"source": "vnc3", "target": "lucchi_pp"}
#: Name of the marker file written last into a complete demo root.
DEMO_MARKER = "mito_monai_demo.json"


@dataclass(frozen=True)
class DomainStyle:
    """Appearance of one synthetic EM domain (sizes in pixels at ``scale`` 1, intensities in [0, 1])."""

    scale: float  # object size multiplier (inverse pixel size)
    cells_per_kpx: float  # Voronoi cells per 1000 px^2 at scale 1
    cell_drift: float  # Voronoi seed drift per slice, px
    cell_contrast: float  # std of the per-cell brightness offset
    membrane_width: float
    membrane_depth: float
    background: float
    texture_sigma: float
    texture_amplitude: float
    mito_per_mpx: float  # mitochondria per 10^6 px^2 of one slice, at scale 1
    mito_long: tuple[float, float]  # semi-axis ranges
    mito_short: tuple[float, float]
    mito_half_depth: tuple[float, float]  # half extent in z, slices
    mito_drift: float  # centre drift per slice, px
    mito_interior: float
    mito_membrane: float
    cristae_period: float
    cristae_depth: float
    vesicles_per_mpx: float
    vesicle_radius: tuple[float, float]
    blobs_per_mpx: float
    blob_radius: tuple[float, float]
    blob_level: float
    blur: float
    noise: float  # std of additive noise in grey levels
    gamma: float
    out_range: tuple[float, float]  # grey levels that [0, 1] maps to


#: ssTEM-like source (VNC III flavour): small dense neurites, dark thick membranes, bright background.
SOURCE_STYLE = DomainStyle(
    scale=1.0,
    cells_per_kpx=0.9,
    cell_drift=0.4,
    cell_contrast=0.04,
    membrane_width=1.6,
    membrane_depth=0.55,
    background=0.78,
    texture_sigma=1.5,
    texture_amplitude=0.05,
    mito_per_mpx=300.0,
    mito_long=(10.0, 20.0),
    mito_short=(6.0, 9.0),
    mito_half_depth=(3.0, 7.0),
    mito_drift=1.2,
    mito_interior=0.45,
    mito_membrane=0.25,
    cristae_period=4.0,
    cristae_depth=0.16,
    vesicles_per_mpx=150.0,
    vesicle_radius=(1.5, 2.2),
    blobs_per_mpx=0.0,
    blob_radius=(3.0, 5.0),
    blob_level=0.3,
    blur=0.6,
    noise=5.0,
    gamma=1.0,
    out_range=(10.0, 245.0),
)

#: FIB-SEM-like target (Lucchi flavour): larger objects, faint thin membranes, grainy, many distractors.
TARGET_STYLE = DomainStyle(
    scale=1.6,
    cells_per_kpx=0.35,
    cell_drift=0.25,
    cell_contrast=0.025,
    membrane_width=1.0,
    membrane_depth=0.3,
    background=0.62,
    texture_sigma=3.5,
    texture_amplitude=0.09,
    mito_per_mpx=300.0,
    mito_long=(10.0, 20.0),
    mito_short=(6.0, 9.0),
    mito_half_depth=(4.0, 9.0),
    mito_drift=0.5,
    mito_interior=0.3,
    mito_membrane=0.15,
    cristae_period=4.5,
    cristae_depth=0.2,
    vesicles_per_mpx=3000.0,
    vesicle_radius=(2.0, 3.5),
    blobs_per_mpx=500.0,
    blob_radius=(3.0, 6.0),
    blob_level=0.2,
    blur=1.3,
    noise=11.0,
    gamma=1.35,
    out_range=(40.0, 200.0),
)


def _count(rng: np.random.Generator, per_mpx: float, area: float) -> int:
    return int(rng.poisson(per_mpx * area / 1e6))


def _membranes(style: DomainStyle, rng: np.random.Generator, depth: int, size: int) -> np.ndarray:
    """(Z, Y, X) cellular background: per-cell brightness offsets minus Voronoi-boundary membranes.

    Seeds are spread by dart throwing (a minimum distance keeps cells from collapsing into dark
    smudges) and drift slowly in z, so cell outlines change smoothly from slice to slice.
    """
    n_cells = max(4, int(style.cells_per_kpx * size * size / 1000.0 / style.scale**2))
    lo, hi = -0.05 * size, 1.05 * size
    min_dist = 0.55 * (hi - lo) / np.sqrt(n_cells)
    seeds: list[np.ndarray] = []
    for _ in range(30 * n_cells):
        if len(seeds) >= n_cells:
            break
        p = rng.uniform(lo, hi, size=2)
        if all(np.hypot(*(p - q)) >= min_dist for q in seeds):
            seeds.append(p)
    points = np.array(seeds)
    velocity = rng.normal(0.0, style.cell_drift, size=points.shape)
    offsets = rng.normal(0.0, style.cell_contrast, size=len(points)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    pixels = np.stack([yy.ravel(), xx.ravel()], axis=1)
    width = style.membrane_width * style.scale
    out = np.empty((depth, size, size), dtype=np.float32)
    for z in range(depth):
        dist, idx = cKDTree(points + velocity * z).query(pixels, k=2)
        gap = (dist[:, 1] - dist[:, 0]).reshape(size, size) / 2.0
        out[z] = offsets[idx[:, 0]].reshape(size, size) - style.membrane_depth * np.exp(-((gap / width) ** 2))
    return out


def _texture(style: DomainStyle, rng: np.random.Generator, depth: int, size: int) -> np.ndarray:
    sigma = style.texture_sigma * style.scale
    field = ndimage.gaussian_filter(rng.standard_normal((depth, size, size)).astype(np.float32), (0.8, sigma, sigma))
    field /= field.std() + 1e-8
    return style.texture_amplitude * field


def _place(rng: np.random.Generator, n: int, size: int, depth: int, half_depth: tuple[float, float]):
    """Centres (y, x, z) and z half-extents of n objects; z centres may lie just outside the stack."""
    yx = rng.uniform(0, size, size=(n, 2))
    hz = rng.uniform(*half_depth, size=n)
    zc = rng.uniform(-0.5 * hz.mean(), depth - 1 + 0.5 * hz.mean(), size=n)
    return yx, zc, hz


def render_domain(
    style: DomainStyle, rng: np.random.Generator, depth: int, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one synthetic EM stack.

    Args:
        style: appearance of the domain.
        rng: random generator (the only source of randomness).
        depth: number of Z slices.
        size: Y and X size in pixels.

    Returns:
        ``(image, label, distractors)``: uint8 (Z, Y, X) image, uint8 {0, 1} mitochondria mask and
        uint8 (Z, Y, X) map of the distractor organelles (1 vesicle, 2 dark blob; never labelled).
    """
    s = style.scale
    area = float(size * size)
    image = style.background + _texture(style, rng, depth, size)
    image += _membranes(style, rng, depth, size)
    label = np.zeros((depth, size, size), dtype=np.uint8)
    distractors = np.zeros((depth, size, size), dtype=np.uint8)

    # --- mitochondria: elongated ellipses, rejection-sampled so that they rarely touch
    n_mito = _count(rng, style.mito_per_mpx / s**2, area)
    mito = []
    for _ in range(20 * n_mito):
        if len(mito) >= n_mito:
            break
        a = rng.uniform(*style.mito_long) * s
        b = min(rng.uniform(*style.mito_short) * s, 0.8 * a)
        cy, cx = rng.uniform(0, size, size=2)
        zc = rng.uniform(-2.0, depth + 1.0)
        if any(np.hypot(cy - m[0], cx - m[1]) < 0.8 * (a + m[3]) and abs(zc - m[2]) < m[6] + 3 for m in mito):
            continue
        theta = rng.uniform(0, np.pi)
        hz = rng.uniform(*style.mito_half_depth)
        drift = rng.normal(0.0, style.mito_drift, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        mito.append((cy, cx, zc, a, b, theta, hz, drift, phase))
    period = style.cristae_period * s
    for cy, cx, zc, a, b, theta, hz, drift, phase in mito:
        cos_t, sin_t = np.cos(theta), np.sin(theta)
        for z in range(max(0, int(np.floor(zc - hz))), min(depth, int(np.ceil(zc + hz)) + 1)):
            t = (z - zc) / hz
            if abs(t) >= 1:
                continue
            shrink = (1.0 - t**4) ** 0.5
            az, bz = a * shrink, b * (0.5 + 0.5 * shrink)
            if bz < 1.5:
                continue
            py, px = cy + drift[0] * (z - zc), cx + drift[1] * (z - zc)
            r = int(np.ceil(az)) + 2
            y0, y1 = max(0, int(py) - r), min(size, int(py) + r + 1)
            x0, x1 = max(0, int(px) - r), min(size, int(px) + r + 1)
            if y0 >= y1 or x0 >= x1:
                continue
            yy, xx = np.mgrid[y0:y1, x0:x1]
            dy, dx = yy - py, xx - px
            u, v = dx * cos_t + dy * sin_t, -dx * sin_t + dy * cos_t
            rho = np.sqrt((u / az) ** 2 + (v / bz) ** 2)
            inside = rho < 1.0
            if not inside.any():
                continue
            depth_in = (1.0 - rho) * bz  # ~distance to the outline in px (inside)
            ring = np.exp(-((depth_in - 0.7) ** 2) / 0.5) + np.exp(-((depth_in - 2.3) ** 2) / 0.5)
            cristae = np.clip((np.cos(2 * np.pi * u / period + phase) - 0.3) / 0.7, 0, 1) * (depth_in > 3.0)
            membrane = (style.mito_interior - style.mito_membrane) * np.clip(ring, 0, 1)
            value = style.mito_interior - style.cristae_depth * cristae - membrane
            patch = image[z, y0:y1, x0:x1]
            patch[inside] = value[inside]
            label[z, y0:y1, x0:x1][inside] = 1

    # --- distractors: vesicles (light lumen, dark rim) and dark round blobs, never labelled
    yy, xx = np.mgrid[0:size, 0:size]
    for kind, per_mpx, radii, half in (
        ("vesicle", style.vesicles_per_mpx, style.vesicle_radius, (1.0, 2.5)),
        ("blob", style.blobs_per_mpx, style.blob_radius, (2.0, 4.0)),
    ):
        n = _count(rng, per_mpx / s**2, area)
        if n == 0:
            continue
        centres, zcs, hzs = _place(rng, n, size, depth, half)
        rads = rng.uniform(*radii, size=n) * s
        for (cy, cx), zc, hz, rad in zip(centres, zcs, hzs, rads):
            r = int(np.ceil(rad)) + 2
            y0, y1 = max(0, int(cy) - r), min(size, int(cy) + r + 1)
            x0, x1 = max(0, int(cx) - r), min(size, int(cx) + r + 1)
            d = np.hypot(yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx)
            for z in range(max(0, int(np.floor(zc - hz))), min(depth, int(np.ceil(zc + hz)) + 1)):
                t = (z - zc) / hz
                if abs(t) >= 1:
                    continue
                rz = rad * (1.0 - t * t) ** 0.5
                free = label[z, y0:y1, x0:x1] == 0
                patch = image[z, y0:y1, x0:x1]
                if kind == "vesicle":
                    rim = np.exp(-((d - rz) ** 2) / 0.6)
                    lumen = (d < rz - 0.8) * 0.06
                    patch[free] = (patch - 0.5 * rim + lumen)[free]
                    distractors[z, y0:y1, x0:x1][free & (d < rz + 1.0)] = 1
                else:
                    disc = np.clip(rz + 0.5 - d, 0, 1)
                    patch[free] = (patch * (1 - disc) + style.blob_level * disc)[free]
                    distractors[z, y0:y1, x0:x1][free & (d < rz)] = 2

    # --- imaging: blur, intensity mapping, noise, quantisation
    if style.blur > 0:
        image = ndimage.gaussian_filter(image, (0, style.blur, style.blur))
    image = np.clip(image, 0.0, 1.0) ** style.gamma
    lo, hi = style.out_range
    image = lo + (hi - lo) * image + rng.normal(0.0, style.noise, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label, distractors


# ----------------------------------------------------------------------------------------------
# writing the layouts
# ----------------------------------------------------------------------------------------------
def _write_source(folder: Path, image: np.ndarray, label: np.ndarray) -> None:
    import tifffile
    from PIL import Image

    raw, mito = folder / "stack1" / "raw", folder / "stack1" / "mitochondria"
    raw.mkdir(parents=True)
    mito.mkdir(parents=True)
    width = max(2, len(str(image.shape[0] - 1)))
    for z in range(image.shape[0]):
        name = f"{z:0{width}d}"
        tifffile.imwrite(raw / f"{name}.tif", image[z], photometric="minisblack", metadata=None)
        if z % 4 == 3:  # 1-bit PNG, foreground 1 (as some VNC III masks)
            Image.fromarray(label[z].astype(bool)).save(mito / f"{name}.png")
        else:
            Image.fromarray(label[z] * np.uint8(255)).save(mito / f"{name}.png")


def _write_target_split(folder: Path, split_in: str, split_out: str, image, label, rgba: bool) -> None:
    from PIL import Image

    (folder / split_in).mkdir(parents=True)
    (folder / split_out).mkdir(parents=True)
    for z in range(image.shape[0]):
        Image.fromarray(image[z]).save(folder / split_in / f"mask{z:04d}.png")
        mask = label[z] * np.uint8(255)
        if rgba:  # RGBA with R = G = B (as some Lucchi++ test labels)
            mask = np.stack([mask, mask, mask, np.full_like(mask, 255)], axis=-1)
        Image.fromarray(mask).save(folder / split_out / f"{z}.png")


def _params(seed: int, num_slices: int, size: int) -> dict:
    return {
        "generator": "mito_monai.datasets.demo",
        "version": DEMO_VERSION,
        "seed": int(seed),
        "num_slices": int(num_slices),
        "size": int(size),
        "layouts": DEMO_LAYOUTS,
    }


def _is_demo_root(root: Path) -> bool:
    return (root / DEMO_MARKER).is_file()


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / DEMO_MARKER).read_text())
    except (OSError, ValueError):
        return None


def _visible_entries(root: Path) -> list[str]:
    return [e for e in os.listdir(root) if not e.startswith(".")]


def make_demo_data(
    root: str | os.PathLike, *, seed: int = 0, overwrite: bool = False, num_slices: int = 16, size: int = 256
) -> Path:
    """Write the synthetic source (``vnc3`` layout) and target (``lucchi_pp`` layout) domains.

    The output depends only on ``(seed, num_slices, size)`` and :data:`DEMO_VERSION`: the same
    arguments give byte-identical files. The tree is built in a temporary folder next to ``root``
    and moved into place when complete; the marker file :data:`DEMO_MARKER` records the parameters.

    Args:
        root: folder to create (``root/source``, ``root/target``, marker file).
        seed: random seed.
        overwrite: replace an existing demo copy in ``root``. Folders that are not demo copies
            (no marker file) are never replaced.
        num_slices: Z slices of the source stack and of each target stack (>= 2).
        size: Y and X size of every slice (>= 64).

    Returns:
        ``root`` as a Path.

    Raises:
        DataError: ``root`` is a file, is non-empty and ``overwrite`` is False, or holds something
            that is not demo data.
        ValueError: ``num_slices`` < 2 or ``size`` < 64.
    """
    if int(num_slices) < 2:
        raise ValueError(f"num_slices must be >= 2, got {num_slices}")
    if int(size) < 64:
        raise ValueError(f"size must be >= 64 pixels, got {size}")
    root = Path(root)
    if root.exists():
        if not root.is_dir():
            raise DataError(f"{root} is a file; expected a folder for the demo data")
        if _visible_entries(root):
            if not _is_demo_root(root):
                raise DataError(
                    f"{root} is not empty and holds no {DEMO_MARKER}; refusing to write demo data over foreign files "
                    "(choose an empty or new folder)"
                )
            if not overwrite:
                raise DataError(f"{root} already holds demo data; pass overwrite=True to regenerate it")
    root.parent.mkdir(parents=True, exist_ok=True)

    seeds = np.random.SeedSequence([int(seed), DEMO_VERSION]).spawn(3)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:10]}"
    try:
        tmp.mkdir()
        image, label, _ = render_domain(SOURCE_STYLE, np.random.default_rng(seeds[0]), num_slices, size)
        _write_source(tmp / "source", image, label)
        for child, (split_in, split_out), rgba in zip(
            seeds[1:], (("Train_In", "Train_Out"), ("Test_In", "Test_Out")), (False, True)
        ):
            image, label, _ = render_domain(TARGET_STYLE, np.random.default_rng(child), num_slices, size)
            _write_target_split(tmp / "target", split_in, split_out, image, label, rgba)
        (tmp / DEMO_MARKER).write_text(json.dumps(_params(seed, num_slices, size), indent=2, sort_keys=True) + "\n")
        commit_folder(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _demo_complete(root: Path, params: dict) -> bool:
    from mito_monai.datasets.registry import split_files

    if _read_marker(root) != json.loads(json.dumps(params)):
        return False
    try:
        for name, layout in DEMO_LAYOUTS.items():
            for split in (("train",) if layout == "vnc3" else ("train", "test")):
                sf = split_files(layout, root / name, split)
                if sf.image_files is None or len(sf.image_files) != params["num_slices"]:
                    return False
    except DataError:
        return False
    return True


def ensure_demo_data(
    root: str | os.PathLike | None = None, seed: int = 0, *, num_slices: int = 16, size: int = 256
) -> Path:
    """Return a complete demo copy at ``root``, generating it only when needed.

    An existing copy with the same generator version and parameters is reused as is. A demo copy
    with other parameters, or an incomplete one, is regenerated. A non-empty folder that is not
    demo data is never touched.

    Args:
        root: demo folder; :func:`default_demo_root` when None.
        seed, num_slices, size: as for :func:`make_demo_data`.

    Raises:
        DataError: ``root`` exists and holds files that are not demo data.
    """
    root = Path(root) if root is not None else default_demo_root()
    params = _params(seed, num_slices, size)
    if root.is_dir() and _visible_entries(root):
        if not _is_demo_root(root):
            raise DataError(
                f"{root} is not empty and holds no {DEMO_MARKER}, so it is not mito_monai demo data; "
                "choose another folder (or set MITO_MONAI_DEMO_DIR)"
            )
        if _demo_complete(root, params):
            return root
        return make_demo_data(root, seed=seed, overwrite=True, num_slices=num_slices, size=size)
    return make_demo_data(root, seed=seed, num_slices=num_slices, size=size)


def default_demo_root() -> Path:
    """``$MITO_MONAI_DEMO_DIR`` if set, else ``$XDG_CACHE_HOME/mito_monai/demo`` (``~/.cache/...``)."""
    env = os.environ.get("MITO_MONAI_DEMO_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "mito_monai" / "demo"
