"""Which stage of a run to ship: the verdict a run ends with and ``cycada export`` follows.

With a labelled evaluation set, the stage with the best score there. Without one, the last stage
unless its label-free signals show it got worse than the stage before it; then that earlier stage,
checked the same way against its own predecessor. A stage is worse than its predecessor when

- a class that the source labels and the predecessor both give at least ``min_share`` of the
  pixels shrinks below ``shrink_fraction`` of the smaller of the two shares (a collapse: the
  feature stage erasing cars; a predecessor that painted cars over half of every dark frame
  is measured against the source labels' share, so correcting it is no collapse), or
- its mean confidence falls more than ``margin`` below the predecessor's (adaptation
  makes a model surer on the target, not less sure).

BENCHMARKS.md ("Which stage to ship") measures how often this picks the stage labels would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StageEvidence:
    """What a finished stage's task model measured."""

    stage: str
    labelled: float | None = None  # mIoU / accuracy on the labelled evaluation set
    mean_confidence: float | None = None  # label-free, on target images
    class_shares: Mapping[str, float] | None = None
    source_class_shares: Mapping[str, float] | None = None


@dataclass(frozen=True)
class VerdictRule:
    # a class counts when the source labels and the stage before both give it 5 % of the pixels:
    # at 2 %, rare classes that one stage paints and the next drops (trucks on CamVid, which has
    # none) rejected better stages (BENCHMARKS.md, "Which stage to ship")
    min_share: float = 0.05
    shrink_fraction: float = 0.25
    margin: float = 0.02  # of mean confidence


def worse_than(stage: StageEvidence, previous: StageEvidence, rule: VerdictRule) -> str | None:
    """Why ``stage``'s label-free signals are worse than ``previous``'s, or None."""
    if stage.class_shares and previous.class_shares:
        source = stage.source_class_shares or {}
        for name, before in previous.class_shares.items():
            now, labelled = stage.class_shares.get(name, 0.0), source.get(name, 0.0)
            smaller = min(labelled, before)
            if smaller >= rule.min_share and now < rule.shrink_fraction * smaller:
                return (
                    f"class '{name}' shrank from {before:.1%} of the pixels under "
                    f"{previous.stage} to {now:.1%} (source labels {labelled:.1%})"
                )
    confidence, before = stage.mean_confidence, previous.mean_confidence
    if confidence is not None and before is not None and confidence < before - rule.margin:
        return f"mean confidence fell from {before:.1%} under {previous.stage} to {confidence:.1%}"
    return None


def stage_verdict(
    evidence: Sequence[StageEvidence], metric: str = "mIoU", rule: VerdictRule = VerdictRule()
) -> dict[str, Any]:
    """``{"stage", "by", "reason", "rejected": {stage: why}}`` over stages in run order."""
    if not evidence:
        raise ValueError("no finished stage with a task model")
    if all(item.labelled is not None for item in evidence):
        best = max(reversed(evidence), key=lambda item: item.labelled)  # a tie: the later
        scores = ", ".join(f"{item.stage} {item.labelled:.1%}" for item in evidence)
        return {
            "stage": best.stage,
            "by": "labelled",
            "reason": f"best {metric} on the labelled evaluation set ({scores})",
            "rejected": {},
        }
    rejected: dict[str, str] = {}
    chosen = len(evidence) - 1
    while chosen > 0:
        why = worse_than(evidence[chosen], evidence[chosen - 1], rule)
        if why is None:
            break
        rejected[evidence[chosen].stage] = why
        chosen -= 1
    stage = evidence[chosen].stage
    if not rejected:
        reason = "the last stage; its label-free signals are no worse than the stage before"
    else:
        reason = "; ".join(f"not {name}: {why}" for name, why in rejected.items())
    return {"stage": stage, "by": "label-free", "reason": reason, "rejected": rejected}


def verdict_of(
    stages: Mapping[str, Mapping[str, Any]],
    task_stages: Sequence[str],
    score: tuple[str, str],
    signals_key: str,
    metric: str,
) -> dict[str, Any] | None:
    """The verdict over metrics.json's stage entries: ``score`` names the labelled result
    (entry key, metric key), ``signals_key`` the label-free signals; None before any stage."""
    evidence = []
    for stage in task_stages:
        entry = stages.get(stage)
        if entry is None or not (score[0] in entry or signals_key in entry):
            continue
        signals = entry.get(signals_key, {})
        evidence.append(
            StageEvidence(
                stage,
                entry[score[0]][score[1]] if score[0] in entry else None,
                signals.get("mean_confidence"),
                signals.get("class_shares"),
                signals.get("source_class_shares"),
            )
        )
    return stage_verdict(evidence, metric) if evidence else None


def verdict_line(verdict: Mapping[str, Any]) -> str:
    """The log and table line: ``ship: feature (labelled: best mIoU ...)``."""
    return f"ship: {verdict['stage']} ({verdict['by']}: {verdict['reason']})"
