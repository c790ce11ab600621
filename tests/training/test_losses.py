import copy

import torch
import torch.nn.functional as F

from cycada.models.digit_networks import LeNet
from cycada.training.core.image_pool import ImagePool
from cycada.training.core.losses import (
    CycleLoss,
    FeatureGANLoss,
    GANLoss,
    SemanticConsistencyLoss,
    TaskLoss,
    domain_accuracy,
)
from cycada.training.core.losses.feature_gan import SOURCE_DOMAIN, TARGET_DOMAIN


def test_task_loss_ignores_label_255():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 255])
    assert torch.isclose(TaskLoss()(logits, labels), F.cross_entropy(logits[:1], labels[:1]))


def test_gan_losses():
    prediction = torch.tensor([[0.5, 1.5]])
    assert torch.isclose(GANLoss("lsgan")(prediction, True), torch.tensor(0.25))
    assert torch.isclose(GANLoss("lsgan")(prediction, False), torch.tensor((0.25 + 2.25) / 2))
    expected = F.binary_cross_entropy_with_logits(prediction, torch.zeros_like(prediction))
    assert torch.isclose(GANLoss("vanilla")(prediction, False), expected)


def test_cycle_loss_is_mean_l1():
    assert torch.isclose(
        CycleLoss()(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)), torch.tensor(1.0)
    )


def test_semantic_loss_uses_frozen_classifier_and_its_argmax():
    torch.manual_seed(0)
    classifier = LeNet()
    loss_fn = SemanticConsistencyLoss(copy.deepcopy(classifier))
    loss_fn.train()
    assert not loss_fn.classifier.training  # stays frozen in eval mode
    original = torch.randn(4, 1, 28, 28)
    translated = torch.randn(4, 1, 28, 28, requires_grad=True)
    loss = loss_fn(translated, original)
    classifier.eval()
    with torch.no_grad():
        expected = F.cross_entropy(classifier(translated), classifier(original).argmax(1))
    assert torch.isclose(loss, expected, atol=1e-5)
    loss.backward()
    assert translated.grad is not None and translated.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss_fn.classifier.parameters())


def test_feature_gan_loss_and_accuracy():
    outputs = torch.tensor([[0.0, 5.0], [5.0, 0.0]])
    assert FeatureGANLoss()(outputs[:1], SOURCE_DOMAIN) < 0.01
    assert FeatureGANLoss()(outputs[1:], TARGET_DOMAIN) < 0.01
    assert domain_accuracy(outputs[:1], outputs[1:]) == 1.0
    assert domain_accuracy(outputs[1:], outputs[:1]) == 0.0


def test_image_pool_returns_batch_of_same_size_and_remembers():
    pool = ImagePool(4, torch.Generator().manual_seed(0))
    first = pool.query(torch.zeros(4, 1, 2, 2))
    assert first.shape == (4, 1, 2, 2) and len(pool.images) == 4
    mixed = pool.query(torch.ones(8, 1, 2, 2))
    assert mixed.shape == (8, 1, 2, 2)
    assert 0 < mixed.mean() < 1  # some old (zeros) and some new (ones)
    assert ImagePool(0, torch.Generator()).query(torch.ones(2)).sum() == 2
