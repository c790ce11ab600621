"""`cycada monitor --url URL,...`: each served segmentation model and version against the
baseline its export recorded, over a sliding window of the frames it served last.

It reads the servers' Prometheus endpoints (``cycada serve``'s ``--metrics-port``, 8002), sums
the counters of replicas, and judges the window with :func:`cycada.signals.judge_window` (the
same rule as the alert rules in ``deploy/prometheus``). Until its readings reach back
``--window`` frames, the window holds every frame since the version loaded. ``--once`` reads
once (``--over S``: twice, S seconds apart, judging only the frames between); exit 1 when a
shift is flagged, 0 when not.
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cycada import signals
from cycada.errors import InputError, ServingError
from cycada.signals import Baseline, ShiftRule, SignalCounts, WindowReport, judge_window

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Key = tuple[str, str]  # (model, version)


def metrics_url(text: str) -> str:
    """``host:port`` or ``http://host:port[/path]`` → the metrics URL (path /metrics)."""
    url = text if "://" in text else f"http://{text}"
    scheme, _, rest = url.partition("://")
    if scheme not in ("http", "https") or not rest.split("/")[0]:
        raise InputError(f"monitor URL '{text}': expected host:port or http://host:port/metrics")
    return url if "/" in rest else f"{url}/metrics"


