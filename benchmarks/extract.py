"""Frame extraction speed against a plain OpenCV decode loop of the same file, same process.

    cycada bench extract --video ../shared/data/videos/highway_day_1280x720.mp4

For each sampling (``--target-fps 1`` and every frame) the extraction of ``video:FILE`` into a
fresh folder (decode, sample, near-duplicate test, resize to ``--width``, JPEG, index) is timed
``--repeats`` times alternately with a loop that only decodes the file (``grab`` + ``retrieve``
every frame, what any reader of the file must do). Rates are frames decoded per second; the
ratio is extraction / decode, both medians. ``--copies N`` also times one extraction of a list
naming the file N times (several videos in parallel, as a fleet folder runs).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import cv2

from cycada.bench_results import write_results
from cycada.command_line import at_least_one, command_parser
from cycada.training.segmentation.videos import FrameSampling, extract_frames


def decode_loop(path: Path) -> int:
    """Every frame decoded to BGR, nothing else: the baseline."""
    capture = cv2.VideoCapture(str(path))
    frames = 0
    while capture.grab():
        ok, _ = capture.retrieve()
        frames += ok
    capture.release()
    return frames


def time_extraction(spec: str, work: Path, sampling: FrameSampling) -> tuple[float, int, int]:
    """(seconds, frames decoded, frames kept) of one extraction into a fresh folder."""
    root = work / "target_frames"
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    index = extract_frames(spec, root, sampling, log=lambda _: None, quiet=True)
    seconds = time.perf_counter() - started
    return seconds, sum(v.decoded for v in index.videos), len(index.frames)


def bench(video: Path, width: int, repeats: int, copies: int) -> dict:
    results: dict = {"video": str(video), "width": width, "repeats": repeats, "rows": []}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        decode_loop(video)  # warm the file cache and the codec
        for label, fps in (("1 fps", 1.0), ("every frame", float("inf"))):
            sampling = FrameSampling(fps=fps, width=width)
            decode_rates, extract_rates, kept = [], [], 0
            for _ in range(repeats):
                started = time.perf_counter()
                decoded = decode_loop(video)
                decode_rates.append(decoded / (time.perf_counter() - started))
                seconds, decoded, kept = time_extraction(str(video), work, sampling)
                extract_rates.append(decoded / seconds)
            row = {
                "sampling": label,
                "videos": 1,
                "frames_kept": kept,
                "decode_fps": statistics.median(decode_rates),
                "extract_fps": statistics.median(extract_rates),
            }
            row["ratio"] = row["extract_fps"] / row["decode_fps"]
            results["rows"].append(row)
            if copies > 1:
                listing = work / "fleet.txt"
                listing.write_text(f"{video.resolve()}\n" * copies)
                started = time.perf_counter()
                decoded = sum(decode_loop(video) for _ in range(copies))
                decode_fps = decoded / (time.perf_counter() - started)
                seconds, decoded, kept = time_extraction(str(listing), work, sampling)
                results["rows"].append(
                    {
                        "sampling": label,
                        "videos": copies,
                        "frames_kept": kept,
                        "decode_fps": decode_fps,
                        "extract_fps": decoded / seconds,
                        "ratio": decoded / seconds / decode_fps,
                    }
                )
    return results


def markdown(results: dict) -> str:
    lines = [
        f"Frame extraction of {results['video']} at width {results['width']} (median of "
        f"{results['repeats']}), frames decoded per second:",
        "",
        "| sampling | videos | frames kept | decode loop fps | extraction fps | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['sampling']} | {row['videos']} | {row['frames_kept']} | "
            f"{row['decode_fps']:.0f} | {row['extract_fps']:.0f} | {row['ratio']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        "bench extract",
        __doc__.split("\n\n")[0],
        "cycada bench extract --video dashcam.mp4 --width 512 --out runs/bench-extract",
    )
    parser.add_argument("--video", required=True, type=Path)
    parser.add_argument(
        "--width", type=at_least_one, default=512, help="resize width (quick preset: 512)"
    )
    parser.add_argument("--repeats", type=at_least_one, default=7)
    parser.add_argument("--copies", type=int, default=10, help="also a list of N copies")
    parser.add_argument("--out", type=Path, help="write bench_extract.json and .md here")
    args = parser.parse_args(argv)
    if not args.video.is_file():
        parser.error(f"--video {args.video} is not a file")
    results = bench(args.video, args.width, args.repeats, args.copies)
    text = markdown(results)
    print(text)
    write_results(args.out, "bench_extract", results, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
