"""gRPC client of the served models: readiness, metadata checks, retries, ordered pipelining.

* Connects to one or several server URLs (replicas, used round-robin so work spreads over
  them) and waits until one is ready and serves the model. A replica that fails a request is
  left out for a while (its requests go to the others at once) and tried again later, so a
  replica lost for good costs no request and one that comes back is used again.
* Reads the model's metadata and checks every input's name, dtype and shape before sending.
* Waits out a lost or restarting server (UNAVAILABLE) for ``retry_window`` seconds with
  jittered exponential backoff, moving to the next URL; DEADLINE_EXCEEDED is retried once;
  INVALID_ARGUMENT never.
* :func:`ordered_map` / :meth:`ModelClient.map_ordered` keep a bounded number of requests in
  flight and yield the results in submission order.
* Optional gzip/deflate compression, and system shared memory for inputs when the server runs
  on the same host.
"""

from __future__ import annotations

import collections
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np

from cycada.clients.interrupt import POLL_SECONDS
from cycada.clients.model_signature import ModelSignature
from cycada.clients.shared_memory import SharedMemoryRegions
from cycada.errors import ConfigError, InputError, ServingError
from cycada.grpc_security import GrpcSecurity

LATENCY_WINDOW = 100_000  # request latencies kept for percentiles
MAX_BACKOFF = 2.0  # seconds between retries, at most
RETRYABLE = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")
UNLOADING = ("has no available versions", "Request for unknown model")  # Triton's words


REPLICA_PAUSE = 1.0  # seconds a replica that failed is left out, doubling up to MAX_REPLICA_PAUSE
MAX_REPLICA_PAUSE = 30.0


class Outputs(dict):
    """A response's output arrays by name; ``version`` is the model version that answered."""

    version: str = ""


class Replicas:
    """Round-robin over the servers that answer; one that failed sits out a pause that doubles
    while it keeps failing, then is tried again (thread-safe)."""

    def __init__(self, count: int, clock: Callable[[], float] = time.monotonic):
        self.count, self.clock = count, clock
        self._lock = threading.Lock()
        self._next = itertools.count()
        self._out_until = [0.0] * count
        self._pause = [0.0] * count

    def pick(self) -> int:
        """The next replica that is not sitting out; when all are, the one back soonest."""
        with self._lock:
            now = self.clock()
            start = next(self._next)
            for step in range(self.count):
                index = (start + step) % self.count
                if self._out_until[index] <= now:
                    return index
            return min(range(self.count), key=self._out_until.__getitem__)

    def failed(self, index: int) -> None:
        with self._lock:
            pause = min(MAX_REPLICA_PAUSE, max(REPLICA_PAUSE, 2 * self._pause[index]))
            self._pause[index] = pause
            self._out_until[index] = self.clock() + pause

    def answered(self, index: int) -> None:
        with self._lock:
            self._pause[index] = self._out_until[index] = 0.0

    def any_up(self) -> bool:
        with self._lock:
            now = self.clock()
            return any(until <= now for until in self._out_until)


class RequestRefused(ServingError, InputError):
    """The server refused the request's input (INVALID_ARGUMENT): retrying cannot help."""

    exit_code = InputError.exit_code


def retryable(exc: Exception) -> bool:
    """A lost, restarting or overloaded server (or a timeout): worth sending again.

    A model that is unknown or has no available versions counts too: the client found it ready
    when it connected, so the server is unloading it (a graceful shutdown or a reload).
    """
    message = str(exc)
    if "protocol is restricted" in message:  # a missing or wrong secret: retrying cannot help
        return False
    status = str(getattr(exc, "status", lambda: "")() or "")
    return (
        any(code in status for code in RETRYABLE)
        or "failed to connect" in message.lower()
        or any(sign in message for sign in UNLOADING)
    )


