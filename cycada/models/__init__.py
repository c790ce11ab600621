"""What training, export and serving share: the networks, the served endpoints and their
builders, the serving graphs and the compiled-package loader. It imports nothing from
``cycada.training``, ``cycada.export`` or ``cycada.serving``, so a served model carries it."""
