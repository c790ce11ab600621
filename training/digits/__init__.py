"""CyCADA on digit classification (paper Tables 2 and 3): command, config, data, networks,
stages, pipeline, ablation and evaluation."""
