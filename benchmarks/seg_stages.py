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

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from cycada.bench_results import write_results
from cycada.command_line import add_network, command_parser
from cycada.models.segmenters import build_segmenter
from cycada.training.core.discriminators import ScoreMapDiscriminator
from cycada.training.core.losses.feature_gan import SOURCE_DOMAIN, TARGET_DOMAIN, FeatureGANLoss
from cycada.training.core.losses.task import TaskLoss
from cycada.training.core.pixel_adaptation import PixelAdaptation
from cycada.training.segmentation.config import SegPixelConfig
from cycada.training.segmentation.stages.feature import freeze_batch_norm
from cycada.training.segmentation.stages.pixel import translate_image

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


def _feature_step(task, crop: int, device: torch.device, memory, autocast):
    """One feature-stage iteration at ``crop``: the score-map discriminator's update, then
    f_T's (inverted-label GAN loss + the source task loss), as the training stage does."""
    freeze_batch_norm(task)
    disc = ScoreMapDiscriminator(19).to(device, memory_format=memory)
    sgd = dict(lr=1e-5, momentum=0.99, weight_decay=5e-4)
    opt_task, opt_disc = (
        torch.optim.SGD(task.parameters(), **sgd),
        torch.optim.SGD(disc.parameters(), **sgd),
    )
    f_src, f_tgt = (
        (torch.rand(1, 3, crop, crop, device=device) * 2 - 1).contiguous(memory_format=memory)
        for _ in range(2)
    )
    labels = torch.randint(0, 19, (1, crop, crop), device=device)
    gan, task_loss = FeatureGANLoss(), TaskLoss()

    def feature():
        with autocast:
            s_src, s_tgt = task.score_maps(f_src), task.score_maps(f_tgt)
            loss_disc = gan(disc(s_src.detach()), SOURCE_DOMAIN) + gan(
                disc(s_tgt.detach()), TARGET_DOMAIN
            )
        opt_disc.zero_grad(set_to_none=True)
        loss_disc.float().backward()
        opt_disc.step()
        with autocast:
            logits = F.interpolate(s_src, size=f_src.shape[-2:], mode="bilinear")
            loss = 0.1 * gan(disc(s_tgt), SOURCE_DOMAIN) + task_loss(logits, labels)
        opt_task.zero_grad(set_to_none=True)
        loss.float().backward()
        opt_task.step()

    return feature


def bench(model_name: str, sizes: dict, device: torch.device, seconds: float, amp: bool) -> dict:
    cuda = device.type == "cuda"
    memory = torch.channels_last if cuda else torch.contiguous_format
    autocast = (
        torch.autocast("cuda", dtype=torch.float16) if cuda and amp else contextlib.nullcontext()
    )

    def segmenter():
        return build_segmenter(model_name, 19).to(device, memory_format=memory)

    def rand(*shape):
        return (torch.rand(*shape, device=device) * 2 - 1).contiguous(memory_format=memory)

    results: dict[str, dict] = {}
    crop, batch = sizes["seg_crop"], sizes["seg_batch"]

    # source / target: the same supervised step (SGD lr 1e-3, momentum 0.9)
    model = segmenter().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and amp)
    x = rand(batch, 3, crop, crop)
    y = torch.randint(0, 19, (batch, crop, crop), device=device)
    task_loss = TaskLoss()

    def supervised():
        with autocast:
            loss = task_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    timing = _timed(supervised, device, seconds, 2)
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

    # feature stage: f_T + score-map discriminator, gate open (both updates every iteration)
    feature_crop = sizes["feature_crop"]
    task = segmenter().train()
    feature = _feature_step(task, feature_crop, device, memory, autocast)

    timing = _timed(feature, device, seconds, 2)
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
    parser.add_argument("--seconds", type=float, default=8.0, help="measurement per stage")
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
