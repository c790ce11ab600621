import numpy as np
import pytest
import torch

from cycada.errors import CheckpointError
from cycada.models.segmenters import DRNC26, FastSCNN, FCN8s, load_backbone
from cycada.training.core.discriminators import ScoreMapDiscriminator
from cycada.training.segmentation.metrics import (
    ConfusionMatrix,
    segmentation_metrics,
    table_markdown,
)


def test_drn_c_26_matches_the_reference_size_and_stride():
    model = DRNC26(19).eval()
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - 20.62) < 0.05
    x = torch.zeros(1, 3, 64, 96)
    assert model.score_maps(x).shape == (1, 19, 8, 12)  # output stride 8
    assert model(x).shape == (1, 19, 64, 96)


@pytest.mark.parametrize("cls", [FCN8s, FastSCNN])
def test_segmenters_return_full_resolution_scores(cls):
    model = cls(19).eval()
    assert model(torch.zeros(1, 3, 64, 128)).shape == (1, 19, 64, 128)


def test_backbone_weights_load_from_reference_layout(tmp_path):
    reference = DRNC26(1000)
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("seg.")}
    state["fc.weight"] = torch.zeros(1000, 512)  # the ImageNet head is skipped
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "drn.pth")
    model = DRNC26(19)
    loaded = load_backbone(model, tmp_path / "drn.pth")
    assert "layer8.0.conv2.weight" in loaded
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    with pytest.raises(CheckpointError, match="do not exist"):
        load_backbone(model, tmp_path / "missing.pth")


def test_fcn8s_takes_torchvision_vgg16_classifier_as_convolutions(tmp_path):
    model = FCN8s(19)
    fc6 = torch.randn(4096, 512 * 7 * 7)
    torch.save(
        {"features.0.weight": torch.randn(64, 3, 3, 3), "classifier.0.weight": fc6},
        tmp_path / "vgg.pth",
    )
    load_backbone(model, tmp_path / "vgg.pth")
    assert torch.equal(model.fc6.weight.flatten(1), fc6)


def test_score_map_discriminator_is_pixelwise():
    disc = ScoreMapDiscriminator(19)
    assert [m.out_channels for m in disc.modules() if isinstance(m, torch.nn.Conv2d)] == [
        512,
        256,
        2,
    ]
    assert disc(torch.zeros(2, 19, 5, 7)).shape == (2, 2, 5, 7)


def test_metrics_from_one_confusion_matrix():
    confusion = ConfusionMatrix(3)
    labels = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    predictions = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 2]])
    confusion.update(predictions, labels)
    matrix = confusion.numpy()
    assert matrix.sum() == 6  # ignore pixels are not counted
    metrics = segmentation_metrics(matrix, ("a", "b", "c"))
    iou = [1 / 3, 2 / 3, 1 / 2]
    assert metrics["per_class_iou"] == pytest.approx(dict(zip("abc", iou)))
    assert metrics["miou"] == pytest.approx(np.mean(iou))
    assert metrics["pixel_accuracy"] == pytest.approx(4 / 6)
    assert metrics["fwiou"] == pytest.approx(sum(w * i for w, i in zip((2 / 6, 2 / 6, 2 / 6), iou)))
    assert metrics["mean_class_accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    only_two = segmentation_metrics(matrix, ("a", "b", "c"), evaluated=(0, 1))
    assert list(only_two["per_class_iou"]) == ["a", "b"]
    table = table_markdown({"model": metrics})
    assert table.splitlines()[0] == "| Model | a | b | c | mIoU | fwIoU | Pixel acc. |"
    with_gain = table_markdown({"control": metrics, "adapted": metrics}, {"adapted": 0.0123})
    header = "| Model | a | b | c | mIoU | mIoU over the control | fwIoU | Pixel acc. |"
    assert with_gain.splitlines()[0] == header
    assert "| 50.0 |  | 50.0 | 66.7 |" in with_gain.splitlines()[2]  # the control row: blank
    assert "| 50.0 | +1.2 | 50.0 | 66.7 |" in with_gain.splitlines()[3]
