"""The napari plugin (optional extra ``mito_monai[napari]``): widgets to segment and to adapt from the viewer.

``backend`` needs neither napari nor Qt; ``widgets`` imports napari.
"""
