"""Pixel-stage training speed: steps/s of one CyCADA pixel step, with and without L_sem.

    cycada bench pixel-stage --batch 100 --size 32 --channels 1

Both variants run in the same process on the same inputs, so their ratio is meaningful on a
shared machine. Default networks are the paper's (Figure 7 generator and discriminator, width
64) with LeNet as the frozen f_S.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from cycada.bench_results import write_results
from cycada.command_line import at_least_one, command_parser
from cycada.models.digit_networks import build_task_net
from cycada.training.core.pixel_adaptation import PixelAdaptation
from cycada.training.digits.config import PixelStageConfig


def steps_per_second(config: PixelStageConfig, channels: int, task: str, steps: int) -> float:
    torch.manual_seed(0)
    pixel = PixelAdaptation(
        config, channels, build_task_net(task), torch.Generator().manual_seed(0)
    )
    size, batch = config.image_size, config.batch_size
    x_src = torch.rand(batch, channels, size, size) * 2 - 1
    x_tgt = torch.rand(batch, channels, size, size) * 2 - 1
    pixel.step(x_src, x_tgt)  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        pixel.step(x_src, x_tgt)
    return steps / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        "bench pixel-stage",
        __doc__.splitlines()[0],
        "cycada bench pixel-stage --batch 100 --size 32 --steps 3",
    )
    parser.add_argument("--batch", type=at_least_one, default=100)
    parser.add_argument(
        "--size", type=at_least_one, default=32, help="side of the square digit images"
    )
    parser.add_argument("--channels", type=at_least_one, default=1)
    parser.add_argument("--task", default="lenet", choices=["lenet", "dtn"])
    parser.add_argument("--generator-width", type=at_least_one, default=64)
    parser.add_argument("--discriminator-width", type=at_least_one, default=64)
    parser.add_argument("--steps", type=at_least_one, default=5)
    parser.add_argument("--out", type=Path, help="write pixel_stage.json here")
    args = parser.parse_args(argv)
    results = {}
    for name, weight in (("with_semantic", 1.0), ("without_semantic", 0.0)):
        config = PixelStageConfig(
            batch_size=args.batch,
            image_size=args.size,
            generator_width=args.generator_width,
            discriminator_width=args.discriminator_width,
            lambda_semantic=weight,
        )
        results[name] = round(steps_per_second(config, args.channels, args.task, args.steps), 4)
    results["semantic_cost"] = round(results["without_semantic"] / results["with_semantic"], 3)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    results.update(settings, device="cpu", threads=torch.get_num_threads())
    print(json.dumps(results))
    write_results(args.out, "pixel_stage", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
