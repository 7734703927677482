"""Multi-task nnU-Net v2 for the pancreas quiz: shared encoder, segmentation decoder, subtype head."""

__version__ = "0.1.0"
