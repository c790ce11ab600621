"""`cycada ablate digits|seg --seeds 0-4`: the ablation once per seed, then one table of every
row's mean and spread and the paired differences that say whether a gap is larger than the
seed-to-seed noise (:mod:`cycada.training.core.seed_stats`).

Each seed is its own ``cycada ablate TASK --seed N`` process writing ``OUT/seed-N`` (its stage
cache included), ``--jobs`` of them at once with the CPU's threads split between them; each
reads the one resolved config the parent wrote to ``OUT/config.yaml``. A seed that ran before
finds its stages in its cache, so running the command again after an interruption, or with more
seeds, trains only what is missing.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cycada import configs
from cycada.atomic import make_output_folder, write_json_atomic, write_text_atomic
from cycada.errors import ConfigError, FailureError
from cycada.training.core.seed_stats import (
    PairedDifference,
    paired_difference,
    parse_seeds,
    row_stats,
)

PROGRESS_EVERY_S = 60.0  # a line saying where each running seed is


@dataclass(frozen=True)
class AblationTable:
    """What the seed runner needs to know of one task's ``cycada ablate`` table."""

    task: str  # the ``cycada ablate`` subcommand
    names: dict[str, str]  # row → its name in the table
    short: dict[str, str]  # row → its name in a difference ("full − feature-only")
    not_adapted: tuple[str, ...]  # rows without adaptation (source only, control, oracles)
    metric: str  # the key of each row's metric (%) in a seed's results.json
    metric_name: str  # e.g. "target accuracy", "mIoU"

    def comparisons(self, rows: list[str]) -> list[tuple[str, str]]:
        """The differences worth a verdict: each adapted row against the equal-iterations
        control (the gain from adaptation), and the full method against each other adapted row
        (what each part adds)."""
        adapted = [row for row in rows if row not in self.not_adapted]
        pairs = [(row, "control") for row in adapted if "control" in rows]
        if "full" in rows:
            pairs += [("full", row) for row in adapted if row != "full"]
        return pairs


def seed_command(
    table: AblationTable, config_file: Path, preset: str, rows: list[str], seed: int, out: Path
) -> list[str]:
    return [
        *(sys.executable, "-m", "cycada.cli", "ablate", table.task, "--preset", preset),
        *("--config", str(config_file), "--seed", str(seed), "--rows", ",".join(rows)),
        *("--out", str(out), "--quiet"),
    ]


def child_environment(jobs: int) -> dict[str, str]:
    """The CPU's threads split between the seeds that run at once (a thread count the user
    set is kept)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    return env


def last_error_line(log: Path) -> str:
    """A failed seed's own one-line error (else its log's last line, e.g. a traceback's)."""
    prefix = "cycada: error: "
    lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
    errors = [line.removeprefix(prefix) for line in lines if line.startswith(prefix)]
    return (errors or lines or ["no output"])[-1]


