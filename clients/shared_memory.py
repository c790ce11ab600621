"""System shared-memory regions that carry a client's inputs to a server on the same host.

One region per (thread, server, input name): grown when an input outgrows it, registered again
when the server may have lost its registrations (after a restart: :meth:`invalidate`), and all
destroyed by :meth:`close`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading

import numpy as np


class SharedMemoryRegions:
    def __init__(self, headers):
        self.headers = headers
        self._local = threading.local()
        self._regions: list[tuple[object, str, object]] = []
        self._lock = threading.Lock()
        self._names = itertools.count()
        self._generation = 0  # bumped when the server may have lost the registrations

    def invalidate(self) -> None:
        """The server may have restarted: register every region again before its next use."""
        self._generation += 1

    def __len__(self) -> int:
        return len(self._regions)

    def put(self, client, tensor, name: str, array: np.ndarray) -> None:
        """Copy ``array`` into this thread's region for ``name`` and point ``tensor`` at it."""
        # tritonclient takes a second to import: only when a server is called
        import tritonclient.utils.shared_memory as shm

        region = self._region(client, name, array.nbytes)
        shm.set_shared_memory_region(region[1], [np.ascontiguousarray(array)])
        tensor.set_shared_memory(region[0], array.nbytes)

    def _region(self, client, name: str, nbytes: int):
        # tritonclient takes a second to import: only when a server is called
        import tritonclient.utils.shared_memory as shm

        regions = self._local.__dict__.setdefault("regions", {})
        key = (id(client), name)
        current = regions.get(key)
        if current is not None and current[2] < nbytes:  # too small: replace it
            with contextlib.suppress(Exception):
                client.unregister_system_shared_memory(current[0], headers=self.headers)
            self._forget(current)
            current = None
        if current is None:
            label = f"cycada_{os.getpid()}_{threading.get_ident()}_{next(self._names)}"
            handle = shm.create_shared_memory_region(label, f"/{label}", nbytes)
            current = (label, handle, nbytes, -1)
            with self._lock:
                self._regions.append((client, label, handle))
        if current[3] != self._generation:
            with contextlib.suppress(Exception):  # a stale registration from before a restart
                client.unregister_system_shared_memory(current[0], headers=self.headers)
            client.register_system_shared_memory(
                current[0], f"/{current[0]}", current[2], headers=self.headers
            )
            current = (*current[:3], self._generation)
        regions[key] = current
        return current

    def _forget(self, region) -> None:
        """Destroy a region once and drop it from the list ``close`` destroys."""
        # tritonclient takes a second to import: only when a server is called
        import tritonclient.utils.shared_memory as shm

        with self._lock:
            self._regions = [r for r in self._regions if r[1] != region[0]]
        shm.destroy_shared_memory_region(region[1])

    def close(self) -> None:
        # tritonclient takes a second to import: only when a server is called
        import tritonclient.utils.shared_memory as shm

        for client, label, handle in self._regions:
            with contextlib.suppress(Exception):  # the server may be gone already
                client.unregister_system_shared_memory(label, headers=self.headers)
            shm.destroy_shared_memory_region(handle)
        self._regions.clear()
