"""Exports of trained networks for other tools: bioimage.io model packages (TorchScript: ``monai.bundle ckpt_export``)."""

from mito_monai.export.bioimageio import BUNDLE_CARDS, BundleCard, export_bioimageio, resolve_bundle

__all__ = ["BUNDLE_CARDS", "BundleCard", "export_bioimageio", "resolve_bundle"]
