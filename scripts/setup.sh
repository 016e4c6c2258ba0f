#!/usr/bin/env bash
# Install mito_monai and everything it needs into the current Python environment.
# torch is pinned and installed first: an unpinned torch would pull several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC="${MITO_MONAI_TORCH:-torch==2.13.0}"
python -c "import torch" 2>/dev/null || python -m pip install --quiet "$TORCH_SPEC"
python -m pip install --quiet -e ".[test]"
