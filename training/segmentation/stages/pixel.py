"""Segmentation pixel stage (CycleGAN on random crops, + semantic loss) and the translate stage,
which rewrites the whole source set into the target style beside its labels."""

from __future__ import annotations

import json
import shutil

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cycada import configs
from cycada.atomic import write_json_atomic
from cycada.models.segmenters import Segmenter
from cycada.training.core.pixel_adaptation import PixelAdaptation, linear_decay, write_samples
from cycada.training.core.visuals import write_png
from cycada.training.segmentation.data import SegmentationSet, load_segmentation
from cycada.training.segmentation.loaders import (
    endless_batches,
    resume_streams,
    stream_places,
    train_transform,
)
from cycada.training.segmentation.run import SegRun
from cycada.training.segmentation.transforms import resize_to_width


def train_pixel(run: SegRun, task_src: Segmenter) -> PixelAdaptation:
    cfg = run.config.pixel
    generator = run.generator("pixel")
    pixel = PixelAdaptation(cfg, 3, task_src, generator, amp=run.cuda and run.config.amp)
    pixel = pixel.to(run.device)
    if run.dist.enabled:
        pixel.grad_sync = run.sync_gradients
    steps_per_epoch = max(len(run.source_train), len(run.target_train)) // cfg.batch_size or 1
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    transform = train_transform(run, "pixel", cfg.crop, False, run.source_train, run.target_train)
    sources = endless_batches(run, run.source_train, transform, cfg.batch_size, generator)
    targets = endless_batches(run, run.target_train, transform, cfg.batch_size, generator)
    resume = run.stage_resume(
        "pixel", pixel.networks(), {"gen": pixel.opt_gen, "disc": pixel.opt_disc}, generator
    )
    start, extra = resume.restore()
    streams = {"source": sources, "target": targets}
    if start:
        run.log.info(f"pixel: resuming at step {start}/{total}")
        resume_streams(generator, streams, extra.get("streams"))
        for name, pool in (("source", pixel.pool_src), ("target", pixel.pool_tgt)):
            if name in extra.get("pools", {}):  # older resume states: an empty pool
                pool.load(extra["pools"][name].to(run.device))
    if run.cuda:
        torch.cuda.reset_peak_memory_stats(run.device)
    bar = run.log.progress(total, "pixel", initial=start)
    pixel.train()
    for step in range(start, total):
        pixel.set_lr(linear_decay(cfg.lr, step, total, cfg.lr_decay_start))
        x_src = run.input(next(sources)["image"])
        x_tgt = run.input(next(targets)["image"])
        losses, _ = pixel.step(x_src, x_tgt)
        bar.update()
        if (step + 1) % 10 == 0:
            bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
            run.log.scalars(
                "pixel", {**losses, "lr": pixel.opt_gen.param_groups[0]["lr"]}, step + 1
            )
        if (step + 1) % cfg.sample_every == 0 or step + 1 == total:
            write_samples(run.out_dir, pixel, x_src[:2], x_tgt[:2], step + 1, scale=1)
        if (step + 1) % run.config.checkpoint_every == 0:
            pools = {"source": pixel.pool_src.state(), "target": pixel.pool_tgt.state()}
            resume.save(step + 1, {"streams": stream_places(streams), "pools": pools})
    bar.close()
    resume.finish()
    if run.cuda:
        peak = torch.cuda.max_memory_allocated(run.device) / 2**30
        run.log.info(f"pixel: peak GPU memory {peak:.2f} GiB")
    pixel.eval()
    return pixel


@torch.no_grad()
def translate_image(generator: nn.Module, x: torch.Tensor, stride: int = 4) -> torch.Tensor:
    """Run a fully convolutional generator on any size: reflect-pad to the stride, then crop."""
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % stride, (-width) % stride
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
    return generator(x)[..., :height, :width]


def translated_paths(run: SegRun):
    root = run.out_dir / "translated"
    return root, root / "images", root / "labels"


def translate_source(run: SegRun, gen_src2tgt: nn.Module, fingerprint: str) -> SegmentationSet:
    """G_S→T over the whole source training set at the run's width, written beside its labels.

    Layout: ``translated/images/<name>.png`` and ``translated/labels/<name>.png`` (label-space
    ids, 255 ignore), readable as ``folder:translated/images:translated/labels``. Finished files
    are kept, so an interrupted translation resumes.
    """
    root, images_dir, labels_dir = translated_paths(run)
    dataset = run.source_train
    started = root / "started.json"  # which generator the files on disk come from
    if started.exists() and json.loads(started.read_text()).get("fingerprint") != fingerprint:
        shutil.rmtree(images_dir, ignore_errors=True)  # another generator's images: stale
        shutil.rmtree(labels_dir, ignore_errors=True)
    write_json_atomic(started, {"fingerprint": fingerprint})
    gen_src2tgt.eval()
    bar = run.log.progress(len(dataset), "translate")
    for index, item in enumerate(dataset.items):
        name = f"{index:06d}_{item.image.stem}.png"
        if not (images_dir / name).exists():
            image, label = dataset.load_raw(index)
            image, label = resize_to_width(image, label, run.config.data.resize_width)
            x = run.input(torch.from_numpy(image).permute(2, 0, 1)[None])
            with run.autocast():
                fake = translate_image(gen_src2tgt, x)
            pixels = fake.float().add(1).mul(127.5).round().clamp(0, 255).byte()
            write_png(labels_dir / name, label.astype(np.uint8))
            write_png(images_dir / name, pixels[0].permute(1, 2, 0).cpu().numpy())
        bar.update()
    bar.close()
    write_json_atomic(
        root / "dataset.json",
        {
            "what": f"{dataset.name}/{dataset.split} translated into the style of "
            f"{run.config.data.target} by G_S→T",
            "images": len(dataset),
            "label_space": run.space.name,
            "use_as": f"folder:{images_dir}:{labels_dir}",
            "fingerprint": fingerprint,
            "config": configs.to_dict(run.config),
        },
    )
    return translated_set(run)


def translated_set(run: SegRun) -> SegmentationSet:
    root, images_dir, labels_dir = translated_paths(run)
    return load_segmentation(f"folder:{images_dir}:{labels_dir}", "train", ".", run.space)
