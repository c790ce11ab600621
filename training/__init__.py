"""Adaptation training: data, networks, CyCADA losses and stages."""
