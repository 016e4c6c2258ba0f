"""Write the README's screenshots: a run report in headless Chromium, and napari with a segmented stack.

    python scripts/screenshots.py --run bundles/r4mito [--out docs]     # needs chromium; napari under xvfb-run

The run must be a finished r4mito run (its eval/report/report.html and models/model.pt); the napari picture
segments the demo target's test stack with that model. Prints the files written as JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path


def report_screenshot(report: Path, out: Path) -> Path:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium is not on PATH (apt-get install chromium).")
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1150,4700",
         f"--screenshot={out}", report.resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    from PIL import Image, ImageOps

    with Image.open(out) as shot:  # the page without the blank below it, at README width, 256 colours
        shot = shot.convert("RGB")
        shot = shot.crop((0, 0, shot.width, ImageOps.invert(shot).getbbox()[3] + 20))
        shot = shot.resize((800, round(shot.height * 800 / shot.width)), Image.LANCZOS)
        shot.quantize(256).save(out, optimize=True)
    return out


def napari_screenshot(model: Path, out: Path, settings: str) -> Path:
    import napari
    from qtpy.QtWidgets import QApplication

    from mito_monai.datasets import default_demo_root, ensure_demo_data, load_split
    from mito_monai.napari_plugin.widgets import SegmentWidget

    image, _ = load_split("lucchi_pp", Path(ensure_demo_data(default_demo_root())) / "target", "test")
    viewer = napari.Viewer(show=False)
    viewer.add_image(image, name="demo target (test stack)")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment mitochondria")
    widget.checkpoint.value = str(model)
    widget.settings.value = settings
    widget.run_button.clicked.emit()
    while len(widget.result_layers) < 2:
        QApplication.processEvents()
    viewer.layers[-2].visible = False  # show the labels over the image
    viewer.window.resize(1300, 800)
    QApplication.processEvents()
    viewer.screenshot(path=str(out), canvas_only=False)
    viewer.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("bundles/r4mito"))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--settings", default="", help="network settings (JSON) of the model, e.g. its channels")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    written = [str(report_screenshot(args.run / "eval" / "report" / "report.html", args.out / "report_screenshot.png"))]
    written.append(str(napari_screenshot(args.run / "models" / "model.pt", args.out / "napari_screenshot.png", args.settings)))
    print(json.dumps({"written": written}))


if __name__ == "__main__":
    main()
