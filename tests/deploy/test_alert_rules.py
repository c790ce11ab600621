"""deploy/prometheus: the alert rules pass promtool's check and fire, in promtool's own rule
evaluation, on exactly the shifts `cycada monitor` flags on the same counts (ShiftRule)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cycada import signals
from cycada.signals import Baseline, ShiftRule, SignalCounts, judge_window
from tests.helpers import REPO

RULES = REPO / "deploy" / "prometheus" / "cycada-alerts.yaml"
CLASSES = ["road", "car", "sky", "person"]
BASELINE = Baseline(0.80, 0.10, {"road": 0.5, "car": 0.2, "sky": 0.3, "person": 0.0}, 100)
FRAMES_PER_MINUTE, PIXELS_PER_FRAME = 60, 1000
SERVED = {  # version: (mean confidence, low-confidence share, class shares)
    "1": (0.60, 0.40, [0.30, 0.01, 0.49, 0.20]),  # every rule fires
    "2": (0.78, 0.12, [0.48, 0.21, 0.31, 0.00]),  # the footage it was adapted to
}


def _promtool() -> str:
    found = shutil.which("promtool") or str(Path(sys.executable).parent / "promtool")
    if not Path(found).exists():
        pytest.skip("promtool not installed (make setup fetches Debian's prometheus package)")
    return found


def _window(version: str, minutes: int) -> SignalCounts:
    confidence, low, shares = SERVED[version]
    frames = FRAMES_PER_MINUTE * minutes
    counts = SignalCounts(len(CLASSES), frames, frames * PIXELS_PER_FRAME)
    counts.confidence_sum = confidence * counts.pixels
    counts.low_pixels = round(low * counts.pixels)
    counts.class_pixels = np.array([round(s * counts.pixels) for s in shares])
    return counts


def _series(version: str) -> list[dict]:
    labels = f'model="segment",version="{version}"'
    minute = _window(version, 1)
    rising = {
        signals.FRAMES: minute.frames,
        signals.PIXELS: minute.pixels,
        signals.CONFIDENCE_SUM: minute.confidence_sum,
        signals.LOW_PIXELS: minute.low_pixels,
    }
    series = [
        {"series": f"{name}{{{labels}}}", "values": f"0+{step}x10"} for name, step in rising.items()
    ]
    gauges = {
        signals.BASELINE_CONFIDENCE: BASELINE.mean_confidence,
        signals.BASELINE_LOW: BASELINE.low_confidence_share,
    }
    series += [{"series": f"{name}{{{labels}}}", "values": f"{v}x10"} for name, v in gauges.items()]
    for name, pixels in zip(CLASSES, minute.class_pixels):
        class_labels = f'{labels},class="{name}"'
        series.append(
            {"series": f"{signals.CLASS_PIXELS}{{{class_labels}}}", "values": f"0+{pixels}x10"}
        )
        share = BASELINE.class_shares[name]
        series.append(
            {"series": f"{signals.BASELINE_CLASS}{{{class_labels}}}", "values": f"{share}x10"}
        )
    return series


def _expected_alerts(version: str) -> dict[str, list[dict]]:
    """What the monitor's rule says about five minutes of the same counts, as promtool alerts."""
    report = judge_window(_window(version, 5), BASELINE, CLASSES, ShiftRule())
    rule = ShiftRule()
    mean, low, _ = SERVED[version]
    fired = {
        "CycadaConfidenceDrop": [{}]
        if mean < BASELINE.mean_confidence - rule.confidence_drop
        else [],
        "CycadaLowConfidenceRise": [{}]
        if low > BASELINE.low_confidence_share + rule.low_share_rise
        else [],
        "CycadaClassMixShift": [{}] if report.share_distance > rule.share_distance else [],
        "CycadaClassVanished": [{"class": name} for name in report.vanished],
        "CycadaClassAppeared": [{"class": name} for name in report.appeared],
    }
    assert sum(map(len, fired.values())) == len(report.flags)  # one alert per monitor flag
    return fired


def test_the_alert_rules_pass_promtool_check():
    done = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_alert_rules_fire_where_the_monitor_flags_a_shift(tmp_path):
    promtool = _promtool()
    rules = yaml.safe_load(RULES.read_text())
    annotations = {
        rule["alert"]: rule["annotations"]
        for group in rules["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    tests = []
    for version in SERVED:
        expected = _expected_alerts(version)
        alerts = []
        for name, fired in expected.items():
            exp = []
            for extra in fired:
                labels = {"model": "segment", "version": version, "severity": "warning", **extra}
                text = {
                    key: value.replace("{{ $labels.model }}", "segment")
                    .replace("{{ $labels.version }}", version)
                    .replace("{{ $labels.class }}", extra.get("class", ""))
                    for key, value in annotations[name].items()
                }
                exp.append({"exp_labels": labels, "exp_annotations": text})
            alerts.append({"eval_time": "10m", "alertname": name, "exp_alerts": exp})
        tests.append(
            {"interval": "1m", "input_series": _series(version), "alert_rule_test": alerts}
        )
    assert any(_expected_alerts("1").values()) and not any(_expected_alerts("2").values())
    shutil.copy(RULES, tmp_path / RULES.name)
    test_file = tmp_path / "alerts_test.yaml"
    test_file.write_text(yaml.safe_dump({"rule_files": [RULES.name], "tests": tests}))
    done = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
