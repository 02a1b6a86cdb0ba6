"""Tests of the cost calibration and pixel dropout (detectron2_cops.layers.calibration)."""
from __future__ import annotations

import pytest
import torch

from detectron2_cops.layers import CostCalibration, EdgeDropout, PixelDropout


def _inputs(B=2, K=5, H=6, W=7, shapes=((2, 6, 7), (2, 3, 4)), seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    sem = torch.randn((B, K, H, W), generator=g, dtype=dtype)
    cut = [torch.randn((B,) + s, generator=g, dtype=dtype) for s in shapes]
    return sem, cut


def test_calibration_initial_values_and_formula():
    calib = CostCalibration(2)
    assert calib.semantic_weight.item() == 1.0 and calib.semantic_bias.item() == 0.0
    assert calib.edge_weight.tolist() == [1.0, 1.0] and calib.edge_bias.tolist() == [0.0, 0.0]
    sem, cut = _inputs()
    c_V, c_E = calib(sem, cut)
    torch.testing.assert_close(c_V, -sem)
    for e, c in zip(c_E, cut):
        torch.testing.assert_close(e, -c)

    with torch.no_grad():
        calib.semantic_weight.fill_(2.5)
        calib.semantic_bias.fill_(-0.5)
        calib.edge_weight.copy_(torch.tensor([3.0, -2.0]))  # negative scale: |a_d| is used
        calib.edge_bias.copy_(torch.tensor([0.25, 1.5]))
    c_V, c_E = calib(sem, cut)
    torch.testing.assert_close(c_V, -(2.5 * sem - 0.5))
    torch.testing.assert_close(c_E[0], -(3.0 * cut[0] + 0.25))
    torch.testing.assert_close(c_E[1], -(2.0 * cut[1] + 1.5))
    # A larger cut logit always means a lower (more cut-favouring) edge cost.
    more_cut = calib(sem, [cut[0], cut[1] + 1.0])[1][1]
    assert (more_cut < c_E[1]).all()


def test_calibration_gradients_and_abs_sign():
    sem, cut = _inputs(seed=1)
    sem.requires_grad_()
    calib = CostCalibration(2)
    with torch.no_grad():
        calib.edge_weight.copy_(torch.tensor([0.5, -0.5]))
    c_V, c_E = calib(sem, cut)
    (c_V.sum() + c_E[0].sum() + c_E[1].sum()).backward()
    torch.testing.assert_close(calib.semantic_weight.grad, -sem.detach().sum())
    torch.testing.assert_close(calib.semantic_bias.grad, torch.tensor(-float(sem.numel())))
    # d/da_d of -(|a_d| c + b_d) = -sign(a_d) sum(c)
    torch.testing.assert_close(calib.edge_weight.grad, torch.stack([-cut[0].sum(), cut[1].sum()]))
    torch.testing.assert_close(calib.edge_bias.grad, -torch.tensor([float(cut[0].numel()), float(cut[1].numel())]))
    torch.testing.assert_close(sem.grad, -torch.ones_like(sem))


def test_calibration_keeps_dtype_and_allows_no_edges():
    sem, _ = _inputs(dtype=torch.float64)
    c_V, c_E = CostCalibration(0)(sem, [])
    assert c_V.dtype == torch.float64 and c_E == []


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda sem, cut: (sem[0], cut), r"semantic_logits must be a floating point torch.Tensor \[B, K, H, W\], got .* \[5, 6, 7\]"),
        (lambda sem, cut: (sem.long(), cut), "semantic_logits must be a floating point torch.Tensor .* got torch.int64"),
        (lambda sem, cut: (sem, cut[:1]), r"cut_logits must be a list of 2 tensors \[B, 2, H_d, W_d\], one per edge distance, got 1 entries"),
        (lambda sem, cut: (sem, cut[0]), "cut_logits must be a list of 2 tensors .* got Tensor"),
        (lambda sem, cut: (sem, [cut[0][:1], cut[1]]), r"cut_logits\[0\] must have shape \[B, 2, H_d, W_d\] with B = 2, got \[1, 2, 6, 7\]"),
        (lambda sem, cut: (sem, [cut[0], cut[1][:, :1]]), r"cut_logits\[1\] must have shape \[B, 2, H_d, W_d\] with B = 2, got \[2, 1, 3, 4\]"),
        (lambda sem, cut: (sem, [cut[0], cut[1].int()]), r"cut_logits\[1\] must be a floating point torch.Tensor"),
    ],
)
def test_calibration_bad_input_raises_value_error(make, match):
    sem, cut = _inputs()
    with pytest.raises(ValueError, match=match):
        CostCalibration(2)(*make(sem, cut))


