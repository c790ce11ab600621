"""kill -9 a training command at random moments, resume it each time, check what it left.

    cycada bench kill-resume --kills 10 --out runs/kill-digits -- \
        cycada train digits --source usps --target mnist --preset quick --quiet

The command (everything after ``--``; its ``--out`` is added) runs once uninterrupted into
``OUT/uninterrupted``, then again into ``OUT/killed``, where it is killed with SIGKILL up to
``--kills`` times (each time once it has saved something new, plus a random delay) and
restarted each time with the same arguments. The kill takes every process of the command
(its loader workers; under ``torchrun`` every rank), as a power cut would. After every kill
each checkpoint in the run folder must read back whole; at the end both runs'
``metrics.json`` are compared. Writes ``kill_resume.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cycada.checkpoint import load_state, read_header
from cycada.command_line import at_least_one, command_parser


def check_checkpoints(run_dir: Path) -> list[str]:
    """Every finished checkpoint and resume state reads back; returns the ones checked."""
    checked = []
    for path in sorted((run_dir / "checkpoints").glob("*.safetensors")):
        read_header(path)
        checked.append(path.name)
    for path in sorted((run_dir / "checkpoints").glob("*.resume*.pt")):  # with ranks' files
        load_state(path)
        checked.append(path.name)
    return checked


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren...), read from /proc.

    A process group is not enough: torchrun starts each rank in a session of its own. Without
    /proc (not Linux) there are none to find, and only ``pid`` is killed."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state
        children.setdefault(parent, []).append(int(entry.name))
    found, waiting = [], [pid]
    while waiting:
        for child in children.get(waiting.pop(), []):
            found.append(child)
            waiting.append(child)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it. Killing ``pid`` alone would leave torchrun's
    ranks running, each in a session of its own, beside the restarted command."""
    for target in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)


def _run(command: list[str], out: Path) -> tuple[int, float]:
    started = time.monotonic()
    done = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}")
    return done.returncode, time.monotonic() - started


def final_metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())["final"]


def _progress(run_dir: Path) -> set[tuple[str, int]]:
    """What the run has saved so far: its checkpoints and resume files with their times."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return set()
    return {(p.name, p.stat().st_mtime_ns) for p in folder.iterdir() if not p.name.startswith(".")}


def kill_and_resume(command: list[str], out: Path, kills: int, seed: int = 0) -> dict[str, Any]:
    """Each attempt runs until the run saves something new (a checkpoint or a resume state),
    then for a random further 0-40 % of ``duration / kills``, then gets SIGKILL: the kills land
    at random moments spread over every stage, not all in the first seconds."""
    rng = random.Random(seed)
    _, duration = _run(command, out / "uninterrupted")
    killed_dir = out / "killed"
    events = []
    for number in range(kills):
        before = _progress(killed_dir)
        process = subprocess.Popen(
            [*command, "--out", str(killed_dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started = time.monotonic()
        while process.poll() is None and _progress(killed_dir) <= before:
            time.sleep(0.05)
        extra = rng.uniform(0.0, 0.4) * duration / kills
        try:
            process.wait(timeout=extra)
            finished = True  # it completed before the kill: resume has nothing left to do
        except subprocess.TimeoutExpired:
            kill_tree(process.pid)  # every process of the command, as a power cut would
            process.wait()
            finished = False
        checked = check_checkpoints(killed_dir) if killed_dir.exists() else []
        events.append(
            {
                "kill": number + 1,
                "after_s": round(time.monotonic() - started, 2),
                "finished": finished,
                "ok": checked,
            }
        )
        if finished:
            break
    _, resumed_seconds = _run(command, killed_dir)
    result = {
        "command": command,
        "kills": events,
        "killed_mid_run": sum(not event["finished"] for event in events),
        "uninterrupted_seconds": round(duration, 1),
        "final_resume_seconds": round(resumed_seconds, 1),
        "uninterrupted": final_metrics(out / "uninterrupted"),
        "killed": final_metrics(killed_dir),
        "checkpoints": check_checkpoints(killed_dir),
    }
    (out / "kill_resume.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = command_parser(
        "bench kill-resume",
        __doc__.split("\n\n")[0],
        "cycada bench kill-resume --kills 10 --out runs/kill -- cycada train digits "
        "--preset quick --out runs/k",
    )
    parser.add_argument("--kills", type=at_least_one, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    if not command:
        parser.error("expected the training command after --, e.g. -- cycada train digits ...")
    if command and command[0] == "cycada":
        command = [sys.executable, "-m", "cycada.cli", *command[1:]]
    result = kill_and_resume(command, args.out, args.kills, args.seed)
    print(json.dumps({k: result[k] for k in ("uninterrupted", "killed")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
