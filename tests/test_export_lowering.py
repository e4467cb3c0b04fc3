"""Exact lowerings used by the NIR export: polyphase conv, BatchNorm folding, neuron constants."""

from __future__ import annotations

import nir
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from spkdiff.export.lowering import (
    ConvSpec,
    LoweringError,
    conv_spec,
    fold_batchnorm,
    lower_conv,
    space_to_depth,
)
from spkdiff.export.nir_graphs import li_tau, lif_params
from spkdiff.generation import depth_to_space
from spkdiff.host import leaky_sum
from spkdiff.train.snn import LIF


def _run_lowered(spec: ConvSpec, x: torch.Tensor, f_in: int) -> torch.Tensor:
    pc = lower_conv(spec, f_in, tuple(x.shape[-2:]))
    y = depth_to_space(pc.apply(space_to_depth(x, f_in)), pc.f_out)
    return y[..., : pc.out_size[0], : pc.out_size[1]]


@st.composite
def transposed_convs(draw):
    s = draw(st.integers(1, 2))
    d = draw(st.integers(1, 2))
    k = draw(st.integers(1, 5))
    p = draw(st.integers(0, 3))
    op = draw(st.integers(0, max(s, d) - 1))
    f_in = draw(st.sampled_from([1, 2]))
    h, w = draw(st.integers(1, 4)) * f_in, draw(st.integers(1, 4)) * f_in
    cin, cout = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    return s, d, k, p, op, f_in, h, w, cin, cout, seed


@settings(max_examples=80, deadline=None)
@given(transposed_convs())
def test_conv_transpose_polyphase_equals_torch(case):
    """s^2 stride-1 convs on the coarse grid + depth-to-space == F.conv_transpose2d (float64, exact)."""
    s, d, k, p, op, f_in, h, w, cin, cout, seed = case
    out_h = (h - 1) * s - 2 * p + d * (k - 1) + op + 1
    out_w = (w - 1) * s - 2 * p + d * (k - 1) + op + 1
    assume(out_h > 0 and out_w > 0)
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(cin, cout, k, k, generator=g, dtype=torch.float64)
    bias = torch.randn(cout, generator=g, dtype=torch.float64)
    x = torch.randn(2, cin, h, w, generator=g, dtype=torch.float64)
    spec = ConvSpec(weight.numpy(), bias.numpy(), True, (s, s), (p, p), (op, op), (d, d))
    ref = F.conv_transpose2d(x, weight, bias, s, p, op, 1, d)
    got = _run_lowered(spec, x, f_in)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("f_in,stride,k,p,d", [(2, 1, 3, 1, 1), (2, 2, 3, 1, 1), (4, 2, 3, 0, 1), (4, 1, 5, 2, 2),
                                               (2, 1, 1, 0, 1), (4, 4, 2, 1, 1)])
def test_conv_on_phase_layout_equals_torch(f_in, stride, k, p, d):
    """A plain conv reading a phase-layout input (after a lowered transposed conv) is exact too."""
    g = torch.Generator().manual_seed(f_in * 100 + stride * 10 + k)
    weight = torch.randn(3, 2, k, k, generator=g, dtype=torch.float64)
    bias = torch.randn(3, generator=g, dtype=torch.float64)
    x = torch.randn(2, 2, 4 * f_in, 3 * f_in, generator=g, dtype=torch.float64)
    spec = ConvSpec(weight.numpy(), bias.numpy(), False, (stride, stride), (p, p), (0, 0), (d, d))
    torch.testing.assert_close(_run_lowered(spec, x, f_in), F.conv2d(x, weight, bias, stride, p, d), rtol=0,
                               atol=1e-12)


def test_lowering_copies_weights_and_keeps_fan_out():
    """Every coarse weight is one original weight or 0, and each input phase channel fans out to
    k^2 C_out weights, as each fine input pixel does (no extra synaptic operations)."""
    g = torch.Generator().manual_seed(1)
    weight = torch.rand(4, 5, 3, 3, generator=g).numpy() + 0.5  # no zeros
    spec = ConvSpec(weight, np.zeros(5, np.float32), True, (2, 2), (1, 1), (1, 1))
    for f_in in (1, 2):
        pc = lower_conv(spec, f_in, (7 * f_in, 7 * f_in))
        nz = pc.weight[pc.weight != 0]
        assert np.isin(nz, weight).all()
        assert nz.size == f_in**2 * weight.size
        fan_out = (pc.weight != 0).sum(axis=(0, 2, 3))
        assert (fan_out == 9 * 5).all()
        assert pc.exact_grid and pc.f_out == 2 * f_in and pc.out_coarse == (7, 7)


