"""`cycada segment-video` and `cycada translate-dir`: the user commands against a Triton server."""

from __future__ import annotations

import argparse
from pathlib import Path

from cycada.benchmarks import BENCHMARKS
from cycada.command_line import (
    Deprecated,
    add_json,
    add_quiet,
    add_repository,
    add_urls,
    at_least_one,
    print_json,
    seconds,
)
from cycada.errors import ConfigError, DataError
from cycada.grpc_security import add_client_security, security_from_args
from cycada.sizes import VIDEO_WIDTH, image_size


def _connection(parser: argparse.ArgumentParser) -> None:
    add_urls(parser)
    parser.add_argument(
        "--model-version",
        default="",
        metavar="N",
        help="the model version to use on every server (default: the newest ready one, so a "
        "new export is picked up as soon as it is served)",
    )
    parser.add_argument("--timeout", type=seconds(), default=30.0, help="seconds per request")
    parser.add_argument(
        "--retry-window",
        type=seconds(zero_allowed=True),
        default=60.0,
        help="seconds to wait out a lost or restarting server, resending what was in flight "
        "(default 60)",
    )
    parser.add_argument("--window", type=at_least_one, default=8, help="requests in flight (>= 1)")
    add_client_security(parser)


def register(commands: argparse._SubParsersAction) -> None:
    _register_video(commands)
    _register_monitor(commands)
    _register_translate(commands)
    register_bench(commands)
    register_demo(commands)


