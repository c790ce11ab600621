"""Parity of exported graphs against the PyTorch networks they came from, on real images.

Bounds (from the export issue): fp32 label agreement >= 99.9 % and logits max |diff| <= 1e-3;
fp16 label agreement >= 99 %; translated images within 2 grey levels on >= 99 % of pixels.
Segmentation is checked against its plain definition (full-resolution scores, softmax;
:class:`~cycada.models.graphs.PlainSegmentationGraph`): labels as above, and the confidence
within 2/255 on as large a share of the pixels as the labels must agree.
Images come from the shared real data when present (CamVid test, the Cityscapes samples,
MNIST test), else from the synthetic scene / digit renderers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from cycada.deps import onnxruntime
from cycada.export.onnx_export import INPUT_NAME
from cycada.models.endpoints import Endpoint
from cycada.models.graphs import PlainSegmentationGraph, serving_graph
from cycada.training.digits.data import load_mnist
from cycada.training.digits.synthetic import render_synthetic_digits
from cycada.training.segmentation.scenes import render_scene

LABEL_AGREEMENT_FP32 = 0.999
LOGITS_MAX_DIFF = 1e-3
LABEL_AGREEMENT_FP16 = 0.99
GREY_LEVELS = 2  # translated images and segmentation confidence (of 255)
GREY_SHARE = 0.99

Runner = Callable[[np.ndarray], list[np.ndarray]]  # uint8 batch → outputs, in export order


@dataclass
class ParityRow:
    endpoint: str
    variant: str  # onnx-fp32, onnx-fp16, tensorrt-fp16...
    metric: str
    value: float
    bound: float
    higher_is_better: bool

    @property
    def ok(self) -> bool:
        return self.value >= self.bound if self.higher_is_better else self.value <= self.bound

    def line(self) -> str:
        sign = ">=" if self.higher_is_better else "<="
        verdict = "ok" if self.ok else "FAIL"
        return (
            f"| {self.endpoint} | {self.variant} | {self.metric} | {self.value:.6g} | "
            f"{sign} {self.bound:g} | {verdict} |"
        )


def table(rows: list[ParityRow]) -> str:
    header = [
        "| endpoint | variant | metric | value | bound | result |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    return "\n".join([*header, *(row.line() for row in rows)])


def default_data_root() -> Path:
    repo = Path(__file__).resolve().parents[1]
    return Path(os.environ.get("CYCADA_DATA", repo.parent / "shared" / "data"))


def _read_rgb(path: Path, width: int) -> np.ndarray | None:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return None
    height = max(1, round(image.shape[0] * width / image.shape[1]))
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def scene_images(
    count: int = 4, width: int = 512, data_root: Path | None = None
) -> list[np.ndarray]:
    """Real road-scene frames (CamVid test, Cityscapes samples), else synthetic scenes."""
    root = data_root or default_data_root()
    paths = sorted((root / "camvid" / "test").glob("*.png"))[: count - 1]
    paths += sorted((root / "cityscapes_samples").rglob("*leftImg8bit*.png"))[:1]
    images = [image for image in (_read_rgb(p, width) for p in paths) if image is not None]
    if images:
        return images

    return [render_scene(seed, width, width // 2, "camera")[0] for seed in range(count)]


def digit_images(
    channels: int, count: int = 256, data_root: Path | None = None
) -> list[np.ndarray]:
    """One batch of real MNIST test digits, else synthetic digits, with ``channels`` channels."""
    root = data_root or default_data_root()
    try:
        batch = load_mnist(root / "mnist", "test").images[:count]
    except Exception:  # absent or unreadable: fall back to rendered digits
        batch = render_synthetic_digits(count, seed=0)[0]
    if batch.shape[-1] != channels:
        batch = np.repeat(batch, channels, axis=-1) if channels == 3 else batch[..., :1]
    return [np.ascontiguousarray(batch)]


def parity_images(endpoint: Endpoint, data_root: Path | None = None) -> list[np.ndarray]:
    if endpoint.kind == "classify":
        return digit_images(endpoint.in_channels, data_root=data_root)
    return [image[None] for image in scene_images(data_root=data_root)]


def torch_runner(endpoint: Endpoint, logits: bool) -> Runner:
    """The reference: the serving graph in PyTorch; for segmentation the plain definition's
    labels and confidence, then (with ``logits``) the served graph's class scores."""
    graph = serving_graph(endpoint, logits=logits)
    plain = None
    if endpoint.kind == "segment":
        plain = PlainSegmentationGraph(graph.segmenter, endpoint.multiple).eval()

    def run(batch: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            images = torch.from_numpy(batch)
            outputs = graph(images) if plain is None or logits else ()
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            if plain is not None:
                outputs = (*plain(images), *outputs[2:])
        return [output.numpy() for output in outputs]

    return run


def onnx_runner(path: Path, threads: int = 0) -> Runner:

    ort = onnxruntime()

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    # no busy-waiting once a check is done: spinning idle threads slowed the engines the export
    # times next (OpenVINO, in a child process) 2-3x
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {INPUT_NAME: batch})


def compare(
    endpoint: Endpoint,
    variant: str,
    reference: Runner,
    candidate: Runner,
    images: list[np.ndarray],
    half: bool,
    logits_candidate: Runner | None = None,
) -> list[ParityRow]:
    """Rows of the parity table for one exported variant against the fp32 PyTorch reference.

    ``reference`` returns logits last; ``logits_candidate`` is the same export with a logits
    output, used for the logits bound (the served graph has none).
    """
    with_logits = logits_candidate is not None
    agree = total = close_confidence = 0
    max_diff = 0.0
    for batch in images:
        expected, got = reference(batch), candidate(batch)
        if endpoint.kind == "translate":
            agree += _within_grey_levels(expected[0], got[0])
            total += expected[0].size
            continue
        agree += int((expected[0] == got[0]).sum())
        total += expected[0].size
        if endpoint.kind == "segment":
            close_confidence += _within_grey_levels(expected[1], got[1])
        if with_logits:
            got_logits = logits_candidate(batch)[-1]
            max_diff = max(max_diff, float(np.abs(expected[-1] - got_logits).max()))
    name = endpoint.name
    if endpoint.kind == "translate":
        metric = f"pixels within {GREY_LEVELS} grey levels"
        return [ParityRow(name, variant, metric, agree / total, GREY_SHARE, True)]
    bound = LABEL_AGREEMENT_FP16 if half else LABEL_AGREEMENT_FP32
    rows = [ParityRow(name, variant, "label agreement", agree / total, bound, True)]
    if endpoint.kind == "segment":
        metric = f"confidence within {GREY_LEVELS}/255"
        rows.append(ParityRow(name, variant, metric, close_confidence / total, bound, True))
    if with_logits:
        rows.append(
            ParityRow(name, variant, "logits max abs diff", max_diff, LOGITS_MAX_DIFF, False)
        )
    return rows


def _within_grey_levels(expected: np.ndarray, got: np.ndarray) -> int:
    """How many uint8 values of ``got`` are within GREY_LEVELS of ``expected``'s."""
    return int((np.abs(expected.astype(np.int16) - got.astype(np.int16)) <= GREY_LEVELS).sum())