def last_scalars(path: Path) -> dict[str, Any] | None:
    """The last whole record of a row's ``scalars.jsonl`` (read from its end: the file grows
    all run long; its last line may be half written), or None when there is none yet."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 4096))
            lines = handle.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def last_write(folder: Path) -> float:
    """When a row folder was last written to: its log grows through training and evaluation
    alike (a row only evaluated again leaves the folder's own time alone)."""
    times = []
    for path in (folder, folder / "log.txt", folder / "scalars.jsonl"):
        try:
            times.append(path.stat().st_mtime)
        except OSError:  # not written yet (or moved away while the seed runs)
            continue
    return max(times, default=0.0)


def seed_progress(out: Path, rows: list[str]) -> str:
    """Where one running seed is: the row it wrote to last and that row's last logged step, e.g.
    ``row 2 of 4 (control), source step 1200``."""
    started = [(out / row, row) for row in rows if (out / row).is_dir()]
    if not started:
        return "starting"
    folder, row = max(started, key=lambda item: last_write(item[0]))
    where = f"row {rows.index(row) + 1} of {len(rows)} ({row})"
    record = last_scalars(folder / "scalars.jsonl")
    if record is None:
        return where
    return f"{where}, {record.get('stage', '?')} step {record.get('step', '?')}"


def holds_seeds_table(out_dir: Path) -> bool | None:
    """Whether ``OUT/results.json`` is a table over seeds (True), one seed's table (False), or
    absent (None): a folder keeps one kind, so neither command overwrites the other's table."""
    results = out_dir / "results.json"
    if not results.is_file():
        return None
    try:
        return "seeds" in json.loads(results.read_text())
    except (OSError, ValueError):
        return None  # unreadable: the command rewrites it


def check_ablation_folder(out_dir: Path, over_seeds: bool) -> None:
    """A one-line input error when ``out_dir`` holds the other kind of ablation table."""
    held = holds_seeds_table(out_dir)
    if held is None or held == over_seeds:
        return
    if held:
        raise ConfigError(
            f"{out_dir} holds an ablation over seeds; without --seeds use a new --out (or "
            f"{out_dir}/seed-N for one seed)"
        )
    raise ConfigError(
        f"{out_dir} holds a one-seed ablation; with --seeds use a new --out (that folder moved "
        "to NEW/seed-N is reused as seed N)"
    )


def run_seeds(
    table: AblationTable,
    config: Any,
    out_dir: Path,
    seeds: list[int],
    rows: list[str],
    jobs: int = 1,
    preset: str = "paper",
    progress_every: float | None = None,
) -> str:
    """Every seed's ablation (``jobs`` at a time, each quiet in its own log), with a line every
    ``progress_every`` seconds (default ``PROGRESS_EVERY_S``) saying where each running seed
    is and one when a seed ends, then ``OUT/results.{md,json,csv,png}``. Raises
    :class:`FailureError` naming the failed seeds' logs after writing the table of the rest."""
    unknown = [row for row in rows if row not in table.names]
    if unknown:
        valid = ", ".join(table.names)
        raise ConfigError(f"unknown ablation row '{unknown[0]}' (valid: {valid})")
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: expected at least 1 seed at a time")
    check_ablation_folder(out_dir, over_seeds=True)
    make_output_folder(out_dir)
    config_file = out_dir / "config.yaml"  # what every seed runs, its seed aside
    write_text_atomic(config_file, configs.to_yaml(dataclasses.replace(config, seed=seeds[0])))
    env = child_environment(jobs)
    waiting = list(seeds)
    running: dict[int, tuple[subprocess.Popen, float]] = {}
    exits: dict[int, int] = {}
    if progress_every is None:
        progress_every = PROGRESS_EVERY_S  # read at call time
    began_all = last_report = time.perf_counter()
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                seed = waiting.pop(0)
                out = out_dir / f"seed-{seed}"
                command = seed_command(table, config_file, preset, rows, seed, out)
                with open(out_dir / f"seed-{seed}.log", "w") as log:
                    process = subprocess.Popen(
                        command, stdout=log, stderr=subprocess.STDOUT, env=env
                    )
                running[seed] = (process, time.perf_counter())
            for seed, (process, began) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[seed]
                exits[seed] = process.returncode
                seconds = time.perf_counter() - began
                state = "finished" if process.returncode == 0 else "FAILED"
                print(f"seed {seed}: {state} in {seconds:.0f} s", flush=True)
            if running and time.perf_counter() - last_report >= progress_every:
                last_report = time.perf_counter()
                where = "; ".join(
                    f"seed {seed}: {seed_progress(out_dir / f'seed-{seed}', rows)}"
                    for seed in running
                )
                minutes = (last_report - began_all) / 60
                print(f"[{minutes:.0f} min] {where}", flush=True)
            time.sleep(0.2)
    finally:  # an interrupt stops the seeds still running; their finished stages are cached
        for process, _ in running.values():
            process.terminate()
        for process, _ in running.values():
            process.wait()
    finished = [seed for seed in seeds if exits.get(seed) == 0]  # never an older run's table
    per_seed, models = read_seed_results(table, out_dir, finished)
    markdown = write_summary(table, out_dir, config, rows, seeds, per_seed, models, exits)
    failed = [seed for seed in seeds if exits.get(seed) != 0]
    if failed:
        first = out_dir / f"seed-{failed[0]}.log"
        # the failed seeds all refused their input (exit 2, e.g. a missing data set)
        error = ConfigError if all(exits.get(seed) == 2 for seed in failed) else FailureError
        raise error(
            f"seed{'s' * (len(failed) > 1)} {', '.join(map(str, failed))} failed "
            f"(seed {failed[0]}: {last_error_line(first)}; log {first}); the table in "
            f"{out_dir / 'results.md'} holds the seeds that finished"
        )
    return markdown


def read_seed_results(
    table: AblationTable, out_dir: Path, seeds: list[int]
) -> tuple[dict[int, dict[str, float]], dict[str, str]]:
    """seed → row → the table's metric (%), from each seed's own ``results.json``; and each
    row's model name as the tables print it."""
    per_seed: dict[int, dict[str, float]] = {}
    models: dict[str, str] = {}
    for seed in seeds:
        results = out_dir / f"seed-{seed}" / "results.json"
        if not results.is_file():
            continue
        for row in json.loads(results.read_text())["rows"]:
            per_seed.setdefault(seed, {})[row["row"]] = row[table.metric]
            models[row["row"]] = row["model"]
    return per_seed, models


def _number(value: float | None, sign: bool = False) -> str:
    return "" if value is None else f"{value:+.2f}" if sign else f"{value:.2f}"


def difference_record(difference: PairedDifference) -> dict[str, Any]:
    interval = difference.interval
    return {
        "first": difference.first,
        "second": difference.second,
        "per_seed": {str(seed): round(value, 2) for seed, value in difference.per_seed.items()},
        "mean": round(difference.mean, 2),
        "ci95": None if interval is None else [round(interval[0], 2), round(interval[1], 2)],
        "seeds_above": difference.seeds_above,
        "n": difference.n,
        "verdict": difference.verdict,
    }


def write_summary(
    table: AblationTable,
    out_dir: Path,
    config: Any,
    rows: list[str],
    seeds: list[int],
    per_seed: dict[int, dict[str, float]],
    models: dict[str, str],
    exits: dict[int, int],
) -> str:
    """``results.md``, ``.png``, ``.json`` and ``.csv`` of the seeds that finished; returns the
    Markdown."""
    data = config.data
    title = (
        f"Ablation of CyCADA on {data.source}→{data.target} over seeds "
        f"{', '.join(map(str, seeds))} ({table.metric_name} on "
        f"{data.eval_set or data.target}/{data.eval_split}, %)"
    )
    stats = row_stats(per_seed, rows)
    differences = [
        found
        for first, second in table.comparisons([s.row for s in stats])
        if (found := paired_difference(per_seed, first, second)) is not None
    ]
    lines = [f"# {title}", ""]
    lines += _rows_markdown(stats, seeds, models) + _differences_markdown(table, differences)
    if not stats:
        lines += [
            "",
            f"No seed's results.json holds a {table.metric_name}: an unlabelled target without "
            "--eval-set gives label-free signals only (each seed's label_free.md).",
        ]
    if "control" in rows:
        from cycada.training.core.pipeline import CONTROL_NOTE  # imports torch: not at start-up

        lines += ["", CONTROL_NOTE]
    missing = [seed for seed in seeds if exits.get(seed) != 0]
    if missing:
        lines += ["", f"Not finished: seed {', '.join(map(str, missing))} (see seed-N.log)."]
    markdown = "\n".join(lines) + "\n"
    write_text_atomic(out_dir / "results.md", markdown)
    if stats:
        from cycada.plots import seeds_figure  # matplotlib: not at start-up

        values = {table.short[row.row]: list(row.per_seed.values()) for row in stats}
        gaps = {
            f"{table.short[found.first]} − {table.short[found.second]}": (
                list(found.per_seed.values()),
                found.interval,
            )
            for found in differences
        }
        seeds_figure(out_dir / "results.png", values, gaps, table.metric_name, title)
    _write_records(out_dir, title, seeds, per_seed, stats, differences, models)
    return markdown


def _rows_markdown(stats: list, seeds: list[int], models: dict[str, str]) -> list[str]:
    header = ["Model", *(f"seed {seed}" for seed in seeds), "mean", "sd"]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for row in stats:
        cells = [_number(row.per_seed.get(seed)) for seed in seeds]
        lines.append(
            f"| {models[row.row]} | {' | '.join(cells)} | {row.mean:.2f} | {_number(row.sd)} |"
        )
    return lines


def _differences_markdown(table: AblationTable, differences: list) -> list[str]:
    if not differences:
        return []
    lines = [
        "",
        "Paired differences (points; seed by seed, on the seeds that finished both rows; "
        "95 % t interval of the mean):",
        "",
        "| difference | mean | 95 % interval | seeds above | verdict |",
        "| --- | ---: | --- | ---: | --- |",
    ]
    for found in differences:
        interval = found.interval
        shown = "" if interval is None else f"{interval[0]:+.2f} to {interval[1]:+.2f}"
        lines.append(
            f"| {table.short[found.first]} − {table.short[found.second]} | "
            f"{found.mean:+.2f} | {shown} "
            f"| {found.seeds_above} of {found.n} | {found.verdict} |"
        )
    return lines


def _write_records(
    out_dir: Path,
    title: str,
    seeds: list[int],
    per_seed: dict[int, dict[str, float]],
    stats: list,
    differences: list,
    models: dict[str, str],
) -> None:
    """results.json and results.csv: the same rows for programs."""
    records = [
        {
            "row": row.row,
            "model": models[row.row],
            "per_seed": {str(seed): value for seed, value in row.per_seed.items()},
            "mean": round(row.mean, 2),
            "sd": None if row.sd is None else round(row.sd, 2),
            "n": row.n,
        }
        for row in stats
    ]
    write_json_atomic(
        out_dir / "results.json",
        {
            "title": title,
            "seeds": seeds,
            "finished": sorted(per_seed),
            "rows": records,
            "differences": [difference_record(found) for found in differences],
        },
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["row", "model", *(f"seed_{seed}" for seed in seeds), "mean", "sd"])
    for row in stats:
        cells = [_number(row.per_seed.get(seed)) for seed in seeds]
        writer.writerow([row.row, models[row.row], *cells, f"{row.mean:.2f}", _number(row.sd)])
    write_text_atomic(out_dir / "results.csv", buffer.getvalue())


def run_seeds_from_args(
    table: AblationTable, config: Any, args: argparse.Namespace, rows: list[str]
) -> str:
    """An ablate command's ``--seeds`` / ``--jobs`` (``--seed`` too is an error)."""
    if args.seed is not None:
        raise ConfigError("--seed and --seeds: give one (--seeds 3 runs seed 3 alone)")
    seeds = parse_seeds(args.seeds)
    return run_seeds(table, config, args.out, seeds, rows, args.jobs, args.preset)