def test_decoder_chain_stays_on_the_coarse_grid():
    """ConvT(s2) -> ConvT(s2) -> ConvT(s1) as in the VQ-SVAE decoder: 7x7 grid, phase factors 2, 4, 4."""
    torch.manual_seed(0)
    layers = [nn.ConvTranspose2d(3, 4, 3, 2, 1, output_padding=1).double(),
              nn.ConvTranspose2d(4, 2, 3, 2, 1, output_padding=1).double(),
              nn.ConvTranspose2d(2, 1, 3, 1, 1).double()]
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    ref, y, f, size = x, x, 1, (7, 7)
    for layer in layers:
        ref = layer(ref)
        spec = conv_spec(layer)
        spec = ConvSpec(layer.weight.detach().numpy(), layer.bias.detach().numpy(), True, spec.stride, spec.padding,
                        spec.output_padding)
        pc = lower_conv(spec, f, size)
        y, f, size = pc.apply(y), pc.f_out, pc.out_size
        assert pc.in_coarse == (7, 7) and pc.out_coarse == (7, 7)
    assert f == 4
    torch.testing.assert_close(depth_to_space(y, f), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("transposed", [False, True])
def test_batchnorm_folding_matches_eval_batchnorm(transposed):
    """conv + BatchNorm2d (eval, running statistics) == folded conv, bias kept, to 1e-6."""
    torch.manual_seed(3)
    conv = (nn.ConvTranspose2d(6, 5, 3, 2, 1, output_padding=1) if transposed else nn.Conv2d(6, 5, 3, 2, 1))
    bn = nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 3)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    bn.eval()
    x = torch.randn(4, 6, 7, 7)
    with torch.no_grad():
        ref = bn(conv(x))
    w, b = fold_batchnorm(conv.weight.detach().numpy(), conv.bias.detach().numpy(), bn, transposed)
    op = F.conv_transpose2d if transposed else F.conv2d
    extra = {"output_padding": 1} if transposed else {}
    got = op(x, torch.from_numpy(w), torch.from_numpy(b), stride=2, padding=1, **extra)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    assert not np.allclose(b, conv.bias.detach().numpy())  # the bias carries the BN shift


def test_unlowerable_layers_name_the_layer():
    with pytest.raises(LoweringError, match="decoder.0.*padding_mode"):
        conv_spec(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), name="decoder.0")
    odd = conv_spec(nn.ConvTranspose2d(2, 2, 3, 2, 1))  # 7 -> 13: not whole 2x2 phase blocks
    assert not lower_conv(odd, 1, (7, 7), "dec").exact_grid
    with pytest.raises(LoweringError, match="dec: stride 2 does not divide"):
        lower_conv(conv_spec(nn.Conv2d(2, 2, 3, 2, 1)), 1 * 3, (9, 9), "dec")
    with pytest.raises(LoweringError, match="grouped"):
        conv_spec(nn.ConvTranspose2d(2, 2, 3, 2, 1, groups=2), name="g")


def test_lif_and_readout_constants():
    """SpikingJelly LIF == NIR LIF(tau=2, r=1, v_leak=v_reset=0); leaky sum 0.8 == NIR LI(tau=r=5)."""
    assert lif_params(LIF(), "x") == {"tau": 2.0, "r": 1.0, "v_leak": 0.0, "v_threshold": 1.0, "v_reset": 0.0}
    with pytest.raises(LoweringError, match="not a LIF"):
        lif_params(nn.ReLU(), "enc.relu")
    tau = li_tau(0.8)
    assert tau == pytest.approx(5.0)
    from spkdiff.simulator import Simulator

    g = nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([3])}),
                            "li": nir.LI(tau=np.full(3, tau), r=np.full(3, tau), v_leak=np.zeros(3)),
                            "output": nir.Output(output_type={"output": np.array([3])})},
                     edges=[("input", "li"), ("li", "output")])
    o = torch.randn(6, 2, 3)
    v = Simulator(g).run(o, count=False).outputs["output"]
    torch.testing.assert_close(v[-1], leaky_sum(o, 0.8), rtol=0, atol=1e-6)
