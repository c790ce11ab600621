"""Deployment figures: a model update under load, replicas against one server, failover.

    cycada bench deploy --run runs/demo --clip dashcam.mp4 --out runs/bench-deploy

* ``update``: a server polling its repository answers a closed loop of requests while
  ``cycada export`` writes a new version of the run into it: seconds from the end of the export
  to the new version answering, and requests failed meanwhile (goal 0).
* ``replicas``: segment-video on the clip against one server pinned to one CPU, then against
  two servers pinned to a CPU each (``--url a,b``): frames/s of each and their ratio.
* ``failover``: segment-video on the clip at its frame rate against two servers; one
  tritonserver is killed with SIGKILL a few seconds in and stays dead: frames lost (goal 0)
  and the longest wait between two frames written, beside the same figure without a kill.

Without ``--run``, a run of seeded, untrained Fast-SCNN weights and ResNet-6 generators (the
same compute as a trained one) is made in OUT; without ``--clip``, the shared data's dashcam clip.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import cv2
import tritonclient.grpc as grpcclient

from cycada.bench_results import write_results
from cycada.benchmarks.served import random_run
from cycada.clients.video import VideoOptions, _model_input, segment_video
from cycada.command_line import at_least_one
from cycada.errors import DataError
from cycada.export.exporter import ExportOptions, export_run
from cycada.export.parity import default_data_root
from cycada.export.repository import versions
from cycada.serving.server import ServerOptions, TritonServer

PARTS = ("update", "replicas", "failover")


def default_clip() -> Path:
    """The shared data's dashcam clip (``$CYCADA_DATA``), the deployment and drift benches'."""
    return default_data_root() / "videos" / "highway_day_960x540.mp4"


def _failed(url: str, model: str) -> int:
    stats = grpcclient.InferenceServerClient(url).get_inference_statistics(model)
    return sum(s.inference_stats.fail.count for s in stats.model_stats)


def _closed_loop(url: str, frame, window: int, stop: threading.Event, tally: dict) -> None:
    """``window`` threads sending ``frame`` back to back until ``stop``; no retries, so every
    failure counts. ``tally``: requests, errors (messages) and the versions that answered."""
    lock = threading.Lock()

    def loop() -> None:
        client = grpcclient.InferenceServerClient(url)
        tensor = grpcclient.InferInput("images", list(frame.shape), "UINT8")
        tensor.set_data_from_numpy(frame)
        while not stop.is_set():
            try:
                version = client.infer("segment", [tensor]).get_response().model_version
                with lock:
                    tally["requests"] += 1
                    tally["versions"][version] = tally["versions"].get(version, 0) + 1
            except Exception as exc:  # counted, never retried: the figure is failures
                with lock:
                    tally["requests"] += 1
                    tally["errors"].append(str(exc)[:200])

    threads = [threading.Thread(target=loop) for _ in range(window)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def measure_update(run: Path, repository: Path, frame, window: int) -> dict:
    """A new export under a closed loop of ``window`` requests in flight."""
    options = ServerOptions.on_free_ports(repository, poll_seconds=1)
    with TritonServer(options) as server:
        newest = str(versions(repository / "segment")[-1] + 1)
        tally: dict = {"requests": 0, "errors": [], "versions": {}}
        stop = threading.Event()
        load = threading.Thread(
            target=_closed_loop, args=(server.grpc_url, frame, window, stop, tally)
        )
        load.start()
        started = time.perf_counter()
        try:
            export_run(run, repository, ExportOptions(), log=lambda _: None)
            exported = time.perf_counter()
            client = grpcclient.InferenceServerClient(server.grpc_url)
            while not client.is_model_ready("segment", newest):
                time.sleep(0.05)
            ready = time.perf_counter()
            time.sleep(3.0)  # and a few seconds on the new version
        finally:
            stop.set()
            load.join()
        return {
            "export_s": round(exported - started, 1),
            "export_end_to_new_version_ready_s": round(ready - exported, 2),
            "new_version": newest,
            "requests_during_update": tally["requests"],
            "answered_by_version": tally["versions"],
            "failed_requests": len(tally["errors"]),
            "server_failed_requests": _failed(server.grpc_url, "segment"),
            "error_messages": sorted(set(tally["errors"]))[:5],
        }


def _video(clip: Path, urls: list[str], out: Path, width: int, realtime: bool) -> dict:
    options = VideoOptions(urls=urls, width=width, progress=False, realtime=realtime)
    summary = segment_video(str(clip), out, options)
    return {
        "frames_read": summary.frames_read,
        "frames_written": summary.frames_written,
        "fps": round(summary.fps, 2),
        "p99_ms": round(summary.p99_ms, 1),
        "longest_gap_s": round(summary.longest_gap_s, 3),
    }


def _replica_set(repository: Path, count: int, pin: bool) -> list[TritonServer]:
    cpus = sorted(os.sched_getaffinity(0))
    servers = []
    for index in range(count):
        chosen = {cpus[index % len(cpus)]} if pin else None
        options = ServerOptions.on_free_ports(repository, models=["segment"], cpus=chosen)
        servers.append(TritonServer(options).start(300))
    return servers


def measure_replicas(repository: Path, clip: Path, out: Path, width: int) -> dict:
    result = {}
    for count in (1, 2):
        servers = _replica_set(repository, count, pin=True)
        try:
            urls = [server.grpc_url for server in servers]
            _video(clip, urls, out / f"warmup-{count}.mp4", width, False)
            result[f"{count}_replica"] = _video(
                clip, urls, out / f"video-{count}.mp4", width, False
            )
            result[f"{count}_replica"]["server_cpus"] = [sorted(s.options.cpus) for s in servers]
        finally:
            for server in servers:
                server.stop()
    result["ratio_2_to_1"] = round(result["2_replica"]["fps"] / result["1_replica"]["fps"], 3)
    return result


def measure_failover(
    repository: Path, clip: Path, out: Path, width: int, kill_after: float
) -> dict:
    result = {}
    for killed in (False, True):
        servers = _replica_set(repository, 2, pin=False)
        try:
            urls = [server.grpc_url for server in servers]
            _video(clip, urls, out / "warmup-failover.mp4", width, False)
            timer = None
            if killed:
                victim = servers[1].process.pid
                timer = threading.Timer(kill_after, os.kill, (victim, signal.SIGKILL))
                timer.start()
            name = "with_kill" if killed else "without_kill"
            result[name] = _video(clip, urls, out / f"failover-{name}.mp4", width, True)
            result[name]["frames_lost"] = (
                result[name]["frames_read"] - result[name]["frames_written"]
            )
            if timer is not None:
                timer.join()
                result[name]["killed_replica_exit_code"] = servers[1].process.wait(10)
        finally:
            for server in servers:
                server.stop()
    result["kill_after_s"] = kill_after
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cycada bench deploy",
        description=__doc__.splitlines()[0],
        epilog="example:\n  cycada bench deploy --run runs/demo --out runs/bench-deploy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", type=Path, help="a training run to export (default: seeded)")
    parser.add_argument("--clip", type=Path, default=None, help="a video (default: dashcam)")
    parser.add_argument(
        "--width", type=at_least_one, default=512, help="model input width of the video"
    )
    parser.add_argument(
        "--window", type=at_least_one, default=4, help="requests in flight (update)"
    )
    parser.add_argument("--kill-after", type=float, default=5.0, metavar="SECONDS")
    parser.add_argument("--only", choices=PARTS, action="append", help="one part (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-deploy"))
    args = parser.parse_args(argv)
    clip = args.clip or default_clip()
    capture = cv2.VideoCapture(str(clip))
    ok, first = capture.read()
    capture.release()
    if not ok:
        raise DataError(f"--clip {clip}: expected a video OpenCV can read")
    args.out.mkdir(parents=True, exist_ok=True)
    run = args.run
    if run is None:
        run = random_run("fastscnn", args.out / "run", generators="resnet6")
    repository = args.out / "repository"
    shutil.rmtree(repository, ignore_errors=True)
    export_run(run, repository, ExportOptions(), log=lambda _: None)
    request, _ = _model_input(first, VideoOptions(width=args.width))
    frame = request["images"]
    parts = args.only or list(PARTS)
    results: dict = {"clip": str(clip), "width": args.width, "cpus": os.cpu_count()}
    if "update" in parts:
        results["update"] = measure_update(run, repository, frame, args.window)
        print(json.dumps({"update": results["update"]}), flush=True)
    if "replicas" in parts:
        results["replicas"] = measure_replicas(repository, clip, args.out, args.width)
        print(json.dumps({"replicas": results["replicas"]}), flush=True)
    if "failover" in parts:
        results["failover"] = measure_failover(
            repository, clip, args.out, args.width, args.kill_after
        )
        print(json.dumps({"failover": results["failover"]}), flush=True)
    write_results(args.out, "deploy", results)
    return 0
