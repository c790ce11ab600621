import pytest
import torch

from cycada.models.digit_networks import DTN, LeNet
from cycada.models.generators import ResnetGenerator, build_generator
from cycada.models.transforms import fit_images, to_uint8, to_unit_range
from cycada.training.core.discriminators import (
    DigitImageDiscriminator,
    FeatureDiscriminator,
    PatchDiscriminator,
)


def test_lenet_shapes_and_input_fitting():
    net = LeNet().eval()
    features, logits = net.forward_with_features(torch.zeros(2, 1, 28, 28))
    assert features.shape == (2, 500) and logits.shape == (2, 10)
    assert net(torch.zeros(3, 1, 16, 16)).shape == (3, 10)  # USPS resized inside
    assert net(torch.zeros(3, 3, 32, 32)).shape == (3, 10)  # RGB converted inside


def test_dtn_shapes():
    net = DTN().eval()
    features, logits = net.forward_with_features(torch.zeros(2, 3, 32, 32))
    assert features.shape == (2, 512) and logits.shape == (2, 10)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name", ["digit", "resnet6", "resnet9"])
def test_generators_keep_shape_and_range(name):
    generator = build_generator(name, 3, 3, base=8)
    out = generator(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3, 32, 32)
    assert out.abs().max() <= 1.0


def test_resnet9_is_cyclegan_sized():
    params = sum(p.numel() for p in ResnetGenerator(3, 3, n_blocks=9).parameters())
    assert 11.3e6 < params < 11.5e6  # CycleGAN's ResNet-9 generator has 11.378M


def test_image_discriminators_give_one_value_per_patch():
    assert DigitImageDiscriminator(1)(torch.zeros(2, 1, 32, 32)).shape == (2, 1, 8, 8)
    disc = DigitImageDiscriminator(1)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in disc.modules()) == 6
    assert PatchDiscriminator(3)(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)


def test_feature_discriminator_is_three_fc_layers():
    disc = FeatureDiscriminator(10)
    assert sum(isinstance(m, torch.nn.Linear) for m in disc.modules()) == 3
    assert disc(torch.zeros(4, 10)).shape == (4, 2)


def test_preprocessing_round_trip_and_fitting():
    images = torch.randint(0, 256, (2, 16, 16, 1), dtype=torch.uint8).numpy()
    x = to_unit_range(images)
    assert x.shape == (2, 1, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert (to_uint8(x) == images).all()
    assert fit_images(x, 1, 16) is x  # nothing to do: untouched
    assert fit_images(x, 3, 28).shape == (2, 3, 28, 28)
