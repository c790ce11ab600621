"""The segmentation stages: supervised (source, target, oracle), pixel, feature."""
