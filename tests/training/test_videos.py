"""Videos as an unlabelled target: listing, sampling, near-duplicates, bad files, atomicity."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from cycada.errors import DataError
from cycada.training.segmentation import videos as videos_module
from cycada.training.segmentation.videos import FrameSampling, extract_frames, list_videos
from tests.helpers import data_path


def write_video(path, frames, fps=10.0, codec="MJPG"):
    """An AVI of the given BGR frames (MJPG: every frame decodable on its own)."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def moving_frames(count, seed=0, size=(64, 48)):
    """Frames that differ clearly from one another (a bright square moving over noise)."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    frames = []
    for i in range(count):
        frame = np.roll(background, 7 * i, axis=1).copy()
        cv2.rectangle(frame, (i * 3 % size[0], 5), (i * 3 % size[0] + 15, 25), (255, 255, 255), -1)
        frames.append(frame)
    return frames


def test_list_videos_file_folder_and_list(tmp_path):
    a = write_video(tmp_path / "a.avi", moving_frames(3))
    (tmp_path / "sub").mkdir()
    b = write_video(tmp_path / "sub" / "b.avi", moving_frames(3))
    (tmp_path / "notes.txt").write_text("# fleet\nsub/b.avi\n\na.avi  # first camera\n")
    assert list_videos(a) == [a]
    assert list_videos(tmp_path) == [a, b]
    assert list_videos(tmp_path / "notes.txt") == [b, a]
    with pytest.raises(DataError, match="does not exist"):
        list_videos(tmp_path / "nope.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no video files"):
        list_videos(tmp_path / "empty")


@pytest.mark.data
def test_real_clip_sampled_at_one_fps_and_every_frame(tmp_path):
    clip = data_path("videos", "highway_day_1280x720.mp4")  # 38 frames at 25 fps
    log = []
    one = extract_frames(
        str(clip), tmp_path / "one", FrameSampling(fps=1.0, width=320), log=log.append, quiet=True
    )
    assert len(one.frames) == 2  # t = 0 s and t = 1 s
    with open(tmp_path / "one" / "index.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["frame_number"], r["time_s"]) for r in rows] == [("0", "0.0"), ("25", "1.0")]
    assert cv2.imread(str(one.frames[0])).shape == (180, 320, 3)

    def every_frame():
        sampling = FrameSampling(fps=float("inf"), dedup=0)
        return extract_frames(str(clip), tmp_path / "all", sampling, log=log.append, quiet=True)

    every = every_frame()
    assert len(every.frames) == 38 and every.videos[0].decoded == 38
    again = every_frame()  # unchanged videos and sampling: the frames on disk are reused
    assert again.frames == every.frames and "already extracted" in log[-1]


def test_near_duplicates_dropped_and_cap_spread_over_videos(tmp_path):
    still = moving_frames(1)[0]
    frames = moving_frames(10) + [still] * 20 + moving_frames(10, seed=1)  # waiting at a light
    (tmp_path / "v").mkdir()
    write_video(tmp_path / "v" / "a.avi", frames)
    write_video(tmp_path / "v" / "b.avi", moving_frames(40, seed=2))
    sampling = FrameSampling(fps=float("inf"), dedup=1.5)
    index = extract_frames(str(tmp_path / "v"), tmp_path / "out", sampling, log=print, quiet=True)
    report_a, report_b = index.videos
    assert report_a.decoded == 40 and report_a.duplicates >= 19 and report_a.kept <= 21
    assert report_b.duplicates == 0 and report_b.kept == 40
    capped = extract_frames(
        str(tmp_path / "v"),
        tmp_path / "capped",
        FrameSampling(fps=float("inf"), max_frames=20, dedup=0),
        log=print,
        quiet=True,
    )
    per_video = [r.kept for r in capped.videos]
    assert len(capped.frames) <= 20 and min(per_video) >= 8  # both videos, not the first only
    assert len(list((tmp_path / "capped" / "images").rglob("*.jpg"))) == len(capped.frames)


def test_bad_videos_are_skipped_by_name_and_no_readable_video_is_an_error(tmp_path):
    folder = tmp_path / "fleet"
    folder.mkdir()
    write_video(folder / "good.avi", moving_frames(12))
    (folder / "corrupt.mp4").write_bytes(b"\x00\x01garbage" * 100)
    whole = write_video(tmp_path / "whole.avi", moving_frames(60)).read_bytes()
    (folder / "truncated.avi").write_bytes(whole[: len(whole) // 3])
    cv2.VideoWriter(
        str(folder / "empty.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48)
    ).release()  # a video with zero frames
    log = []
    index = extract_frames(
        str(folder),
        tmp_path / "frames",
        FrameSampling(fps=float("inf"), dedup=0),
        log=log.append,
        quiet=True,
    )
    status = {r.path.rsplit("/", 1)[-1]: r for r in index.videos}
    assert status["good.avi"].status == "ok" and len(index.frames) == 12
    for name in ("corrupt.mp4", "truncated.avi", "empty.avi"):
        assert status[name].status == "skipped" and status[name].reason
        assert any(name in line for line in log), name
    assert "truncated" in status["truncated.avi"].reason
    assert all("good" in str(f) for f in index.frames)  # no frame of a skipped video is kept

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.mp4").write_bytes(b"not a video")
    (bad / "b.mov").write_bytes(b"")
    with pytest.raises(DataError, match="no readable video frames"):
        extract_frames(str(bad), tmp_path / "none", FrameSampling(), log=log.append, quiet=True)
    assert not (tmp_path / "none").exists()
    assert not list(tmp_path.glob(".none.partial-*"))


def test_sampling_rejects_non_positive_rates():
    for fps in (0, -1.0):
        with pytest.raises(DataError, match="must be > 0"):
            FrameSampling(fps=fps)


def test_failing_writer_leaves_the_previous_frames_intact(tmp_path, monkeypatch):
    write_video(tmp_path / "a.avi", moving_frames(30))
    root = tmp_path / "target_frames"
    first = extract_frames(
        str(tmp_path / "a.avi"),
        root,
        FrameSampling(fps=float("inf"), dedup=0),
        log=print,
        quiet=True,
    )
    before = sorted(p.name for p in root.rglob("*"))
    calls = {"n": 0}
    original = videos_module._write_file

    def disk_fills_up(path, data):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(28, "No space left on device")
        original(path, data)

    monkeypatch.setattr(videos_module, "_write_file", disk_fills_up)
    with pytest.raises(DataError, match="No space left on device"):
        extract_frames(str(tmp_path / "a.avi"), root, FrameSampling(fps=5.0), log=print, quiet=True)
    assert sorted(p.name for p in root.rglob("*")) == before  # the old extraction still whole
    assert len(first.frames) == 30
    assert not list(tmp_path.glob(".target_frames.partial-*"))


def test_image_folder_written_as_a_video_reads_back_frame_for_frame(tmp_path):
    from cycada.training.segmentation.scene_writer import write_image_video

    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(moving_frames(5)):
        cv2.imwrite(str(folder / f"{index:03d}.png"), frame)
    count = write_image_video(folder, tmp_path / "frames.mp4", fps=5)
    index = extract_frames(
        str(tmp_path / "frames.mp4"),
        tmp_path / "out",
        FrameSampling(fps=float("inf"), dedup=0),
        log=print,
        quiet=True,
    )
    assert count == 5 and len(index.frames) == 5 and index.videos[0].fps == 5
    with pytest.raises(DataError, match="holds no images"):
        write_image_video(tmp_path / "out", tmp_path / "none.mp4")
    assert not (tmp_path / "none.mp4").exists()


def test_target_fps_on_the_command_line():
    import argparse

    from cycada.training.segmentation.cli import _frame_rate

    assert _frame_rate("all") == float("inf") and _frame_rate("2.5") == 2.5
    for bad in ("0", "-1", "fast"):
        with pytest.raises(argparse.ArgumentTypeError):
            _frame_rate(bad)


def test_an_extraction_killed_with_9_leaves_nothing_behind_the_next_run(tmp_path):
    """kill -9 during frame extraction leaves its hidden partial folder; the next extraction
    (any process) removes it when its process is gone, and a living one's stays."""
    import os
    import signal
    import subprocess
    import sys
    import time

    write_video(tmp_path / "long.avi", moving_frames(400))
    root = tmp_path / "target_frames"
    video = str(tmp_path / "long.avi")
    code = (
        "from pathlib import Path; from cycada.training.segmentation.videos import "
        f"FrameSampling, extract_frames; extract_frames({video!r}, Path({str(root)!r}), "
        "FrameSampling(fps=float('inf'), dedup=0), log=print, quiet=True)"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".target_frames.partial-*/**/*.jpg")):
        assert child.poll() is None and time.monotonic() < deadline, "no extraction under way"
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    (left,) = tmp_path.glob(".target_frames.partial-*")
    living = tmp_path / f".target_frames.partial-{os.getpid()}-other"
    living.mkdir()  # not a pid: never taken for a dead extraction's
    index = extract_frames(
        str(tmp_path / "long.avi"), root, FrameSampling(fps=5.0), log=print, quiet=True
    )
    assert not left.exists() and living.exists() and index.frames
