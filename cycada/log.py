"""Messages go through :mod:`logging`, under the ``cycada`` logger tree.

A library caller sets levels and handlers as for any package (with none set, Python shows
warnings only). The ``cycada`` command installs one handler that writes messages to stderr
through tqdm, so they do not break a progress bar; results go to stdout.
"""

from __future__ import annotations

import logging
import sys


class _ProgressSafeHandler(logging.Handler):
    """Writes each record on its own line above any active tqdm progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # tqdm: only when a bar is shown
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # a closed stderr must not take the command down
            self.handleError(record)


def configure_command_logging(level: int = logging.INFO) -> None:
    """What the ``cycada`` command shows: INFO and above of every ``cycada.*`` logger."""
    logger = logging.getLogger("cycada")
    if any(isinstance(h, _ProgressSafeHandler) for h in logger.handlers):
        return
    handler = _ProgressSafeHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