def _register_video(commands: argparse._SubParsersAction) -> None:
    video = commands.add_parser(
        "segment-video",
        help="segment a video (file, camera index, stream URL) through the server",
        description="Segment every frame of SOURCE with the served model and write an overlay "
        "video (Cityscapes palette, legend). Ctrl-C or a lost server leaves a playable MP4 of "
        "what was done and exits non-zero.",
        epilog="example:\n  cycada segment-video dashcam.mp4 --out runs/dashcam-seg.mp4 --encoded",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    video.add_argument("source", metavar="SOURCE", help="video file, camera index or stream URL")
    video.add_argument("--out", type=Path, required=True, metavar="OUT.mp4")
    _connection(video)
    video.add_argument("--model", default="segment")
    video.add_argument(
        "--encoded", action="store_true", help="send JPEG frames (10-20x fewer bytes)"
    )
    video.add_argument(
        "--width", type=int, default=VIDEO_WIDTH, help="model input width (aspect kept)"
    )
    video.add_argument("--alpha", type=float, default=0.5, help="overlay opacity 0..1")
    video.add_argument("--no-legend", action="store_true")
    video.add_argument("--labels-dir", type=Path, help="write per-frame label PNGs (train ids)")
    video.add_argument("--csv", type=Path, help="per-frame class pixel shares")
    video.add_argument(
        "--translated",
        metavar="MODEL",
        help="the frame translated by MODEL (e.g. translate_t2s) beside",
    )
    video.add_argument("--compression", choices=("gzip", "deflate"))
    video.add_argument(
        "--shared-memory", action="store_true", help="inputs via system shared memory (same host)"
    )
    video.add_argument(
        "--resume",
        action="store_true",
        help="continue a partial OUT (after Ctrl-C or a lost server) and its --labels-dir and "
        "--csv from the last frame written",
    )
    video.add_argument(
        "--realtime",
        action="store_true",
        help="read a file at its own frame rate, as a live camera delivers it (for load tests)",
    )
    video.add_argument(
        "--collect",
        type=Path,
        metavar="DIR",
        help="keep the frames the model is unsure of in DIR (JPEGs and collected.csv), to adapt "
        "again with --target folder:DIR",
    )
    video.add_argument(
        "--collect-below",
        type=float,
        default=0.6,
        metavar="P",
        help="with --collect: keep frames whose mean confidence is below P (0..1, default 0.6)",
    )
    video.add_argument(
        "--collect-rate",
        type=float,
        default=1.0,
        metavar="FPS",
        help="with --collect: at most FPS frames kept per second of footage (default 1)",
    )
    add_quiet(video, old_no_progress=True)
    add_json(video, "the closing summary")
    video.set_defaults(handler=run_video)


def _register_translate(commands: argparse._SubParsersAction) -> None:
    translate = commands.add_parser(
        "translate-dir",
        help="translate a folder tree of images into the other domain's style",
        description="Translate every image under SRC through the served generator into "
        "DST/images (same relative paths); with --labels, labels go to DST/labels. Resumable; "
        "--shard i/n splits the work.",
        epilog="example:\n  cycada translate-dir data/gta5/images data/gta5-real --labels "
        "data/gta5/labels",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    translate.add_argument("src", type=Path, metavar="SRC")
    translate.add_argument("dst", type=Path, metavar="DST")
    translate.add_argument("--labels", type=Path, metavar="DIR")
    translate.add_argument("--link-labels", action="store_true", help="hard-link instead of copy")
    translate.add_argument("--model", default="translate_s2t")
    translate.add_argument("--shard", default="0/1", metavar="i/n")
    _connection(translate)
    add_quiet(translate, old_no_progress=True)
    add_json(translate, "the closing summary")
    translate.set_defaults(handler=run_translate, window=4)


def _numbers(kind):
    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = []
        if not values or min(values) <= 0:
            raise argparse.ArgumentTypeError(f"expected positive numbers like 1,2,4, got '{text}'")
        return values

    return parse


def _register_monitor(commands: argparse._SubParsersAction) -> None:
    monitor = commands.add_parser(
        "monitor",
        help="watch served models for a domain shift against their export's baseline",
        description="Each served segmentation model and version against the label-free "
        "signals its export recorded, over the last --window frames it served: frames, mean "
        "confidence, low-confidence share, distance of the class mix; a shift is flagged with "
        "its evidence. Reads the servers' metrics ports; replicas' counts add up. --once: exit "
        "1 when a shift is flagged, 0 when not.",
        epilog="example:\n  cycada monitor --url 127.0.0.1:8002 --once",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_urls(
        monitor,
        default=["127.0.0.1:8002"],
        help="the servers' metrics addresses: host:port or http://.../metrics (default "
        "127.0.0.1:8002)",
    )
    monitor.add_argument(
        "old_urls", nargs="*", action=Deprecated, new="--url", target="url", metavar="URL"
    )
    monitor.add_argument(
        "--window", type=int, default=250, help="frames judged (default 250: 10 s at 25 fps)"
    )
    monitor.add_argument(
        "--min-frames", type=at_least_one, default=50, help="fewer frames are not judged"
    )
    monitor.add_argument("--interval", type=float, default=2.0, help="seconds between readings")
    monitor.add_argument("--once", action="store_true", help="print the state once and exit")
    monitor.add_argument(
        "--over",
        type=float,
        default=0.0,
        metavar="S",
        help="with --once: judge only the frames served in the next S seconds (default: every "
        "frame since the version loaded)",
    )
    monitor.add_argument("--json", action="store_true", help="JSON (one line per reading live)")
    monitor.set_defaults(handler=_run_monitor)


def _run_monitor(args: argparse.Namespace) -> int:
    # imported when the command runs: the command line starts without it
    from cycada.clients.monitor import run_monitor

    return run_monitor(args)


def register_demo(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo",
        help="the whole product end to end on this machine (about 5 minutes on 2 CPU cores)",
        description="Generate synthetic scenes and a clip, train the CyCADA segmentation "
        "pipeline (demo preset), export, start the embedded Triton server, segment the clip "
        "through gRPC, translate a folder, run a short bench, list the artifacts, stop.",
        epilog="examples:\n  cycada demo\n  cycada demo --video my_dashcam.mp4 --out runs/mine",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument(
        "--video",
        help="adapt to this video file (its frames are the unlabelled target), then segment it",
    )
    demo.add_argument("--smoke", action="store_true", help="a one-minute version (for tests)")
    demo.set_defaults(handler=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    # imported when the command runs: the command line starts without it
    from cycada.clients.demo import run_demo
    from cycada.clients.video import open_source

    if args.video is not None:
        if not Path(args.video).is_file():
            raise DataError(
                f"--video {args.video}: expected a video file to adapt to (a camera or URL can "
                "be segmented with cycada segment-video)"
            )
        open_source(args.video).release()  # fail before training when it cannot be read
    run_demo(args.out, args.video, args.smoke)
    return 0


def register_bench(commands: argparse._SubParsersAction) -> None:

    others = "\n".join(f"  {name:<12} {text}" for name, (_, text) in BENCHMARKS.items())
    bench = commands.add_parser(
        "bench",
        help="every benchmark: `cycada bench NAME --help` (default NAME: sweep)",
        description="cycada bench [NAME] [OPTIONS]: NAME is one of\n" + others + "\n\n"
        "Without NAME (or with sweep): a concurrency sweep (and --rate request rates) against "
        "the served model, with Triton's queue/compute times, then every in-process engine "
        "installed, on the same input. Starts its own server on REPOSITORY unless --url is "
        "given. Writes bench.json, bench.csv (perf_analyzer columns), bench.md and bench.png. "
        "Every benchmark's JSON opens with the same header: machine, versions, command, commit.",
        epilog="examples:\n  cycada bench sweep --repository model_repository --model segment "
        "--size 512x256 --concurrency 1,2,4 --out runs/bench\n  cycada bench segmenters "
        "--network fastscnn --size 512x256 --out runs/bench-seg",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_repository(bench, positional_alias=True)
    bench.add_argument("--model", default="segment")
    add_urls(bench, default=[], help="a running server (default: start one on --repository)")
    bench.add_argument(
        "--model-version", default="", metavar="N", help="the version to measure (default newest)"
    )
    bench.add_argument(
        "--retry-window",
        type=seconds(zero_allowed=True),
        default=60.0,
        help="seconds each request waits out a lost or restarting server before it counts as "
        "an error (default 60; its latency includes the wait)",
    )
    bench.add_argument(
        "--size",
        type=image_size,
        default=(512, 256),
        metavar="WIDTHxHEIGHT",
        help="default 512x256",
    )
    bench.add_argument("--concurrency", type=_numbers(int), default=[1, 2, 4])
    bench.add_argument("--rate", type=_numbers(float), default=[], help="requests/s, open loop")
    bench.add_argument("--seconds", type=seconds(), default=5.0, help="measurement window")
    bench.add_argument("--warmup", type=seconds(zero_allowed=True), default=2.0)
    bench.add_argument("--no-served", action="store_true")
    bench.add_argument("--no-in-process", action="store_true")
    bench.add_argument("--compile", action="store_true", help="also torch.compile in process")
    bench.add_argument("--out", type=Path, default=Path("runs/bench"))
    bench.set_defaults(handler=run_bench_command)


def run_bench_command(args: argparse.Namespace) -> int:
    # imported when the command runs: the command line starts without it
    from cycada.clients.bench import run_bench

    if len(args.url) > 1:
        raise ConfigError(f"--url {','.join(args.url)}: the sweep measures one server, give one")
    run_bench(
        args.repository,
        args.model,
        args.url[0] if args.url else None,
        args.size,
        args.concurrency,
        args.rate,
        args.seconds,
        args.warmup,
        args.out,
        not args.no_served,
        not args.no_in_process,
        args.compile,
        args.retry_window,
        args.model_version,
    )
    print((args.out / "bench.md").read_text())
    print(f"bench: results in {args.out}/bench.{{json,csv,md,png}}")
    return 0


def run_video(args: argparse.Namespace) -> int:
    # imported when the command runs: the command line starts without it
    from cycada.clients.collect import CollectOptions
    from cycada.clients.video import VideoOptions, segment_video

    collect = None
    if args.collect is not None:
        collect = CollectOptions(args.collect, args.collect_below, args.collect_rate)
    if not 0.0 <= args.alpha <= 1.0:
        raise DataError(f"--alpha {args.alpha}: expected a value between 0 and 1")
    options = VideoOptions(
        urls=args.url,
        model=args.model,
        encoded=args.encoded,
        width=args.width,
        alpha=args.alpha,
        legend=not args.no_legend,
        labels_dir=args.labels_dir,
        csv_path=args.csv,
        translate_model=args.translated,
        window=args.window,
        timeout=args.timeout,
        retry_window=args.retry_window,
        security=security_from_args(args),
        compression=args.compression,
        shared_memory=args.shared_memory,
        progress=not args.quiet,
        resume=args.resume,
        realtime=args.realtime,
        model_version=args.model_version,
        collect=collect,
    )
    summary = segment_video(args.source, args.out, options)
    if args.json:
        print_json(summary)
    return 0


def run_translate(args: argparse.Namespace) -> int:
    # imported when the command runs: the command line starts without it
    from cycada.clients.translate_dir import parse_shard, translate_dir

    summary = translate_dir(
        args.src,
        args.dst,
        args.url,
        model=args.model,
        labels=args.labels,
        link_labels=args.link_labels,
        shard=parse_shard(args.shard),
        window=args.window,
        timeout=args.timeout,
        retry_window=args.retry_window,
        security=security_from_args(args),
        progress=not args.quiet,
        model_version=args.model_version,
    )
    if args.json:
        print_json(summary)
        return 1 if summary.failed else 0
    for name in summary.non_images[:10]:
        print(f"skipped non-image file: {name}")
    for failure in summary.failed[:10]:
        print(f"failed: {failure}")
    print(f"translate-dir: {summary.line()} → {args.dst}")
    return 1 if summary.failed else 0