@pytest.mark.parametrize("bad", [-1, 1.5, "2", None])
def test_calibration_bad_constructor(bad):
    with pytest.raises(ValueError, match="num_edge_distances"):
        CostCalibration(bad)


def test_pixel_dropout_drops_whole_pixels_at_rate_p_without_rescaling():
    p = 0.3
    x = torch.rand((4, 7, 64, 64), generator=torch.Generator().manual_seed(0)) + 0.5  # no zeros
    drop = PixelDropout(p, generator=torch.Generator().manual_seed(1)).train()
    y = drop(x)
    zero = y == 0
    # Whole pixels: all K channels are dropped together, and kept pixels are unchanged.
    assert torch.equal(zero.all(1), zero.any(1))
    kept = ~zero.any(1, keepdim=True).expand_as(x)
    assert torch.equal(y[kept], x[kept])
    rate = zero.any(1).float().mean().item()
    n = 4 * 64 * 64
    assert abs(rate - p) < 4 * (p * (1 - p) / n) ** 0.5, rate
    # Different images / pixels get different masks.
    assert not torch.equal(zero[0, 0], zero[1, 0])


def test_pixel_dropout_eval_identity_and_seeding():
    x = torch.randn(2, 3, 8, 9)
    drop = PixelDropout(0.5)
    drop.eval()
    assert drop(x) is x
    drop.train()
    a = drop(x, generator=torch.Generator().manual_seed(5))
    b = drop(x, generator=torch.Generator().manual_seed(5))
    c = drop(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(PixelDropout(0.0).train()(x), x)
    assert torch.count_nonzero(PixelDropout(1.0).train()(x)) == 0
    # Gradient passes through kept pixels only.
    xr = x.clone().requires_grad_()
    y = drop(xr, generator=torch.Generator().manual_seed(5))
    y.sum().backward()
    torch.testing.assert_close(xr.grad, (a != 0).to(x.dtype))


@pytest.mark.parametrize("p", [-0.1, 1.1, float("nan"), "0.5", True])
def test_pixel_dropout_bad_p(p):
    with pytest.raises(ValueError, match="p must"):
        PixelDropout(p)


def test_pixel_dropout_bad_input():
    with pytest.raises(ValueError, match=r"x must be a floating point torch.Tensor \[B, K, H, W\], got torch.float32 \[3, 4, 5\]"):
        PixelDropout(0.5).train()(torch.zeros(3, 4, 5))
    with pytest.raises(ValueError, match="generator"):
        PixelDropout(0.5, generator=1)


def test_edge_dropout_drops_single_edges_at_rate_p_without_rescaling():
    """The authors' nn.Dropout(p)(c_E) * (1 - p): zero with probability p, kept entries unchanged."""
    maps = [torch.randn(2, 2, 40, 50) + 3.0, torch.randn(2, 2, 20, 25) + 3.0]
    drop = EdgeDropout(0.1, generator=torch.Generator().manual_seed(0))
    drop.train()
    out = drop(maps)
    assert len(out) == 2
    zero = torch.cat([(o == 0).flatten() for o in out]).float()
    assert abs(zero.mean().item() - 0.1) < 0.02
    for o, m in zip(out, maps):
        kept = o != 0
        assert torch.equal(o[kept], m[kept])  # no 1 / (1 - p) rescaling
        # not whole pixels: the two channels of one position are dropped independently
    both = ((out[0][:, 0] == 0) & (out[0][:, 1] == 0)).float().mean().item()
    assert both < 0.03
    # gradients flow through the kept entries only
    leaf = maps[0].clone().requires_grad_(True)
    y = EdgeDropout(0.5, generator=torch.Generator().manual_seed(1))([leaf])[0]
    y.sum().backward()
    assert torch.equal(leaf.grad, (y != 0).float())
    drop.eval()
    assert all(o is m for o, m in zip(drop(maps), maps))


def test_edge_dropout_bad_arguments():
    for p in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="p must"):
            EdgeDropout(p)
    with pytest.raises(ValueError, match="edge_costs must be a list of tensors .* got Tensor"):
        EdgeDropout(0.1)(torch.zeros(1, 2, 3, 3))
    with pytest.raises(ValueError, match=r"edge_costs\[0\] must be a floating point torch.Tensor \[B, 2, H_d, W_d\], got"):
        EdgeDropout(0.1)([torch.zeros(2, 3, 3)])
