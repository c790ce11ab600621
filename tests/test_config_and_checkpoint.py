import pytest
import torch

from cycada.atomic import write_atomic
from cycada.checkpoint import load_modules, load_state, read_header, save_modules, save_state
from cycada.errors import CheckpointError, ConfigError
from cycada.models.digit_networks import LeNet
from cycada.training.digits.config import resolve_digits_config


def test_presets_resolve_and_hold_paper_defaults():
    paper = resolve_digits_config("paper")
    assert (paper.source.lr, paper.source.batch_size, paper.source.epochs) == (1e-4, 128, 100)
    assert (paper.pixel.lr, paper.pixel.batch_size, paper.pixel.epochs) == (2e-4, 100, 50)
    assert (paper.feature.lr, paper.feature.max_epochs, paper.feature.gate_threshold) == (
        1e-5,
        200,
        0.6,
    )
    quick = resolve_digits_config("quick")
    assert quick.source.epochs < paper.source.epochs
    # the reference's ADDA step: Adam betas (0.9, 0.999), both networks in train mode
    assert (paper.feature.beta1, paper.feature.beta2, paper.feature.network_mode) == (
        0.9,
        0.999,
        "train",
    )


def test_segmentation_paper_schedules_follow_the_model(tmp_path):
    from cycada import configs
    from cycada.training.segmentation.config import resolve_seg_config

    drn = resolve_seg_config("paper")
    assert (drn.source.iterations, drn.target.iterations) == (115000, 115000)
    fcn = resolve_seg_config("paper", overrides={"model": "fcn8s"})
    assert (fcn.source.iterations, fcn.target.iterations) == (100000, 100000)
    assert resolve_seg_config("paper", sets=["source.iterations=7"]).source.iterations == 7
    assert (drn.data.crop_mode, drn.pixel.lr_decay_start) == ("cap", 0.5)
    # the resolved number is what config.yaml records, and reading it back gives the same run
    path = tmp_path / "config.yaml"
    path.write_text(configs.to_yaml(fcn))
    assert "iterations: 100000" in path.read_text()
    assert resolve_seg_config("paper", config_file=str(path)) == fcn


def test_alongside_semantic_classifier_is_refused_for_segmentation():
    from cycada.training.segmentation.config import resolve_seg_config

    with pytest.raises(ConfigError, match="pixel.semantic_model is 'alongside'"):
        resolve_seg_config("paper", sets=["pixel.semantic_model=alongside"])


def test_quick_preset_shift_block_applies_to_its_shift_only(tmp_path):
    from cycada import configs

    m2u = {"data": {"source": "mnist", "target": "usps"}}
    # M→U trains f_S and f_T longer (BENCHMARKS.md); U→M keeps the preset's 20 / 10 epochs
    m2u_config = resolve_digits_config("quick", overrides=m2u)
    assert (m2u_config.source.epochs, m2u_config.target.epochs) == (60, 40)
    u2m = resolve_digits_config("quick")
    assert (u2m.data.source, u2m.source.epochs, u2m.target.epochs) == ("usps", 20, 10)
    # U→M (the default shift, named or not): the reference's pixel recipe for 1,000 steps
    named = resolve_digits_config(
        "quick", overrides={"data": {"source": "usps", "target": "mnist"}}
    )
    assert named == u2m
    assert (u2m.pixel.max_steps, u2m.pixel.semantic_model, u2m.pixel.forward_gan_weight) == (
        1000,
        "alongside",
        2.0,
    )
    assert (m2u_config.pixel.max_steps, m2u_config.pixel.semantic_model) == (500, "source")
    # the user's YAML and --set still win over the shift block
    assert (
        resolve_digits_config("quick", sets=["source.epochs=5"], overrides=m2u).source.epochs == 5
    )
    user = tmp_path / "user.yaml"
    user.write_text("target:\n  epochs: 3\n")
    from_file = resolve_digits_config("quick", config_file=str(user), overrides=m2u)
    assert (from_file.source.epochs, from_file.target.epochs) == (60, 3)
    # a shift chosen in the user's YAML selects the block too
    user.write_text("data:\n  source: mnist\n  target: usps\n")
    assert resolve_digits_config("quick", config_file=str(user)).source.epochs == 60
    # the run's config.yaml records what applied and repeats the run
    ran = tmp_path / "config.yaml"
    ran.write_text(configs.to_yaml(m2u_config))
    assert "epochs: 60" in ran.read_text()
    assert resolve_digits_config("quick", config_file=str(ran)) == m2u_config


def test_every_preset_shift_block_is_a_valid_config():
    """A misspelt key in a shift block must fail here, not in the one run that selects it."""
    from cycada import configs
    from cycada.training.core.presets import PRESET_DIR, preset_names
    from cycada.training.segmentation.config import resolve_seg_config

    resolvers = {"digits": resolve_digits_config, "seg": resolve_seg_config}
    checked = 0
    for task, resolve in resolvers.items():
        for name in preset_names(task):
            shifts = configs.load_yaml(PRESET_DIR / f"{task}-{name}.yaml").get("shifts", {})
            for shift, block in shifts.items():
                source, target = shift.split("->")
                config = resolve(name, overrides={"data": {"source": source, "target": target}})
                resolved = configs.to_dict(config)  # every key built, every value applied
                assert configs.merge(resolved, block) == resolved
                checked += 1
    assert checked >= 1


