#!/usr/bin/env python
"""Train and evaluate several methods x seeds with one bundle (r4mito or dualrel); print a comparison as JSON.

Each run is ``python -m monai.bundle run training`` in its own process, with its own checkpoint and
output folders under ``--out``; the final model of each run is scored on the evaluation stack (no
checkpoint selection). Extra ``--set key=value`` pairs and ``--overlay`` config files apply to every
run, so the same script runs the demo comparison and the real-data protocols.

Examples::

    python scripts/run_methods.py --methods noadapt oracle --seeds 0 --out runs/demo
    python scripts/run_methods.py --overlay bundles/r4mito/configs/protocols/cpu_reference.json \\
        --set source_dir=../shared/data/vnc3 --set target_dir=../shared/data/lucchi_pp \\
        --methods noadapt baseline r4mito --seeds 0 1 2 --out runs/cpu_reference
    python scripts/run_methods.py --bundle dualrel --methods supervised mean_teacher cps dualrel \
        --seeds 0 --out runs/dualrel_demo
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("mAP", "F1", "MCC", "IoU", "Dice", "Jaccard", "ECE")


def run_one(method: str, seed: int, args) -> dict:
    run_dir = Path(args.out).resolve() / f"{method}_seed{seed}"
    bundle = REPO / "bundles" / args.bundle / "configs"
    configs = [str(bundle / "train.json")] + [str(Path(o).resolve()) for o in args.overlay]
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--config_file", json.dumps(configs) if len(configs) > 1 else configs[0],
        "--meta_file", str(bundle / "metadata.json"),
        "--logging_file", str(bundle / "logging.conf"),
        "--method", method, "--seed", str(seed),
        "--ckpt_dir", str(run_dir / "models"),
        # an expression, not a plain path: MONAI's --tracking appends to the raw value of output_dir
        "--output_dir", f"$'{run_dir / 'eval'}'",
    ]
    for item in args.set:
        key, _, value = item.partition("=")
        cmd += [f"--{key}", value]
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(run_dir / "train.log", "w") as log:
        res = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False)
    record = {"method": method, "seed": seed, "seconds": round(time.time() - t0, 1), "log": str(run_dir / "train.log")}
    metrics_file = run_dir / "eval" / "final_metrics.json"
    if res.returncode != 0 or not metrics_file.is_file():
        record["error"] = f"exit code {res.returncode}; see {run_dir / 'train.log'}"
        return record
    final = json.loads(metrics_file.read_text())
    record["metrics"] = final["metrics"]
    selection = final.get("selection")
    if selection:  # the label-free choice (never made with target labels) and, if recorded, the hindsight best
        record["selection"] = {k: selection[k] for k in ("criterion", "iteration", "metrics", "best_in_hindsight") if k in selection}
    print(json.dumps(record), file=sys.stderr, flush=True)
    return record


def summarise(records: list[dict]) -> dict:
    out = {}
    for method in dict.fromkeys(r["method"] for r in records):
        done = [r["metrics"] for r in records if r["method"] == method and "metrics" in r]
        row = {"runs": len(done)}
        for c in COLUMNS:
            vals = [100.0 * m[c] for m in done if c in m]
            if vals:
                row[c] = round(statistics.fmean(vals), 2)
                row[c + "_std"] = round(statistics.stdev(vals), 2) if len(vals) > 1 else 0.0
        out[method] = row
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", choices=["r4mito", "dualrel"], default="r4mito")
    p.add_argument("--methods", nargs="+", default=None,
                   help="default: noadapt baseline r4mito oracle (r4mito); supervised mean_teacher cps dualrel (dualrel)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--overlay", nargs="*", default=[], help="config files merged after train.json")
    p.add_argument("--set", action="append", default=[], help="key=value config override for every run")
    args = p.parse_args()
    if args.methods is None:
        args.methods = (
            ["noadapt", "baseline", "r4mito", "oracle"] if args.bundle == "r4mito"
            else ["supervised", "mean_teacher", "cps", "dualrel"]
        )
    records = [run_one(m, s, args) for s in args.seeds for m in args.methods]
    result = {"runs": records, "summary_percent": summarise(records)}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
