"""How well a digits run's G_S→T translations read as their source labels in the target style.

    cycada bench translation-fidelity runs/u2m/no_feat runs/u2m/full --dataset mnist --split test

A classifier of the run's own architecture is trained on a labelled target split (the
"target supervised" model: it reads target-style digits, and only those, well); it then reads
each run's translated source set (``RUN/translated/source_train.npz``) and the raw source set.
Accuracy on the translations against the source labels says how often G_S→T produced a
target-style image of the right class; the raw-source figure is what no translation at all
gets. f_S's accuracy on the translations is what the semantic loss (Eq. 4) asks to keep; the
stage-3 f_T's accuracy and confidence on the translations against on the target images show
how far what it learnt from the translations carries to real target images.

A diagnostic that reads target labels: never use it to choose settings you then report on the
same target images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from cycada.bench_results import write_results
from cycada.checkpoint import load_modules, read_header
from cycada.command_line import at_least_one, command_parser
from cycada.errors import CheckpointError, DataError
from cycada.models.digit_networks import DigitTaskNet, build_task_net
from cycada.models.transforms import fit_images, to_unit_range
from cycada.training.core.batches import epoch_batches
from cycada.training.digits.data import load_digits
from cycada.training.digits.metrics import predict


def train_classifier(
    model: str, images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int
) -> DigitTaskNet:
    """Adam 1e-3, batch 128: the target-supervised reader."""
    torch.manual_seed(seed)
    net = build_task_net(model, 10)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        for index in epoch_batches(len(images), 128, order, drop_last=False):
            loss = torch.nn.functional.cross_entropy(net(images[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return net.eval()


@torch.no_grad()
def probabilities(net: DigitTaskNet, images: torch.Tensor) -> torch.Tensor:
    net.eval()
    return torch.cat([net(batch).softmax(1) for batch in images.split(1000)])


def accuracy(net: DigitTaskNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    predicted = predict(net, images, 1000, torch.device("cpu"))
    return round(100.0 * float((predicted == labels.numpy()).mean()), 2)


def confidence(net: DigitTaskNet, images: torch.Tensor) -> float:
    """Mean top-class probability, in %."""
    return round(100.0 * float(probabilities(net, images).max(1).values.mean()), 2)


def read_translations(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    path = run_dir / "translated" / "source_train.npz"
    if not path.is_file():
        raise DataError(
            f"{run_dir} has no translated source set ({path}); pass a run (or ablation row) "
            "folder whose target stage has run"
        )
    with np.load(path) as stored:
        return to_unit_range(stored["images"]), torch.as_tensor(stored["labels"])


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        "bench translation-fidelity",
        __doc__.splitlines()[0],
        "cycada bench translation-fidelity runs/u2m/no_feat runs/u2m/full --dataset mnist",
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run or ablation-row folders")
    parser.add_argument("--dataset", default="mnist", help="labelled target domain to learn")
    parser.add_argument("--split", default="test", help="its labelled split (default test)")
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--epochs", type=at_least_one, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write translation_fidelity.json here")
    args = parser.parse_args(argv)
    config, meta = read_header(args.runs[0] / "checkpoints" / "source.safetensors")
    model, channels, size = meta["model"], meta["image_channels"], meta["image_size"]
    data = config["data"]

    def prepared(name: str, split: str, limit: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        digits = load_digits(name, split, args.data_root, data["synthetic_size"], config["seed"])
        digits = digits.head(limit)
        images = fit_images(to_unit_range(digits.images), channels, size)
        return images, torch.as_tensor(digits.labels)

    target_images, target_labels = prepared(args.dataset, args.split)
    reader = train_classifier(model, target_images, target_labels, args.epochs, args.seed)
    # the source set exactly as the run loaded (and translated) it
    raw_images, raw_labels = prepared(data["source"], data["source_split"], data["max_samples"])
    results: dict = {
        "reader": f"{model} trained {args.epochs} epochs on {args.dataset}/{args.split}",
        "reader_on_its_training_set": accuracy(reader, target_images, target_labels),
        "reader_on_raw_source": accuracy(reader, raw_images, raw_labels),
        "source": f"{data['source']}/{data['source_split']}",
        "runs": {},
    }
    for run_dir in args.runs:
        run_config, run_meta = read_header(run_dir / "checkpoints" / "source.safetensors")
        if run_meta["model"] != model or run_config["data"]["source"] != data["source"]:
            raise CheckpointError(f"{run_dir}: another model or source than {args.runs[0]}")
        images, labels = read_translations(run_dir)
        task_src = build_task_net(model, 10)
        load_modules(run_dir / "checkpoints" / "source.safetensors", {"task_src": task_src})
        row = {
            "reader_on_translations": accuracy(reader, images, labels),
            "f_s_on_translations": accuracy(task_src, images, labels),
        }
        target_checkpoint = run_dir / "checkpoints" / "target.safetensors"
        if target_checkpoint.is_file():  # what f_T took from the translations it trained on
            task_tgt = build_task_net(model, 10)
            load_modules(target_checkpoint, {"task_tgt": task_tgt})
            row |= {
                "f_t_on_translations": accuracy(task_tgt, images, labels),
                "f_t_on_target": accuracy(task_tgt, target_images, target_labels),
                "f_t_confidence_on_translations": confidence(task_tgt, images),
                "f_t_confidence_on_target": confidence(task_tgt, target_images),
            }
        results["runs"][str(run_dir)] = row
    print(json.dumps(results, indent=1))
    write_results(args.out, "translation_fidelity", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
