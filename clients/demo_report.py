"""What both halves of ``cycada demo`` (:mod:`.demo` and :mod:`.demo_shift`) share: the
smoke schedule of ``--smoke`` and the line it prints per evaluated stage."""

from __future__ import annotations

SMOKE = [  # --smoke: a minute-scale run for tests, same steps
    "source.iterations=20",
    "pixel.max_steps=6",
    "pixel.crop=32",
    "pixel.generator_width=8",
    "pixel.discriminator_width=8",
    "target.iterations=10",
    "feature.iterations=10",
    "feature.gate_window=4",
    "data.resize_width=128",
    "source.crop=64",
    "target.crop=64",
    "feature.crop=64",
]


def stage_lines(metrics: dict) -> list[str]:
    """One line per evaluated stage: mIoU when labelled, the label-free signals otherwise."""
    lines = []
    for stage, values in metrics["stages"].items():
        if "target" in values:
            labelled = values["target"]
            line = f"{stage}: mIoU {labelled['miou']:.1%} on {labelled['dataset']}"
        elif "label_free" in values:
            signals = values["label_free"]
            line = (
                f"{stage}: mean confidence {signals['mean_confidence']:.1%}, class-share "
                f"distance to the source labels {signals['class_share_distance']:.1%}"
            )
        else:
            continue
        updates = values.get("generator_updates")
        if updates == 0:  # the gate never opened: the adapted model is the target stage's
            line += " (f_T not updated: D_feat never passed the gate; the target stage's model)"
        elif updates is not None:
            line += f" (f_T updated on {updates} iterations)"
        lines.append(line)
    return lines
