"""End-to-end segmentation runs on tiny synthetic scenes (game style → camera style)."""

from __future__ import annotations

import json

import pytest

from cycada.errors import CheckpointError, DataError
from cycada.training.segmentation.cli import seg_row_config
from cycada.training.segmentation.config import resolve_seg_config
from cycada.training.segmentation.eval import evaluate_seg_checkpoint
from cycada.training.segmentation.label_spaces import CITYSCAPES19
from cycada.training.segmentation.pipeline import run_seg
from cycada.training.segmentation.scene_writer import write_scene_dataset
from tests.helpers import TINY_SEG, as_an_older_cycada_wrote_it

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    write_scene_dataset(root / "gta5", 6, "game", "gta5", 128, 64)
    write_scene_dataset(
        root / "cityscapes", 6, "camera", "cityscapes", 128, 64, split="train", labels=False
    )
    write_scene_dataset(
        root / "cityscapes", 3, "camera", "cityscapes", 128, 64, split="val", seed=1
    )
    return root


def tiny(scenes, *extra):
    return resolve_seg_config(
        "quick", sets=[*TINY_SEG, *extra], overrides={"data": {"data_root": str(scenes)}}
    )


def test_full_seg_run(tmp_path, scenes):
    config = tiny(scenes, "target.iterations=20", "target.poly_power=0.9", "feature.crop=96")
    metrics = run_seg(config, tmp_path, quiet=True)
    # 128x64 scenes: the 96 crop is cut to the image height, never padded
    assert (
        "feature: crops 64x96 (crop 96 capped at the images)" in (tmp_path / "log.txt").read_text()
    )
    assert list(metrics["stages"]) == ["source", "target", "feature"]
    for stage in metrics["stages"].values():
        target = stage["target"]
        assert {"miou", "fwiou", "pixel_accuracy", "mean_class_accuracy"} <= set(target)
        assert 0.0 <= target["miou"] <= 1.0 and target["dataset"] == "cityscapes/val"
    assert metrics["final"]["stage"] == "feature"
    manifest = json.loads((tmp_path / "translated" / "dataset.json").read_text())
    assert manifest["images"] == 6
    assert len(list((tmp_path / "translated" / "images").glob("*.png"))) == 6
    assert len(list((tmp_path / "translated" / "labels").glob("*.png"))) == 6
    table = (tmp_path / "tables" / "table.md").read_text().splitlines()
    assert table[0].startswith("| Model | road | sidewalk | building |")
    assert len(table) == 7  # header, rule, three rows; the verdict under them
    assert table[6].startswith(f"ship: {metrics['verdict']['stage']} (labelled: best mIoU")
    assert len(list((tmp_path / "eval" / "feature" / "panels").glob("*.png"))) == 2
    for figure in ("tables/per_class_iou.png", "curves.png"):  # matplotlib figures
        assert (tmp_path / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
    assert list((tmp_path / "samples").glob("pixel_step*.png"))
    for stage in ("source", "pixel", "target", "feature"):
        assert (tmp_path / "checkpoints" / f"{stage}.safetensors").exists()
    # f_T follows its own poly schedule (the target stage once ignored target.poly_power)
    scalars = [json.loads(line) for line in (tmp_path / "scalars.jsonl").read_text().splitlines()]
    target_lr = {row["step"]: row["lr"] for row in scalars if row["stage"] == "target"}
    base = config.target.lr
    assert target_lr[10] == pytest.approx(base * (1 - 9 / 20) ** 0.9)
    assert target_lr[20] == pytest.approx(base * (1 - 19 / 20) ** 0.9)
    again = run_seg(config, tmp_path, quiet=True)  # everything finished: nothing reruns
    assert again["final"] == metrics["final"]
    # all five stages, the translate stage included (its manifest carries the fingerprint)
    assert (tmp_path / "log.txt").read_text().count("finished output found") == 5
    run_seg(config, tmp_path, stages=["feature"], quiet=True)  # one stage of a finished run
    assert (tmp_path / "log.txt").read_text().count("finished output found") == 10
    # as an older cycada left it (no newer pixel options, other fingerprints, a manifest without
    # its config): after the upgrade every stage still counts as finished, nothing retrains
    for stage in ("source", "pixel", "target", "feature"):
        as_an_older_cycada_wrote_it(tmp_path / "checkpoints" / f"{stage}.safetensors")
    del manifest["config"]
    manifest.update(fingerprint="0123456789abcdef")
    (tmp_path / "translated" / "dataset.json").write_text(json.dumps(manifest))
    assert run_seg(config, tmp_path, quiet=True)["final"] == metrics["final"]
    assert (tmp_path / "log.txt").read_text().count("finished output found") == 15

    out = tmp_path / "eval-cli"
    line = evaluate_seg_checkpoint(
        tmp_path / "checkpoints" / "feature.safetensors",
        "cityscapes",
        "val",
        str(scenes),
        out,
        tmp_path / "checkpoints" / "source.safetensors",
        0,
    )
    assert "mIoU" in line and (out / "table.csv").exists()


@pytest.mark.parametrize(
    "stage, workers, stop",
    [
        ("source", 0, 4),
        ("source", 2, 4),
        ("source", 0, 6),  # 3 batches a pass: the stop falls on the end of the second pass
        ("pixel", 0, 4),
        ("pixel", 2, 4),
        ("pixel", 0, 6),
        ("feature", 0, 4),
    ],
)
def test_interrupted_stage_resumes_with_the_batches_of_an_uninterrupted_run(
    tmp_path, scenes, monkeypatch, stage, workers, stop
):
    """Stopped right after its resume state at step ``stop``, a stage resumes there and ends
    with exactly the weights of a run that never stopped: the same order and crops, no image
    seen twice or skipped (a resume once began a new pass, with the first pass's crops), the
    pixel stage's pool of earlier translations and the feature gate's window kept."""
    from safetensors.torch import load_file

    from cycada.training.core.resume import StageResume

    config = tiny(
        scenes,
        "checkpoint_every=2",
        f"data.workers={workers}",
        "source.iterations=8",
        "pixel.max_steps=8",
        "feature.iterations=8",
        "pixel.pool_size=2",  # full before the stop: its images and draws must survive it
        "feature.gate_window=3",  # the gate's window and the stop rule's count span the stop
        "target.iterations=1",
    )
    run_seg(config, tmp_path / "straight", quiet=True)

    save = StageResume.save

    def save_then_stop(self, next_epoch, extra=None):
        save(self, next_epoch, extra)
        if self.path.name.startswith(stage) and next_epoch == stop:
            raise KeyboardInterrupt  # as Ctrl-C right after the resume state is written

    monkeypatch.setattr(StageResume, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_seg(config, tmp_path / "stopped", quiet=True)
    monkeypatch.setattr(StageResume, "save", save)
    run_seg(config, tmp_path / "stopped", quiet=True)
    log = (tmp_path / "stopped" / "log.txt").read_text()
    assert (
        f"{stage}: resuming at iteration {stop}/8" in log
        or f"{stage}: resuming at step {stop}/8" in log
    )

    straight, resumed = (
        load_file(tmp_path / name / "checkpoints" / f"{stage}.safetensors")
        for name in ("straight", "stopped")
    )
    assert straight.keys() == resumed.keys()
    differing = [key for key in straight if not straight[key].equal(resumed[key])]
    assert not differing, f"{len(differing)} of {len(straight)} tensors differ: {differing[:3]}"


def test_feature_discriminator_takes_its_own_rate(tmp_path, scenes, monkeypatch):
    """``feature.disc_lr`` sets D_feat's rate alone (0: f_T's, as in the paper); ``--restart``
    drops the stage's resume states, ranks' files included."""
    from cycada.checkpoint import load_state
    from cycada.training.core.resume import StageResume

    monkeypatch.setattr(StageResume, "finish", lambda self: None)  # keep the last state
    config = tiny(scenes, "checkpoint_every=1", "feature.lr=0.001", "feature.disc_lr=0.25")
    run_seg(config, tmp_path, quiet=True)
    groups = load_state(tmp_path / "checkpoints" / "feature.resume.pt")["optimizers"]
    assert groups["disc"]["param_groups"][0]["lr"] == 0.25
    assert groups["task"]["param_groups"][0]["lr"] == 0.001
    # --restart drops a stage's resume states, data-parallel ranks' files included
    stale = tmp_path / "checkpoints" / "feature.resume.rank1.step3.pt"
    stale.write_bytes(b"from an earlier torchrun")
    run_seg(config, tmp_path, stages=["feature"], restart=True, quiet=True)
    assert not stale.exists()


def test_table5_rows_share_stages_beside_the_control(tmp_path, scenes):
    from cycada.cli import main

    rows = "source_only,control,full"
    sets = [f"--set={item}" for item in TINY_SEG]
    code = main(
        ["ablate", "seg", "--data-root", str(scenes), "--preset", "quick", *sets]
        + ["--rows", rows, "--out", str(tmp_path), "--quiet"]
    )
    assert code == 0
    table = (tmp_path / "results.md").read_text()
    for name in ("Source only |", "(control) |", "CyCADA |"):
        assert name in table
    # the adapted row's gain over the control beside its mIoU; blank for the rows not adapted
    header, _, *lines = table.split("\n\n")[0].splitlines()
    assert "a gain over it is not a gain from training longer" in table
    gain_at = header.split(" | ").index("mIoU over the control")
    gains = {line.split(" | ")[0]: line.split(" | ")[gain_at] for line in lines}
    assert gains["| Source only"] == "" and gains["| CyCADA"][0] in "+-"
    assert "miou_over_control" in (tmp_path / "results.csv").read_text().splitlines()[0]
    records = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["row"] for r in records] == rows.split(",")
    by_row = {r["row"]: r for r in records}
    assert by_row["full"]["over_control"] == pytest.approx(
        by_row["full"]["miou"] - by_row["control"]["miou"], abs=0.011
    )
    assert by_row["control"]["over_control"] is None and 0 <= by_row["full"]["miou"] <= 100
    cache = tmp_path / "_stage_cache"
    # f_S once for source_only and full (reused from the cache), once for the longer control
    assert len(list(cache.glob("source-*"))) == 2 and len(list(cache.glob("pixel-*"))) == 1
    assert "reusing" in (tmp_path / "full" / "log.txt").read_text()
    config = {
        row: resolve_seg_config(config_file=str(tmp_path / row / "config.yaml"))
        for row in rows.split(",")
    }
    assert config["control"].source.iterations == 6 + 4 + 6  # source + target + feature
    assert config["full"].pixel.lambda_semantic == 0  # the paper's rows ran without it
    ours = seg_row_config(tiny(scenes), "full_semantic")
    assert ours.pixel.lambda_semantic > 0 and ours.feature.enabled
    feature_only = seg_row_config(tiny(scenes), "feature_only")
    assert not feature_only.pixel.enabled and feature_only.feature.enabled
    no_cycle = seg_row_config(tiny(scenes), "pixel_only_no_cycle")
    assert no_cycle.pixel.lambda_cycle == 0 and not no_cycle.feature.enabled
    oracle = seg_row_config(tiny(scenes), "oracle")
    assert (oracle.data.source, oracle.data.source_split) == ("cityscapes", "train")
    assert not oracle.pixel.enabled and not oracle.feature.enabled


def test_stage_order_and_class_count_errors(tmp_path, scenes):
    with pytest.raises(CheckpointError, match="stage 'source' has no finished output"):
        run_seg(tiny(scenes), tmp_path, stages=["pixel"], quiet=True)
    run_seg(
        tiny(scenes, "pixel.enabled=false", "feature.enabled=false"), tmp_path / "a", quiet=True
    )
    with pytest.raises(CheckpointError, match="does not match"):
        from cycada.checkpoint import load_modules
        from cycada.models.segmenters import FastSCNN

        load_modules(
            tmp_path / "a" / "checkpoints" / "source.safetensors", {"task_src": FastSCNN(13)}
        )


# --- unlabelled targets, evaluation apart from the target, mapping files -----------------------
def _cli(*args):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "cycada.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from cycada.training.segmentation.scene_writer import write_clip

    return write_clip(tmp_path_factory.mktemp("clip") / "drive.mp4", 30, 256, 128, seed=2)


def test_video_target_without_labels_runs_every_stage_with_label_free_signals(
    tmp_path, scenes, clip
):
    video = [
        f"data.target=video:{clip}",
        "data.target_fps=inf",
        "data.target_dedup=0",
        "data.label_free_frames=3",
    ]
    metrics = run_seg(tiny(scenes, *video), tmp_path, quiet=True)
    assert metrics["evaluation"]["labelled"] is None
    assert "3 held-out frames of video:" in metrics["evaluation"]["label_free"]
    assert list(metrics["stages"]) == ["source", "target", "feature"]
    for name, stage in metrics["stages"].items():
        assert "target" not in stage  # nothing labelled to measure
        signals = stage["label_free"]
        assert signals["frames"] == 3 and 0 < signals["mean_confidence"] <= 1
        assert 0 <= signals["class_share_distance"] <= 1
        assert abs(sum(signals["class_shares"].values()) - 1) < 1e-6
        assert (signals["agreement_with_previous"] is None) == (name == "source")
        assert len(list((tmp_path / "eval" / name / "label_free_panels").glob("*.png"))) == 2
    assert metrics["stages"]["feature"]["label_free"]["previous_stage"] == "target"
    assert metrics["final"]["evaluation"] == "label-free"
    verdict = metrics["verdict"]  # the stage to ship, judged by the signals alone
    assert verdict["by"] == "label-free" and metrics["final"]["ship"] == verdict["stage"]
    assert f"ship: {verdict['stage']} (label-free: " in (tmp_path / "log.txt").read_text()
    rows = (tmp_path / "target_frames" / "index.csv").read_text().splitlines()
    assert len(rows) == 31 and rows[0] == "frame,video,frame_number,time_s"
    assert "label-free signals on 3 held-out frames" in (tmp_path / "log.txt").read_text()
    table = (tmp_path / "tables" / "label_free.md").read_text()
    assert "Source only (source)" in table and "CyCADA (feature)" in table
    assert not (tmp_path / "tables" / "table.md").exists()

    # the same run with a labelled evaluation set: nothing retrains, every stage is measured
    again = run_seg(tiny(scenes, *video, "data.eval_set=cityscapes"), tmp_path, quiet=True)
    assert again["evaluation"]["labelled"] == "cityscapes/val"
    for stage in again["stages"].values():
        assert stage["target"]["dataset"] == "cityscapes/val" and "label_free" in stage
    assert again["final"]["evaluation"] == "labelled"
    miou = {name: stage["target"]["miou"] for name, stage in again["stages"].items()}
    best = max(reversed(miou), key=miou.get)  # a tie goes to the later stage
    assert again["verdict"]["by"] == "labelled" and again["verdict"]["stage"] == best
    assert (tmp_path / "log.txt").read_text().count("finished output found") >= 4
    assert (tmp_path / "tables" / "table.md").exists()

    checkpoint = tmp_path / "checkpoints" / "feature.safetensors"
    line = evaluate_seg_checkpoint(checkpoint, "gta5", "train", str(scenes), None, None, 2)
    assert line.startswith("gta5/train:")  # the dataset asked for, not the run's eval set
    with pytest.raises(DataError, match="has no labels"):
        evaluate_seg_checkpoint(checkpoint, f"video:{clip}", "train", ".", None, None, 0)


def _folder_domain(root, scenes, mapping_lines):
    """The tiny GTA5 scenes as a folder domain with a mapping file (Cityscapes label ids)."""
    images, labels = scenes / "gta5" / "images", scenes / "gta5" / "labels"
    mapping = root / "mapping.txt"
    mapping.write_text("\n".join(mapping_lines) + "\n")
    return f"folder:{images}:{labels}:{mapping}"


def _cityscapes_mapping():
    from cycada.training.segmentation.label_spaces import CITYSCAPES_ID_TO_TRAIN

    lines = [f"{raw} {train}" for raw, train in CITYSCAPES_ID_TO_TRAIN.items()]
    return lines + [f"{raw} 255" for raw in range(34) if raw not in CITYSCAPES_ID_TO_TRAIN]


def test_mapping_with_255_trains_and_evaluates(tmp_path, scenes):
    domain = _folder_domain(tmp_path, scenes, ["# raw train", *_cityscapes_mapping()])
    target = f"folder:{scenes / 'cityscapes' / 'leftImg8bit' / 'train'}"
    config = tiny(
        scenes, f"data.source={domain}", f"data.target={target}", f"data.eval_set={domain}"
    )
    metrics = run_seg(config, tmp_path / "run", quiet=True)
    assert list(metrics["stages"]) == ["source", "target", "feature"]
    source = metrics["stages"]["source"]["target"]
    assert "255" not in map(str, source["per_class_iou"])  # ignore is not a class
    assert source["evaluated_classes"] == list(CITYSCAPES19.classes)  # 255 left out
    assert "label_free" in metrics["stages"]["feature"]  # the unlabelled folder target
    assert (tmp_path / "run" / "tables" / "table.md").exists()

    # an id in the labels that the mapping leaves out: an error naming the file and the ids
    lines = [line for line in _cityscapes_mapping() if not line.startswith("7 ")]  # no road
    partial = _folder_domain(tmp_path / "run", scenes, lines)
    with pytest.raises(DataError, match=r"label ids \[7\] in .* are missing from the mapping"):
        run_seg(tiny(scenes, f"data.source={partial}"), tmp_path / "partial", quiet=True)


def test_unlabelled_domains_refused_where_labels_are_needed(tmp_path, scenes):
    images = scenes / "cityscapes" / "leftImg8bit" / "train"
    with pytest.raises(DataError, match="source folder:.* has no labels"):
        run_seg(tiny(scenes, f"data.source=folder:{images}"), tmp_path / "a", quiet=True)
    with pytest.raises(DataError, match="evaluation set folder:.* has no labels"):
        run_seg(tiny(scenes, f"data.eval_set=folder:{images}"), tmp_path / "b", quiet=True)
    with pytest.raises(DataError, match="evaluation set cityscapes/train has 6 of 6 images"):
        run_seg(
            tiny(scenes, "data.eval_set=cityscapes", "data.eval_split=train"),
            tmp_path / "c",
            quiet=True,
        )
    labels = tmp_path / "labels"
    labels.mkdir()
    for label in sorted((scenes / "gta5" / "labels").glob("*.png"))[:4]:
        (labels / label.name).write_bytes(label.read_bytes())
    with pytest.raises(DataError, match="2 of 6 images in .* have no label in"):
        run_seg(
            tiny(scenes, f"data.source=folder:{scenes / 'gta5' / 'images'}:{labels}"),
            tmp_path / "d",
            quiet=True,
        )
    for folder in ("a", "b", "c", "d"):  # refused before anything was written
        assert not (tmp_path / folder / "config.yaml").exists()
        assert not (tmp_path / folder / "checkpoints").exists()


def test_cli_bad_video_inputs_one_line_errors(tmp_path, scenes):
    common = [
        "train", "seg", "--source", "gta5", "--data-root", str(scenes), "--preset", "quick",
        "--network", "fastscnn", "--out", str(tmp_path / "run"),
    ]  # fmt: skip
    done = _cli(*common, "--target", f"video:{tmp_path}", "--target-fps", "0")
    assert done.returncode == 2 and "--target-fps: 0 must be > 0" in done.stderr
    (tmp_path / "fleet").mkdir()
    (tmp_path / "fleet" / "broken.mp4").write_bytes(b"\x00" * 4096)
    done = _cli(*common, "--target", f"video:{tmp_path / 'fleet'}")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "no readable video frames" in done.stderr and "broken.mp4" in done.stderr
    assert not (tmp_path / "run" / "target_frames").exists()
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_table5_rows_over_seeds(tmp_path, scenes, capsys):
    """`--seeds`: each seed's rows in its own process and folder, then their means and the
    paired difference of full and the control."""
    from cycada.cli import main

    sets = [f"--set={item}" for item in TINY_SEG]
    argv = ["ablate", "seg", "--data-root", str(scenes), "--preset", "quick", *sets]
    argv += ["--rows", "control,full", "--seeds", "0-1", "--jobs", "2", "--out", str(tmp_path)]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["finished"] == [0, 1]
    for seed in (0, 1):
        rows = json.loads((tmp_path / f"seed-{seed}" / "results.json").read_text())["rows"]
        for row in rows:
            mean_row = next(r for r in summary["rows"] if r["row"] == row["row"])
            assert mean_row["per_seed"][str(seed)] == row["miou"]
    (difference,) = summary["differences"]
    assert (difference["first"], difference["second"]) == ("full", "control")
    table = capsys.readouterr().out
    assert "(mIoU on cityscapes/val, %)" in table and "| full − control |" in table
    assert "seed: 1\n" in (tmp_path / "seed-1" / "full" / "config.yaml").read_text()
