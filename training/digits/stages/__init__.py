"""The digit stages: source, pixel, target, feature, and the joint objective."""