def parse_samples(text: str) -> Iterable[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of each sample in Prometheus text format."""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        yield name, dict(_LABEL.findall(labels or "")), number


@dataclass
class Reading:
    """One scrape of every server: the counts of each series (one per backend stub, labels
    model, version and stub) and the baseline and classes of each model version."""

    series: dict[Key, dict[str, SignalCounts]] = field(default_factory=dict)
    classes: dict[Key, list[str]] = field(default_factory=dict)
    baselines: dict[Key, Baseline] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)  # URL → why, judged without

    def total(self, key: Key) -> SignalCounts:
        """The counts of every stub of ``key`` added up."""
        total = SignalCounts(len(self.classes[key]))
        for counts in self.series[key].values():
            total = total.plus(counts)
        return total


_COUNTERS = {
    signals.FRAMES: "frames",
    signals.PIXELS: "pixels",
    signals.CONFIDENCE_SUM: "confidence_sum",
    signals.LOW_PIXELS: "low_pixels",
}


def read_servers(urls: list[str], fetch: Callable[[str], str]) -> Reading:
    """Every server's series (a stub of one server is told from another's by its URL); errors
    name the URL. A replica that does not answer is left out (``unreachable``) and the others
    are judged; none answering is an error."""
    raw: dict[Key, dict[str, dict[str, float]]] = {}
    per_class: dict[Key, dict[str, dict[str, float]]] = {}
    baseline: dict[Key, dict[str, Any]] = {}
    seen = False
    unreachable: dict[str, str] = {}
    for url in urls:
        try:
            text = fetch(url)
        except ServingError as exc:  # down or restarting
            unreachable[url] = str(exc)
            if len(unreachable) == len(urls):
                raise
            continue
        for name, labels, value in parse_samples(text):
            if not name.startswith("cycada_"):
                continue
            seen = True
            key = (labels.get("model", ""), labels.get("version", ""))
            stub = f"{url} {labels.get('stub', '')}"
            if name in _COUNTERS:
                raw.setdefault(key, {}).setdefault(stub, {})[_COUNTERS[name]] = value
            elif name == signals.CLASS_PIXELS:
                per_class.setdefault(key, {}).setdefault(stub, {})[labels["class"]] = value
            elif name == signals.BASELINE_CLASS:
                shares = baseline.setdefault(key, {}).setdefault("class_shares", {})
                shares[labels["class"]] = value
            elif name == signals.BASELINE_CONFIDENCE:
                baseline.setdefault(key, {})["mean_confidence"] = value
            elif name == signals.BASELINE_LOW:
                baseline.setdefault(key, {})["low_confidence_share"] = value
            elif name == signals.BASELINE_FRAMES:
                baseline.setdefault(key, {})["frames"] = value
    if not seen:
        raise InputError(
            f"{', '.join(urls)}: no cycada signals among the metrics (expected a server of a "
            "repository exported by this cycada, at its metrics port, e.g. 127.0.0.1:8002)"
        )
    reading = Reading(unreachable=unreachable)
    for key, stubs in raw.items():
        classes = list(baseline.get(key, {}).get("class_shares", {}))
        for pixels in per_class.get(key, {}).values():
            classes += [name for name in pixels if name not in classes]
        reading.classes[key] = classes
        reading.series[key] = {}
        for stub, row in stubs.items():
            pixels = per_class.get(key, {}).get(stub, {})
            counts = SignalCounts(len(classes))
            counts.frames = int(row.get("frames", 0))
            counts.pixels = int(row.get("pixels", 0))
            counts.confidence_sum = row.get("confidence_sum", 0.0)
            counts.low_pixels = int(row.get("low_pixels", 0))
            counts.class_pixels[:] = [int(pixels.get(name, 0)) for name in classes]
            reading.series[key][stub] = counts
        record = baseline.get(key, {})
        if {"mean_confidence", "low_confidence_share", "class_shares", "frames"} <= set(record):
            reading.baselines[key] = Baseline.from_record(record)
    return reading


def increase(now: Reading, then: Reading | None, key: Key) -> SignalCounts:
    """The counts of ``key`` between two readings, series by series as Prometheus'
    ``increase`` takes them: a stub that is new, or restarted (its counts went down), counts
    from zero."""
    total = SignalCounts(len(now.classes[key]))
    before = then.series.get(key, {}) if then is not None else {}
    for stub, counts in now.series[key].items():
        earlier = before.get(stub)
        same = earlier is not None and earlier.classes == counts.classes
        if same and earlier.frames <= counts.frames:
            counts = counts.minus(earlier)
        total = total.plus(counts)
    return total


def fetch_text(url: str, timeout: float = 5.0) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:  # something answered: not a metrics endpoint
        raise InputError(
            f"monitor: {url} answered HTTP {exc.code}: not a metrics endpoint (expected the "
            "server's metrics port, e.g. 127.0.0.1:8002)"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServingError(f"monitor: cannot read {url}: {reason}") from None


@dataclass
class ModelState:
    """What the monitor shows for one model version."""

    model: str
    version: str
    baseline: Baseline | None
    report: WindowReport | None  # None without a baseline

    def as_dict(self) -> dict[str, Any]:
        base = self.baseline
        return {
            "model": self.model,
            "version": self.version,
            "baseline": None
            if base is None
            else {
                "frames": base.frames,
                "mean_confidence": base.mean_confidence,
                "low_confidence_share": base.low_confidence_share,
            },
            **(self.report.as_dict() if self.report else {"shift": False, "flags": []}),
        }


class Monitor:
    """Readings over time; the window of each model version is its last ``window`` frames."""

    def __init__(self, urls: list[str], window: int, rule: ShiftRule, fetch=fetch_text):
        self.urls, self.window, self.rule, self.fetch = urls, window, rule, fetch
        self.history: deque[Reading] = deque(maxlen=10_000)

    def read(self) -> Reading:
        reading = read_servers(self.urls, self.fetch)
        self.history.append(reading)
        for why in reading.unreachable.values():
            print(f"{why}; judging the other servers", file=sys.stderr, flush=True)
        return reading

    def states(self) -> list[ModelState]:
        now = self.history[-1]
        states = []
        for key in sorted(now.series):
            window = self._window(key)
            baseline = now.baselines.get(key)
            report = None
            if baseline is not None:
                report = judge_window(window, baseline, now.classes[key], self.rule)
            states.append(ModelState(*key, baseline, report))
        return states

    def _window(self, key: Key) -> SignalCounts:
        """The frames since the latest earlier reading at least ``window`` frames back; until
        the readings reach back that far, every frame since the version loaded."""
        now = self.history[-1]
        for then in reversed(list(self.history)[:-1]):
            window = increase(now, then, key)
            if window.frames >= self.window:
                return window
        return increase(now, None, key)


def render(states: list[ModelState], min_frames: int = ShiftRule.min_frames) -> str:
    """The terminal view: one row per model version, evidence lines under a flagged one."""
    header = (
        f"{'model':<18}{'version':>8}{'frames':>8}  {'confidence':<15}{'low share':<15}"
        f"{'class mix':>10}  status"
    )
    lines = [header, "-" * len(header)]
    for state in states:
        report, base = state.report, state.baseline
        if report is None or base is None:
            lines.append(
                f"{state.model:<18}{state.version:>8}{'':>8}  no baseline (exported without "
                "label-free signals): nothing to compare with"
            )
            continue
        if not report.frames:
            lines.append(f"{state.model:<18}{state.version:>8}{0:>8}  no frames in the window")
            continue
        if report.flags:
            status = "SHIFT"
        elif report.frames < min_frames:
            status = f"{report.frames} frames in the window: too few to judge (< {min_frames})"
        else:
            status = "ok"
        lines.append(
            f"{state.model:<18}{state.version:>8}{report.frames:>8}  "
            f"{report.mean_confidence:>5.1%} ({base.mean_confidence:.1%})  "
            f"{report.low_confidence_share:>5.1%} ({base.low_confidence_share:.1%})  "
            f"{report.share_distance:>8.1%}  {status}"
        )
        lines += [f"{'':>26}- {flag}" for flag in report.flags]
    lines.append("(window value (baseline at export); class mix: distance to the export's)")
    return "\n".join(lines)


def run_monitor(args) -> int:
    if args.window < 1:
        raise InputError(f"--window {args.window}: expected 1 or more frames")
    if args.interval <= 0:
        raise InputError(f"--interval {args.interval}: expected seconds above 0")
    if args.over < 0:
        raise InputError(f"--over {args.over}: expected seconds, 0 or more")
    urls = [metrics_url(url) for url in args.url]
    monitor = Monitor(urls, args.window, ShiftRule(min_frames=args.min_frames))
    if args.once:
        monitor.read()
        if args.over > 0:
            time.sleep(args.over)
            monitor.read()
            monitor.window = 0  # exactly the frames between the two readings
        states = monitor.states()
        _show(states, args.json, args.min_frames, live=False)
        return 1 if any(s.report and s.report.flags for s in states) else 0
    tty = sys.stdout.isatty() and not args.json
    try:
        while True:
            try:
                monitor.read()
                states = monitor.states()
            except (ServingError, InputError) as exc:
                if not monitor.history:  # the first reading failed: the address is wrong
                    raise
                print(str(exc), flush=True)  # a server restarting: say so, keep watching
            else:
                if tty:
                    print("\033[2J\033[H", end="")
                _show(states, args.json, args.min_frames, live=True)
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def _show(states: list[ModelState], as_json: bool, min_frames: int, live: bool) -> None:
    if as_json:
        record = {"time": time.time(), "models": [s.as_dict() for s in states]}
        print(json.dumps(record) if live else json.dumps(record, indent=2), flush=True)
    else:
        print(render(states, min_frames), flush=True)