class ModelClient:
    """One model on one or more Triton servers."""

    def __init__(
        self,
        urls: str | list[str],
        model: str,
        version: str = "",
        timeout: float = 30.0,
        retry_window: float = 60.0,
        backoff: float = 0.2,
        compression: str | None = None,
        shared_memory: bool = False,
        security: GrpcSecurity | None = None,
        option: str = "--model",
    ):
        """``option``: the command-line option that named ``model``, for its errors."""
        # tritonclient takes a second to import: only when a server is called
        import tritonclient.grpc as grpcclient

        self.grpc = grpcclient
        self.security = security or GrpcSecurity()
        self.headers = self.security.headers
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ConfigError("no server URL given")
        self.model, self.version, self.timeout = model, version, timeout
        self.option = option
        self.retry_window, self.backoff, self.compression = retry_window, backoff, compression
        self._clients = [self.security.client(url) for url in self.urls]
        self.replicas = Replicas(len(self._clients))
        self.shared_memory = shared_memory
        self.regions = SharedMemoryRegions(self.headers)
        self._cancelled = threading.Event()
        # the most recent requests only: a camera stream runs for days
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        ready = self.wait_ready(timeout)
        self.signature = ModelSignature.from_server(ready, model, version, self.headers)
        self.inputs, self.outputs = self.signature.inputs, self.signature.outputs
        self.max_batch_size = self.signature.max_batch_size

    def check(self, inputs: dict[str, np.ndarray]) -> None:
        """Clear errors when names, dtypes or shapes do not match the model's metadata."""
        self.signature.check(inputs)

    # -- connection and metadata -------------------------------------------------------------
    def wait_ready(self, timeout: float):
        """The client of the first server that is ready and serves the model (at the pinned
        version); the others are used once they answer. A version the server does not have is
        the caller's mistake, reported at once."""
        # tritonclient takes a second to import: only when a server is called
        from tritonclient.utils import InferenceServerException

        deadline = time.monotonic() + timeout
        last = {url: "no answer" for url in self.urls}
        while True:
            for url, client in zip(self.urls, self._clients):
                try:
                    if not client.is_server_ready(headers=self.headers, client_timeout=2):
                        last[url] = "server not ready"
                    elif client.is_model_ready(
                        self.model, self.version, headers=self.headers, client_timeout=2
                    ):
                        return client
                    else:
                        last[url] = self._not_ready(client)
                except InferenceServerException as exc:
                    last[url] = exc.message() or str(exc)
            if time.monotonic() > deadline:
                reasons = "; ".join(f"{url}: {why}" for url, why in last.items())
                raise ServingError(
                    f"no server is ready with model '{self.model}' after {timeout:.0f} s "
                    f"({reasons})"
                )
            time.sleep(0.2)

    def _not_ready(self, client) -> str:
        """Why the model is not ready on a ready server; a model or version the server does
        not have raises (the caller's mistake: waiting cannot help)."""
        # tritonclient takes a second to import: only when a server is called
        from tritonclient.utils import InferenceServerException

        try:
            index = client.get_model_repository_index(headers=self.headers, as_json=True)
        except InferenceServerException:  # not allowed (a repository-protected server)
            index = None
        if index is not None:
            names = sorted({model["name"] for model in index.get("models", [])})
            if names and self.model not in names:
                raise ConfigError(
                    f"{self.option} {self.model}: the server serves no such model (it serves "
                    f"{', '.join(names)})"
                )
        if not self.version:
            return f"model '{self.model}' is not ready"
        try:
            served = client.get_model_metadata(self.model, headers=self.headers).versions
        except InferenceServerException:
            return f"model '{self.model}' is not ready"
        if served and self.version not in served:
            raise ConfigError(
                f"--model-version {self.version}: the server serves '{self.model}' version(s) "
                f"{', '.join(served)}"
            )
        return f"model '{self.model}' version {self.version} is not ready"

    # -- requests -----------------------------------------------------------------------------
    def _input(self, client, name: str, array: np.ndarray):
        tensor = self.grpc.InferInput(name, list(array.shape), self.inputs[name].datatype)
        if self.shared_memory:
            self.regions.put(client, tensor, name, array)
        else:
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
        return tensor

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """One request. UNAVAILABLE (server down, restarting, queue full) is retried, on the
        next URL, with jittered exponential backoff for up to ``retry_window`` seconds after the
        first failure; DEADLINE_EXCEEDED once, with twice the timeout (more would multiply the
        load on an overloaded server); INVALID_ARGUMENT never (``RequestRefused``)."""
        # tritonclient takes a second to import: only when a server is called
        from tritonclient.utils import InferenceServerException

        attempt, first_failure, timeout, deadline_retried = 0, None, self.timeout, False
        while True:
            replica = self.replicas.pick()
            client = self._clients[replica]
            try:
                tensors = [self._input(client, n, a) for n, a in inputs.items()]
                wanted = [self.grpc.InferRequestedOutput(name) for name in outputs]
                started = time.perf_counter()
                result = client.infer(
                    self.model,
                    tensors,
                    model_version=self.version,
                    outputs=wanted,
                    client_timeout=timeout,
                    headers=self.headers,
                    compression_algorithm=self.compression,
                )
                self.latencies_ms.append((time.perf_counter() - started) * 1000)
                self.replicas.answered(replica)
                answer = Outputs((name, result.as_numpy(name)) for name in outputs)
                answer.version = result.get_response().model_version
                return answer
            except InferenceServerException as exc:
                message = exc.message() or str(exc)
                status = str(exc.status() or "")
                now = time.monotonic()
                first_failure = first_failure if first_failure is not None else now
                lost_region = self.shared_memory and "shared memory region" in message
                if (retryable(exc) or lost_region) and self.shared_memory:
                    self.regions.invalidate()  # a restarted server: register the regions again
                if "INVALID_ARGUMENT" in status and not lost_region:
                    raise RequestRefused(f"'{self.model}' refused the request: {message}") from None
                give_up = not (retryable(exc) or lost_region)
                if "DEADLINE_EXCEEDED" in status:
                    give_up, deadline_retried, timeout = deadline_retried, True, timeout * 2
                if give_up or now - first_failure >= self.retry_window:
                    raise ServingError(
                        f"request to '{self.model}' failed after {attempt + 1} attempt(s) in "
                        f"{now - first_failure:.0f} s: {message}"
                    ) from None
                self.replicas.failed(replica)
                if self.replicas.any_up():  # another replica answers: send it there at once
                    attempt += 1
                    continue
                pause = min(MAX_BACKOFF, self.backoff * 2**attempt)
                # jitter, so clients do not stampede; cancel() ends the wait at once
                if self._cancelled.wait(random.uniform(0.5, 1.0) * pause):
                    raise ServingError(
                        f"request to '{self.model}' cancelled while waiting for the server "
                        f"({message})"
                    ) from None
                attempt += 1

    def request(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """Check ``inputs`` and ``outputs`` against the model's metadata, then :meth:`infer`."""
        self.check(inputs)
        unknown = [name for name in outputs if name not in self.outputs]
        if unknown:  # another kind of model (a translator given to segment-video)
            raise ConfigError(
                f"{self.option} {self.model}: the model returns {', '.join(sorted(self.outputs))}"
                f", not {', '.join(unknown)}: name a model of the kind this command needs"
            )
        return self.infer(inputs, outputs)

    def map_ordered(
        self,
        items: Iterable,
        make_inputs: Callable[[object], dict[str, np.ndarray]],
        outputs: list[str],
        window: int = 8,
    ) -> Iterator[tuple[object, dict[str, np.ndarray]]]:
        """(item, outputs) in the order of ``items``, with at most ``window`` in flight.

        ``make_inputs`` runs on the request threads (see :func:`ordered_map`).
        """
        return ordered_map(items, lambda item: self.request(make_inputs(item), outputs), window)

    def cancel(self) -> None:
        """Stop waiting out a lost server: requests between retries fail at once (Ctrl-C
        must not wait for the retry window)."""
        self._cancelled.set()

    def close(self) -> None:
        self.regions.close()
        for client in self._clients:
            client.close()

    def __enter__(self) -> ModelClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ordered_map(
    items: Iterable,
    work: Callable[[object], object],
    window: int = 8,
    poll: Callable[[], None] | None = None,
) -> Iterator[tuple[object, object]]:
    """(item, work(item)) in the order of ``items``, with at most ``window`` calls running.

    ``work`` runs on a pool of ``window`` threads: blocking gRPC calls and OpenCV release the
    GIL, so preparing inputs (resizing, JPEG encoding) overlaps across items instead of
    serialising on the caller's thread. An error ``work`` raises surfaces, in order, as that
    item's result; the calls not yet started are then cancelled. With ``poll``, a result is
    awaited in short waits with ``poll()`` between them (a deferred Ctrl-C raises there).
    """
    pending: collections.deque[tuple[object, Future]] = collections.deque()

    def result(future: Future):
        if poll is None:
            return future.result()
        while True:
            try:
                return future.result(timeout=POLL_SECONDS)
            except FutureTimeout:
                poll()

    with ThreadPoolExecutor(max_workers=window) as pool:
        try:
            for item in items:
                pending.append((item, pool.submit(work, item)))
                while len(pending) >= window:
                    done_item, future = pending.popleft()
                    yield done_item, result(future)
            while pending:
                done_item, future = pending.popleft()
                yield done_item, result(future)
        finally:
            for _, future in pending:
                future.cancel()
