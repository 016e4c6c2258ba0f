"""mito_monai: MONAI components and bundles for mitochondria segmentation in EM volumes.

Layers, in the order data flows:
``data`` (readers, dataset layouts, demo domains) -> ``transforms`` -> ``networks``
-> ``losses`` -> ``engines`` -> ``metrics`` -> ``inference``.
"""

__version__ = "0.2.0"
