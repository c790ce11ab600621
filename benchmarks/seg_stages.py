"""Images/s and peak GPU memory of every segmentation stage at the paper's sizes.

    cycada bench seg-stages --network drn26 --out results/

Each stage runs its real training step (the same modules, losses and optimizers as the
pipeline) on random tensors: source/target f_T at batch 8, 600x600 crops; the pixel stage
(CycleGAN ResNet-9 + 70x70 PatchGAN at 400x400, batch 1) with and without the semantic loss
through a frozen f_S; translation of whole width-1024 frames (1024x576); the feature stage at
768x768, batch 1, with the discriminator gate open (its most expensive case); and evaluation at
full Cityscapes resolution. Mixed precision and channels_last on GPU, as in training.
``--small`` shrinks every size so the script itself can be tested on a CPU.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cycada.bench_results import write_results
from cycada.command_line import add_network, command_parser, seconds
from cycada.models.segmenters import build_segmenter
from cycada.training.core.pixel_adaptation import PixelAdaptation
from cycada.training.segmentation.config import (
    SegFeatureConfig,
    SegPixelConfig,
    SegSupervisedConfig,
)
from cycada.training.segmentation.stages.feature import FeatureStep, freeze_batch_norm
from cycada.training.segmentation.stages.pixel import translate_image
from cycada.training.segmentation.stages.supervised import SupervisedStep
from cycada.training.segmentation.step_context import LocalStepContext

PAPER = {
    "seg_crop": 600,
    "seg_batch": 8,
    "pixel_crop": 400,
    "feature_crop": 768,
    "frame": (576, 1024),
    "eval": (1024, 2048),
}
SMALL = {
    "seg_crop": 64,
    "seg_batch": 2,
    "pixel_crop": 32,
    "feature_crop": 64,
    "frame": (48, 64),
    "eval": (64, 128),
}


def _timed(step: Callable[[], None], device: torch.device, seconds: float, warmup: int) -> dict:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    count, started = 0, time.perf_counter()
    while True:
        step()
        count += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and count >= 3:
            break
    result = {"iterations": count, "seconds_per_iteration": round(elapsed / count, 5)}
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def bench(model_name: str, sizes: dict, device: torch.device, seconds: float, amp: bool) -> dict:
    cuda = device.type == "cuda"
    context = LocalStepContext(device, amp=amp)
    memory = torch.channels_last if cuda else torch.contiguous_format
    autocast = context.autocast()

    def segmenter():
        return build_segmenter(model_name, 19).to(device, memory_format=memory)

    def rand(*shape):
        return (torch.rand(*shape, device=device) * 2 - 1).contiguous(memory_format=memory)

    def frames(batch: int, crop: int) -> dict[str, torch.Tensor]:
        """A batch as the loaders give it: uint8 images and their train ids, on the CPU."""
        return {
            "image": torch.randint(0, 256, (batch, 3, crop, crop), dtype=torch.uint8),
            "label": torch.randint(0, 19, (batch, crop, crop)),
        }

    results: dict[str, dict] = {}
    crop, batch = sizes["seg_crop"], sizes["seg_batch"]

    # source / target: the supervised stages' own step (the paper's SGD recipe)
    model = segmenter().train()
    supervised_config = SegSupervisedConfig(batch_size=batch, crop=crop)
    supervised = SupervisedStep(context, model, supervised_config)
    images = frames(batch, crop)
    timing = _timed(lambda: supervised(images["image"], images["label"], 0), device, seconds, 2)
    results["source_and_target"] = {**timing, "batch": batch, "crop": crop}

    # pixel stage, with and without the semantic loss through frozen f_S
    pixel_crop = sizes["pixel_crop"]
    x_src, x_tgt = rand(1, 3, pixel_crop, pixel_crop), rand(1, 3, pixel_crop, pixel_crop)
    for name, weight in (("pixel_with_semantic", 1.0), ("pixel_without_semantic", 0.0)):
        cfg = SegPixelConfig(crop=pixel_crop, lambda_semantic=weight)
        pixel = PixelAdaptation(cfg, 3, model.eval(), torch.Generator(), amp=cuda and amp)
        pixel = pixel.to(device, memory_format=memory)
        timing = _timed(lambda p=pixel: p.step(x_src, x_tgt), device, seconds, 2)
        results[name] = {**timing, "batch": 1, "crop": pixel_crop}
        generator = pixel.gen_src2tgt.eval()

    # translate: whole width-1024 frames through G_S→T
    frame = rand(1, 3, *sizes["frame"])

    def translate():
        with torch.no_grad(), autocast:
            translate_image(generator, frame)

    timing = _timed(translate, device, seconds, 2)
    results["translate"] = {**timing, "batch": 1, "size": list(sizes["frame"])}

    # feature stage: its own step, the gate held open (both updates every iteration, its
    # most expensive case)
    feature_crop = sizes["feature_crop"]
    task = segmenter().train()
    freeze_batch_norm(task)
    feature_config = SegFeatureConfig(crop=feature_crop, gate_threshold=-1.0, gate_window=1)
    feature = FeatureStep(context, task, feature_config, 19)
    source, target = frames(1, feature_crop), frames(1, feature_crop)
    timing = _timed(lambda: feature(source, target), device, seconds, 2)
    results["feature"] = {**timing, "batch": 1, "crop": feature_crop}

    # evaluation at full resolution
    task.eval()
    image = rand(1, 3, *sizes["eval"])

    def evaluate():
        with torch.no_grad(), autocast:
            task(image).argmax(1)

    timing = _timed(evaluate, device, seconds, 2)
    results["evaluate"] = {**timing, "batch": 1, "size": list(sizes["eval"])}

    for row in results.values():
        row["images_per_second"] = round(row["batch"] / row["seconds_per_iteration"], 2)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        "bench seg-stages",
        __doc__.splitlines()[0],
        "cycada bench seg-stages --network fastscnn --small --seconds 1",
    )
    add_network(parser, default="drn26")
    parser.add_argument("--seconds", type=seconds(), default=8.0, help="measurement per stage")
    parser.add_argument("--small", action="store_true", help="tiny sizes (CPU smoke test)")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--out", type=Path, help="folder for stages.json")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {
        "model": args.network,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "amp": not args.no_amp and device.type == "cuda",
        "stages": bench(
            args.network, SMALL if args.small else PAPER, device, args.seconds, not args.no_amp
        ),
    }
    text = json.dumps(results, indent=2)
    print(text)
    write_results(args.out, f"stages-{args.network}", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
