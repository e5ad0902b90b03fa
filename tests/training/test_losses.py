import math

import pytest
import torch

from training.losses import attribute_direction_loss, clip_loss, combined_loss, pair_difference, pc_clip_loss


def test_pc_clip_loss_hand_computed_case():
    # Two pairs in 2-d: d0 = n([1, -1]), d1 = n([-1, 1]); the texts are the axes, so every
    # matching logit is s = scale/sqrt(2) and every other one is -s. Each of the four
    # cross-entropies is then log(1 + exp(-2s)).
    a = torch.tensor([[1.0, 0.0], [0.0, 3.0]])   # unnormalised on purpose
    b = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    texts = torch.tensor([[5.0, 0.0], [0.0, 0.5]])
    for scale in (1.0, 3.0):
        s = scale / math.sqrt(2)
        expected = math.log(1 + math.exp(-2 * s))
        assert pc_clip_loss(texts, a, b, scale).item() == pytest.approx(expected, rel=1e-5)
    # swapping the images of every pair makes each text point away from its difference
    assert pc_clip_loss(texts, b, a, 1.0).item() == pytest.approx(math.log(1 + math.exp(math.sqrt(2))), rel=1e-5)


def test_pair_difference_and_clip_loss():
    d = pair_difference(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    torch.testing.assert_close(d, torch.tensor([[1.0, -1.0]]) / math.sqrt(2))
    # clip loss: 3 orthogonal pairs, scale 2 -> CE = log(1 + 2 exp(-2)) in both directions
    eye = torch.eye(3)
    assert clip_loss(eye * 4, eye, 2.0).item() == pytest.approx(math.log(1 + 2 * math.exp(-2)), rel=1e-5)
    # a learned scale gets a gradient
    scale = torch.tensor(2.0, requires_grad=True)
    clip_loss(eye, eye, scale).backward()
    assert scale.grad is not None and scale.grad.item() < 0


def test_combined_loss():
    pc, cl = torch.tensor(1.0), torch.tensor(3.0)
    assert combined_loss(pc, cl, 0.5).item() == pytest.approx(2.5)
    assert combined_loss(None, cl, 0.5).item() == pytest.approx(3.0)
    assert combined_loss(pc, None, 0.5).item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        combined_loss(None, None, 1.0)


def test_attribute_direction_loss_is_one_minus_cosine():
    d = torch.eye(3)
    assert attribute_direction_loss(d * 7, d).item() == pytest.approx(0.0, abs=1e-6)  # scale of f(T) does not matter
    assert attribute_direction_loss(-d, d).item() == pytest.approx(2.0)
    assert attribute_direction_loss(d.roll(1, dims=0), d).item() == pytest.approx(1.0)
