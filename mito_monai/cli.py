"""Command-line interface: ``python -m mito_monai COMMAND ...`` (built with fire).

Commands print JSON on stdout so that they can be piped into other tools.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "choose_default", "choose_setting", "shape_scores", "compare", "dataset_info", "evaluate", "instances", "measure", "download", "make_demo", "report"]


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def dataset_info(name: str, root: str) -> None:
    """Print, per split of the dataset layout NAME under ROOT, the image shape [Z, Y, X], dtype and label foreground fraction.

    Layouts: vnc3, lucchi, lucchi_pp, mitoem, folder.
    """
    from mito_monai.datasets import dataset_info as _info

    _print_json(_info(name, root))


def evaluate(
    prediction: str,
    label: str,
    threshold: float = 0.5,
    prediction_key: str | None = None,
    label_key: str | None = None,
    instances: bool = False,
    probabilities: str | None = None,
) -> None:
    """Score a foreground-probability stack against a label stack and print the metrics as JSON.

    PREDICTION: probabilities in [0, 1] (float), or 8/16-bit integers scaled to [0, 1]; LABEL: any
    label stack (binarised as non-zero). Any supported format (TIFF, image folder, HDF5 with
    ``file.h5:key`` or --prediction_key/--label_key, NIfTI, ITK, zarr / OME-Zarr). Prints mAP, F1, MCC,
    IoU (per slice, averaged; the UDA papers' convention), Dice and Jaccard (whole volume; the SSL
    papers'), ECE (15 bins).

    --instances true: PREDICTION and LABEL are 3D instance-ID volumes (e.g. from ``instances``); prints
    MitoEM's AP50 and AP75 (COCO-style AP in 3D). --probabilities: foreground probabilities that give
    each predicted instance its score (its mean probability); without them the score is its size.
    """
    import numpy as np

    from mito_monai.io import DataError, open_volume

    # every stack goes through the lazy volume API: shapes are compared before any voxel is read
    with open_volume(prediction, prediction_key) as pv, open_volume(label, label_key, label=not instances) as lv:
        if pv.shape != lv.shape:
            raise DataError(f"prediction {prediction} has shape {list(pv.shape)} but label {label} has {list(lv.shape)}.")
        if instances:
            for name, v in ((prediction, pv), (label, lv)):
                if not np.issubdtype(v.dtype, np.integer):
                    raise DataError(f"{name} holds {v.dtype} values; expected integer instance IDs (0 = background).")
        pred, lab = pv.read(check_finite=True), lv.read()
    if instances:
        from mito_monai.metrics import instance_metrics

        prob = None
        if probabilities is not None:
            with open_volume(probabilities) as prv:
                if prv.shape != pred.shape:
                    raise DataError(f"probabilities {probabilities} have shape {list(prv.shape)}, not {list(pred.shape)}.")
                prob = prv.read(check_finite=True)
            if np.issubdtype(prob.dtype, np.integer):
                prob = prob.astype(np.float32) / float(np.iinfo(prob.dtype).max)
        _print_json(instance_metrics(pred, lab, prob))
        return
    from mito_monai.metrics import segmentation_metrics

    prob = pred
    if np.issubdtype(prob.dtype, np.integer):
        prob = prob.astype(np.float32) / float(np.iinfo(prob.dtype).max)
    prob = prob.astype(np.float32, copy=False)
    lo, hi = float(prob.min()), float(prob.max())
    if lo < 0.0 or hi > 1.0:
        raise DataError(
            f"prediction {prediction} has values in [{lo:g}, {hi:g}]; expected foreground probabilities in [0, 1]."
        )
    _print_json(segmentation_metrics(prob, lab, threshold=threshold))


def instances(
    masks: str,
    output: str,
    masks_key: str | None = None,
    min_size: int = 0,
    connectivity: int = 26,
    split: str = "none",
    probabilities: str | None = None,
    seed_height: float = 3.0,
    voxel_size: Any = None,
    block_slices: int = 64,
    block_tile: int = 1024,
    overwrite: bool = False,
) -> None:
    """Label the 3D connected mitochondria of the mask stack MASKS into OUTPUT (instance IDs 1..N).

    MASKS: any supported stack (non-zero = mitochondria), e.g. ``out/segmentation.ome.zarr/labels/mask``.
    OUTPUT: ``instances.zarr`` (an OME-Zarr label image written block by block) or any other format.
    --connectivity 26 (default), 18 or 6; --min_size drops smaller components (voxels); the volume is
    processed in blocks of --block_slices x --block_tile x --block_tile, merged across block borders.
    --split none (default): touching mitochondria stay one instance. --split watershed: each component is
    then split by a seeded watershed in its bounding box: seeds are the h-maxima of the distance to the
    background, so two parts separate when their centres are at least --seed_height (3) voxels deeper than
    the neck between them; flooding follows the negative distance, or 1 - --probabilities (a stack of
    foreground probabilities) when given. --voxel_size z,y,x makes the distances anisotropic (default: the
    mask's own voxel size where the format stores one, else isotropic). Memory: one block, and for
    --split watershed also the bounding box of the largest component.
    """
    from mito_monai.inference.instances import label_instances

    _print_json(
        label_instances(masks, output, key=masks_key, min_size=min_size, connectivity=connectivity,
                        block_shape=(block_slices, block_tile, block_tile), overwrite=overwrite, split=split,
                        probabilities=probabilities, seed_height=seed_height, voxel_size=voxel_size)
    )


def measure(
    instances: str,
    output: str,
    image: str | None = None,
    probabilities: str | None = None,
    voxel_size: Any = None,
    unit: str | None = None,
    instances_key: str | None = None,
    image_key: str | None = None,
    skeleton: bool = False,
    connectivity: int = 6,
    block_slices: int = 64,
    block_tile: int = 512,
    scheduler: str = "local",
    dask_workers: int = 2,
    dask_address: str | None = None,
    plot: str | None = None,
    overwrite: bool = False,
) -> None:
    """Measure every mitochondrion of the instance-ID volume INSTANCES into the table OUTPUT (.csv or .parquet).

    One row per instance: ID, voxel count, volume, bounding box, centroid, surface area (marching cubes),
    sphericity, principal axis lengths and elongation, solidity, mean --image intensity and mean
    --probabilities when given, whether it touches the volume border, and how many instances it touches
    (--connectivity 6: sharing a face, 26: also an edge or corner). Lengths are in the voxel size's unit:
    --voxel_size z,y,x, else the one INSTANCES stores (OME-Zarr, NIfTI), else voxels; --unit (e.g. nanometer)
    when the files do not say, for the density per µm³. --skeleton true adds skeleton branches and length.
    Prints the summary (count, density, volume fraction, quartiles of volume and sphericity) as a table, and
    writes it as OUTPUT_STEM_summary.json, with the middle-slice crops of the largest objects in
    OUTPUT_STEM_objects.npz; --plot PNG also draws the histograms and those objects. Block-wise
    (--block_slices x --block_tile), on Dask with --scheduler dask; memory is a block or the largest object's
    box. Existing outputs are kept unless --overwrite true.
    """
    from mito_monai.morphology import format_summary, measure_instances

    if plot is not None and Path(plot).exists() and not overwrite:
        raise FileExistsError(f"{plot} exists; pass --overwrite true to replace it, or choose another --plot.")
    result = measure_instances(
        instances, output, image=image, probabilities=probabilities, voxel_size=voxel_size, unit=unit,
        instances_key=instances_key, image_key=image_key, skeleton=skeleton, connectivity=connectivity,
        block_shape=(block_slices, block_tile, block_tile), scheduler=scheduler, dask_workers=dask_workers,
        dask_address=dask_address, overwrite=overwrite,
    )
    print(format_summary(result), end="")
    if plot is not None:
        from mito_monai.visualize.morphology import write_morphology_plot

        result["plot"] = str(write_morphology_plot(result["table"], plot, overwrite=overwrite))
    _print_json({k: result[k] for k in ("table", "summary", "objects", "plot") if k in result})


def download(name: str, root: str, overwrite: bool = False) -> None:
    """Download a public dataset (vnc3, lucchi, lucchi_pp, mitoem) and unpack it into its layout under ROOT."""
    from mito_monai.datasets import download_dataset

    _print_json({"dataset": name, "root": str(download_dataset(name, root, overwrite=overwrite))})


def make_demo(root: str | None = None, seed: int = 0) -> None:
    """Write (or reuse) the built-in demo domains: ROOT/source (vnc3 layout), ROOT/target (lucchi_pp layout)."""
    from mito_monai.datasets import default_demo_root, ensure_demo_data

    _print_json({"root": str(ensure_demo_data(root or default_demo_root(), seed=seed))})


def export_bioimageio(
    bundle: str,
    checkpoint: str = "models/model.pt",
    output: str = "model.zip",
    test_image: str | None = None,
    test_size: int = 256,
    test: bool = True,
    overwrite: bool = False,
) -> None:
    """Write a bioimage.io model package (TorchScript + state dict, test tensors, covers, citations) of a bundle.

    BUNDLE is r4mito, dualrel or a bundle folder; CHECKPOINT its weights (relative to the bundle folder or the
    working directory). With --test (default) bioimageio.core's own test runs on the package.
    """
    from mito_monai.export import export_bioimageio as export

    path = export(bundle, checkpoint, output, test_image=test_image, test_size=test_size, overwrite=overwrite)
    result = {"package": str(path)}
    if test:
        from bioimageio.core import test_model

        summary = test_model(path)
        result["bioimageio_test"] = summary.status
        if summary.status != "passed":
            _print_json(result)
            raise ValueError(f"{path}: bioimageio.core test {summary.status}; run `bioimageio test {path}` for details.")
    _print_json(result)


def compare(
    experiment: str = "r4mito",
    tracking_uri: str | None = None,
    output: str | None = None,
    columns: str = "mAP,F1,MCC,IoU,Dice,Jaccard,ECE",
    plot: str | None = None,
    metric: str | None = None,
    overwrite: bool = False,
) -> None:
    """Print one row per MLflow run of EXPERIMENT (method, seed, final metrics) as a Markdown table.

    --tracking_uri: any MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else whichever of the SQLite
    stores that ``--tracking mlflow`` writes for the bundles, bundles/r4mito/eval/mlruns.db and
    bundles/dualrel/eval/mlruns.db, holds EXPERIMENT).
    --columns: comma-separated metrics; the UDA papers report mAP,F1,MCC,IoU, the SSL papers Dice,Jaccard,ECE.
    --output: also write the table to a file; ``.csv`` gives CSV (raw fractions), anything else Markdown.
    --plot: also draw a PNG bar chart of --metric (default: the first column) per method, each run a point
    labelled by its seed; an existing file is kept unless --overwrite true.
    """
    from mito_monai.tracking import collect_runs, format_runs

    cols = [c.strip() for c in columns.split(",") if c.strip()] if isinstance(columns, str) else list(columns)
    rows = collect_runs(experiment, tracking_uri, columns=cols)
    print(format_runs(rows, "markdown", columns=cols), end="")
    if output:
        fmt = "csv" if str(output).lower().endswith(".csv") else "markdown"
        Path(output).write_text(format_runs(rows, fmt, columns=cols))
    if plot:
        from mito_monai.visualize import write_compare_plot

        chosen = metric or cols[0]
        if chosen not in cols:
            raise ValueError(f"--metric {chosen!r} is not among --columns {cols}.")
        _print_json({"plot": str(write_compare_plot(rows, chosen, plot, overwrite=overwrite)), "metric": chosen})


def choose_setting(
    *candidates: str,
    source_fraction: str | float,
    band: float = 2.0,
    hindsight: bool = False,
    criterion: str = "agreement",
    output: str | None = None,
    overwrite: bool = False,
) -> None:
    """Choose an adaptation setting among finished runs by the label-free rule; print the choice as JSON.

    Each CANDIDATE is NAME=RUNS: RUNS (a glob is allowed) names final_metrics.json files, run folders, or a
    folder of runs (one per seed), e.g. ``recommended=runs/A/s2_recommended``. The rule reads each final model's
    label-free scores on the unlabelled target (agreement, predicted foreground fraction), keeps the candidates
    whose mean foreground fraction lies within a factor --band of --source_fraction q (a number, or a source
    model's JSON card), and picks the highest mean agreement; it also reports the pick of each seed alone.
    --hindsight true adds each candidate's mean test IoU and the best in hindsight, for the report only (the
    choice never reads a label). --criterion solidity_distance ranks the plausible candidates by the shape prior
    instead (lowest wins; each run needs its shape scores, see ``shape-scores``). --output also writes the JSON
    (kept unless --overwrite true).
    """
    from mito_monai.setting_choice import choose_setting as _choose
    from mito_monai.setting_choice import find_final_metrics, label_free_scores, resolve_source_fraction

    named = _named_values(candidates, "candidate", "NAME=RUNS (a run folder, a folder of runs or a glob)", "recommended=runs/A/s2_recommended")
    shapes = criterion == "solidity_distance"
    runs = {
        name: [label_free_scores(f, hindsight=hindsight, shapes=shapes) for f in find_final_metrics(pattern)]
        for name, pattern in named.items()
    }
    result = _choose(runs, resolve_source_fraction(source_fraction), band=band, criterion=criterion)
    _write_output(result, output, overwrite)
    _print_json(result)


def _named_values(items: tuple, what: str, form: str, example: str) -> dict[str, str]:
    """``{NAME: VALUE}`` of command-line ``NAME=VALUE`` items, with a clear error for a missing ``=`` or a repeated name."""
    if not items:
        raise ValueError(f"give at least one {what} as {form}, e.g. {example}.")
    named: dict[str, str] = {}
    for item in items:
        name, sep, value = str(item).partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{what} {item!r}: expected {form}.")
        if name in named:
            raise ValueError(f"{what} name {name!r} is given twice.")
        named[name] = value
    return named


def _write_output(result: dict, output: str | None, overwrite: bool) -> None:
    """Write ``result`` as JSON to ``output`` (if given), keeping an existing file unless ``overwrite``."""
    if not output:
        return
    path = Path(output)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: give --overwrite true to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def shape_scores(
    *runs: str,
    target: str,
    source: str,
    channels: tuple[int, ...] | list[int] = (16, 32, 64, 128),
    every: int = 2,
    min_area: int = 16,
    overwrite: bool = False,
) -> None:
    """Score finished runs by the source labels' shape prior; write eval/shape_scores.json in each; print JSON.

    RUNS: run folders, folders of runs or globs (as for choose-setting). Each run's final model predicts every
    --every-th slice of the unlabelled --target LAYOUT:DIR:SPLIT (no label read); the solidity of the 2D objects
    it predicts is compared with that of the --source LAYOUT:DIR:SPLIT labels' objects (1-Wasserstein distance,
    ``solidity_distance``, lower = closer; ``log_area_distance`` reported beside it). choose-setting --criterion
    solidity_distance then ranks candidates by it. Existing scores are kept unless --overwrite true.
    """
    from mito_monai.setting_choice import shape_scores as _shape_scores

    if not runs:
        raise ValueError("give at least one run folder (or a folder of runs, or a glob).")
    if isinstance(channels, (int, str)):
        channels = [channels]
    records = _shape_scores(runs, target=target, source=source, channels=[int(c) for c in channels], every=every,
                            min_area=min_area, overwrite=overwrite)
    _print_json(records)


def choose_default(
    *pairs: str,
    output: str | None = None,
    overwrite: bool = False,
) -> None:
    """Choose one default setting for several domain pairs by the label-free rule; print the choice as JSON.

    Each PAIR is NAME=FILE: FILE is what ``choose-setting --output`` wrote for that pair (the same candidates
    on every pair), e.g. ``A=runs/A/choice.json B=runs/B/choice.json``. The default is the candidate that is
    plausible on every pair with the highest agreement averaged over the pairs; no label is read (a pair's
    hindsight IoU, if its file has one, is only reported). --output also writes the JSON (kept unless
    --overwrite true).
    """
    from mito_monai.setting_choice import choose_default as _choose_default

    results = {}
    for name, file in _named_values(pairs, "pair", "NAME=FILE, FILE written by choose-setting --output", "A=runs/A/choice.json").items():
        try:
            results[name] = json.loads(Path(file).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{file}: expected the JSON that choose-setting --output writes ({type(e).__name__}: {e}).") from None
    result = _choose_default(results)
    _write_output(result, output, overwrite)
    _print_json(result)


def report(
    run: str | None = None,
    output: str | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    tracking_uri: str | None = None,
    overwrite: bool = False,
) -> None:
    """Draw a training run's report: one self-contained HTML page and its figures as PNG files beside it.

    --run DIR: a finished bundle run (its ``eval/`` folder, or the folder above it, e.g. bundles/r4mito); the
    default --output is DIR/eval/report/report.html, the one the training wrote (drawn again in place).
    --experiment NAME --run_name R [--tracking_uri URI]: a run from the MLflow store instead (the store is found
    as for ``compare``); the default --output is report_R/report.html.
    Figures: loss of every term and its weight, validation metrics, the final metrics (both conventions), a
    reliability diagram with the ECE, the best/median/worst test slices with TP/FP/FN, and the method's maps
    (R4MITO prototype pseudo-labels and agents; DualRel activation maps and reliabilities).
    Existing files are kept unless --overwrite true.
    """
    import tempfile

    from mito_monai.visualize import FIGURE_FILES, find_eval_dir, write_report

    if (run is None) == (experiment is None):
        raise ValueError("give either --run DIR or --experiment NAME --run_name R.")
    if run is not None:
        # the default output is the run's own report (the training wrote it): drawing it again replaces it
        path = write_report(find_eval_dir(run), output, overwrite=overwrite or output is None)
    else:
        if not run_name:
            raise ValueError("--experiment needs --run_name (the run names are listed by `compare`).")
        from mito_monai.tracking import download_run_report

        with tempfile.TemporaryDirectory() as tmp:
            inputs = download_run_report(experiment, run_name, tmp, tracking_uri=tracking_uri)
            path = write_report(inputs, output or Path(f"report_{run_name}") / "report.html", overwrite=overwrite)
    _print_json({"report": str(path), "figures": [str(path.with_name(n)) for n, _ in FIGURE_FILES.values() if path.with_name(n).is_file()]})


COMMANDS = {
    "choose-setting": choose_setting,
    "choose-default": choose_default,
    "shape-scores": shape_scores,
    "compare": compare,
    "dataset-info": dataset_info,
    "evaluate": evaluate,
    "instances": instances,
    "measure": measure,
    "download": download,
    "export-bioimageio": export_bioimageio,
    "make-demo": make_demo,
    "report": report,
}


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m mito_monai`` and ``mito-monai``."""
    import fire

    from mito_monai.io import DataError

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        fire.Fire(COMMANDS, command=argv, name="mito_monai")
    except (DataError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
