"""The benchmarks behind ``cycada bench NAME``: the registry of every subcommand (the latency
sweep itself lives with the clients, the others in this package)."""

from __future__ import annotations

# `cycada bench NAME ...`: every benchmark of the project under one command; each module's
# main(argv) takes the rest of the command line (`cycada bench NAME --help` lists its options)
BENCHMARKS = {
    "sweep": ("cycada.clients.cli", "served concurrency/rate sweep + in-process engines"),
    "served": ("cycada.benchmarks.served", "served vs in-process, frames over gRPC"),
    "video": ("cycada.benchmarks.video", "segment-video against the served throughput"),
    "streams": ("cycada.benchmarks.streams", "N live segment-video streams at once: fps, p99"),
    "segmenters": ("cycada.benchmarks.segmenters", "segmenter inference: eager vs ORT"),
    "pixel-stage": ("cycada.benchmarks.pixel_stage", "pixel-stage steps/s, with/without L_sem"),
    "translation-fidelity": (
        "cycada.benchmarks.translation_fidelity",
        "digit translations read by a target-trained classifier",
    ),
    "digits-paper": (
        "cycada.benchmarks.digits_paper",
        "the paper's digit schedule, U→M and M→U at once, against Table 2",
    ),
    "seg-stages": ("cycada.benchmarks.seg_stages", "each segmentation stage's step time"),
    "extract": ("cycada.benchmarks.extract", "video frame extraction vs a decode loop"),
    "batcher": (
        "cycada.benchmarks.batcher",
        "Triton batcher settings side by side: throughput, p99, 500 ms stalls",
    ),
    "soak": ("cycada.benchmarks.soak", "saturating load for minutes: errors, drift, memory"),
    "kill-resume": ("cycada.benchmarks.kill_resume", "kill -9 training, resume, compare"),
    "restart-storm": (
        "cycada.benchmarks.restart_storm",
        "cycada serve with its server killed every few seconds, its port held at times",
    ),
    "video-resume": (
        "cycada.benchmarks.video_resume",
        "segment-video killed with -9 at random moments and resumed, against one run",
    ),
    "drift": (
        "cycada.benchmarks.drift",
        "served signals' cost, seconds to flag a dusk shift, the stage verdict against labels",
    ),
    "deploy": (
        "cycada.benchmarks.deploy",
        "a model update under load, two replicas against one, failover when one dies",
    ),
}


def bench_main(name: str, argv: list[str]) -> int:
    """Run benchmark ``name`` (not the sweep) with ``argv``."""
    # each benchmark's module loads when it runs
    import importlib

    return int(importlib.import_module(BENCHMARKS[name][0]).main(argv) or 0)