def test_cyclegan_linear_decay():
    from cycada.training.core.pixel_adaptation import linear_decay

    rates = [linear_decay(2e-4, step, 10, 0.5) for step in range(10)]
    assert rates[:5] == [2e-4] * 5
    assert rates[5:] == pytest.approx([2e-4 * (1 - k / 5) for k in range(5)])
    assert [linear_decay(1.0, step, 4, 1.0) for step in range(4)] == [1.0] * 4


def test_set_flags_override_and_are_typed():
    config = resolve_digits_config("quick", sets=["pixel.lambda_semantic=0", "seed=7"])
    assert config.pixel.lambda_semantic == 0.0 and config.seed == 7


def test_misspelt_key_is_named_with_a_suggestion():
    with pytest.raises(
        ConfigError, match=r"unknown config key 'pixel\.lamda_cycle'.*'lambda_cycle'"
    ):
        resolve_digits_config("paper", sets=["pixel.lamda_cycle=2"])


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match=r"'feature\.disc_input' is 'logits'; expected one of"):
        resolve_digits_config("paper", sets=["feature.disc_input=logits"])
    with pytest.raises(ConfigError, match=r"'source\.epochs' is 'many'; expected an integer"):
        resolve_digits_config("paper", sets=["source.epochs=many"])


def test_user_config_file(tmp_path):
    path = tmp_path / "over.yaml"
    path.write_text("pixel:\n  lambda_cycle: 10\n")
    assert resolve_digits_config("paper", config_file=str(path)).pixel.lambda_cycle == 10.0
    path.write_text("pixle:\n  lambda_cycle: 10\n")
    with pytest.raises(ConfigError, match="'pixle'.*did you mean 'pixel'"):
        resolve_digits_config("paper", config_file=str(path))


def test_checkpoint_round_trip_keeps_config(tmp_path):
    net = LeNet()
    path = save_modules(
        tmp_path / "c.safetensors", {"task_src": net}, {"seed": 3}, {"stage": "source"}
    )
    other = LeNet()
    config, meta = load_modules(path, {"task_src": other})
    assert config == {"seed": 3} and meta == {"stage": "source"}
    for a, b in zip(net.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = save_modules(tmp_path / "c.safetensors", {"task_src": LeNet()}, {}, {})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_modules(path, {"task_src": LeNet()})


def test_wrong_network_is_a_clear_error(tmp_path):
    path = save_modules(tmp_path / "c.safetensors", {"task_src": LeNet()}, {}, {})
    with pytest.raises(CheckpointError, match="has no network 'task_tgt'"):
        load_modules(path, {"task_tgt": LeNet()})


def test_failed_write_keeps_the_last_good_checkpoint(tmp_path):
    path = save_modules(tmp_path / "c.safetensors", {"task_src": LeNet()}, {"v": 1}, {})

    def interrupted_writer(tmp):
        tmp.write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomic(path, interrupted_writer)
    assert read_header(path)[0] == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temp files left


def test_resume_state_is_loaded_without_pickle_code(tmp_path):
    path = save_state(tmp_path / "s.pt", {"epoch": 3, "rng": torch.get_rng_state()})
    assert load_state(path)["epoch"] == 3
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_state(path)


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import torch

    from cycada import checkpoint as checkpoint_module
    from cycada.checkpoint import load_modules, save_modules

    path = tmp_path / "stage.safetensors"
    save_modules(path, {"net": torch.nn.Linear(2, 2)}, {}, {"stage": "source"})
    before = path.read_bytes()

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "save_file", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device; the previous file is kept"):
        save_modules(path, {"net": torch.nn.Linear(2, 2)}, {}, {"stage": "source"})
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    load_modules(path, {"net": torch.nn.Linear(2, 2)})


def test_resume_state_of_an_older_version_is_taken_only_when_its_config_still_matches(tmp_path):
    """A resume state records the run config beside its fingerprint; a state whose fingerprint
    differs is restored only when the run accepts that config (an older cycada's, same values)."""
    from cycada.training.core.resume import StageResume

    path = tmp_path / "pixel.resume.pt"
    net = torch.nn.Linear(2, 2)
    config = {"pixel": {"lambda_cycle": 1.0}}
    StageResume(path, {"net": net}, {}, torch.Generator(), "old", config=config).save(3)
    assert load_state(path)["config"] == config

    def resume(accepts):
        return StageResume(
            path, {"net": torch.nn.Linear(2, 2)}, {}, torch.Generator(), "new", accepts=accepts
        )

    seen = []
    start, _ = resume(
        lambda fingerprint, recorded: seen.append((fingerprint, recorded)) or True
    ).restore()
    assert start == 3 and seen == [("old", config)]
    with pytest.raises(CheckpointError, match="different config"):
        resume(lambda fingerprint, recorded: False).restore()
    with pytest.raises(CheckpointError, match="different config"):
        resume(None).restore()


def test_a_read_only_file_is_copied_into_place_by_a_user_who_cannot_write_it():
    """translate-dir --labels copies label files that may be read-only (0444): the copy is
    fsynced through a read-only handle, not reopened for writing. Run as an unprivileged user
    in a forked child (root may write anything)."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from cycada.clients.translate_dir import _place_label

    folder = Path(tempfile.mkdtemp(prefix="cycada-readonly-", dir="/tmp"))
    try:
        folder.chmod(0o777)
        source = folder / "label.png"
        source.write_bytes(b"label bytes" * 10)
        source.chmod(0o444)
        target = folder / "labels" / "label.png"
        pid = os.fork()
        if pid == 0:  # the child: drop root, copy, report by exit code
            code = 1
            try:
                if os.getuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                _place_label(source, target, link=False)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert target.read_bytes() == source.read_bytes()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
