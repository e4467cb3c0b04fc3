"""spkdiff.neuromorphic.loihi: bit-exact against Lava's fixed_pt models, number formats, quantisation.

The Lava comparison runs every case in ONE isolated child (run_isolated, timeout) and checks u, v and
spikes at every step.  Lava's connections delay by one step: the LIF at step t (0-based) integrates
synapse(spikes[t - 1]) (zero at t = 0).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lava_reference import ConvCase, DenseCase, LifSpec, run_cases

from spkdiff.neuromorphic import loihi as L
from spkdiff.neuromorphic import quantize as Q
from spkdiff.neuromorphic.lava_compat import lava_available
from spkdiff.neuromorphic.lava_runner import run_isolated

T = 20


def _random_lif(rng: np.random.Generator, n_bias: int | tuple, vth_hi: int = 3000) -> LifSpec:
    return LifSpec(du=int(rng.choice([0, 4095, rng.integers(0, 4096)])), dv=int(rng.choice([0, rng.integers(0, 4096)])),
                   vth=int(rng.integers(0, vth_hi)), bias_mant=rng.integers(-4096, 4096, n_bias),
                   bias_exp=rng.integers(0, 8, n_bias))


def _dense_cases(rng: np.random.Generator) -> list[DenseCase]:
    cases = []
    for i in range(8):
        n_in, n_out = int(rng.integers(3, 16)), int(rng.integers(2, 8))
        mode = [None, 1, 2, 3][i % 4]
        w = rng.integers(-300, 300, (n_out, n_in))  # beyond 8 bits: Lava clips
        w = np.abs(w) if mode == 2 else -np.abs(w) if mode == 3 else w
        cases.append(DenseCase(spikes=(rng.random((n_in, T)) < 0.5).astype(np.int32), weights=w,
                               lif=_random_lif(rng, n_out), weight_exp=int(rng.integers(-3, 5)),
                               num_weight_bits=int(rng.integers(4, 9)), sign_mode=mode))
    # overflow case: u wraps (255 * 8 << 7 << 6 > 2**23), v saturates both ways, read-out threshold never fires
    w = np.zeros((3, 8), dtype=np.int64)
    w[0] = 255
    cases.append(DenseCase(spikes=np.ones((8, T), np.int32), weights=w, weight_exp=7,
                           lif=LifSpec(du=4095, dv=0, vth=L.READOUT_VTH, bias_mant=np.array([0, 4095, -4096]),
                                       bias_exp=np.array([0, 7, 7]))))
    return cases


def _conv_cases(rng: np.random.Generator) -> list[ConvCase]:
    cases = []
    geoms = [  # (c_in, c_out, groups, k, stride, padding, dilation) in Lava (x, y) order
        (2, 4, 2, 3, (1, 1), (1, 1), (1, 1)),
        (3, 2, 1, 2, (2, 1), (0, 1), (1, 1)),
        (1, 3, 1, 3, (1, 2), (2, 0), (2, 1)),
    ]
    for c_in, c_out, g, k, st, pd, dl in geoms:
        wt = rng.integers(-200, 200, (c_out, c_in // g, k, k))
        spikes = (rng.random((6, 5, c_in, T)) < 0.5).astype(np.int32)
        cases.append(ConvCase(spikes=spikes, weight=L.lava_conv_weight(wt),
                              lif=_random_lif(rng, c_out, vth_hi=300), stride=st, padding=pd, dilation=dl, groups=g,
                              extra={"torch_weight": wt}))
    wt = np.full((2, 2, 3, 3), 1 << 20)  # 24-bit wrap of the conv accumulator (Lava does not clip conv weights)
    wt[1] = -(1 << 19)
    cases.append(ConvCase(spikes=np.ones((4, 4, 2, T), np.int32), weight=L.lava_conv_weight(wt),
                          lif=LifSpec(du=100, dv=1000, vth=L.READOUT_VTH), extra={"torch_weight": wt}))
    return cases


def _quantized_cases(rng: np.random.Generator) -> list[DenseCase | ConvCase]:
    """Layers from Q.quantize_layer, as the Lava target would build them."""
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    w, b = torch.randn(5, 12, generator=gen) * 0.3, torch.randn(5, generator=gen) * 0.2
    q = Q.quantize_layer(w, b)
    dense = DenseCase(spikes=(rng.random((12, T)) < 0.5).astype(np.int32), weights=q.weight_int,
                      weight_exp=q.weight_exp, sign_mode=int(q.sign_mode),
                      lif=LifSpec(q.du, q.dv, q.vth, q.bias_mant, q.bias_exp))
    dense.extra = {"q": q}  # type: ignore[attr-defined]
    wc, bc = torch.randn(3, 2, 3, 3, generator=gen) * 0.4, torch.randn(3, generator=gen) * 0.1
    qc = Q.quantize_layer(wc, bc, padding=1)
    conv = ConvCase(spikes=(rng.random((5, 5, 2, T)) < 0.5).astype(np.int32),
                    weight=qc.lava_weights(),  # Lava Conv ignores weight_exp: folded into the kernel
                    lif=LifSpec(qc.du, qc.dv, qc.vth, qc.bias_mant, qc.bias_exp), padding=(1, 1), extra={"q": qc})
    return [dense, conv]


def _replay(case: DenseCase | ConvCase) -> dict[str, np.ndarray]:
    """Our functions on the Lava graph, with Lava's one-step connection delay, in Lava's output layout."""
    q = getattr(case, "extra", {}).get("q")
    if isinstance(case, DenseCase):
        spikes = torch.as_tensor(case.spikes.T)  # (T, n_in)
        if q is not None:
            def syn(s):
                return q.synapse(s)
            p = q.lif_params()
        else:
            w = L.lava_dense_weights(case.weights, case.sign_mode, case.num_weight_bits)

            def syn(s):
                return L.dense_fixed(s, w, case.weight_exp)
            p = L.LifParams(case.lif.du, case.lif.dv, case.lif.vth, torch.as_tensor(case.lif.bias_mant),
                            torch.as_tensor(case.lif.bias_exp))

        def to_lava(x):
            return x[0].numpy()
    else:
        spikes = torch.as_tensor(case.spikes).permute(3, 2, 1, 0)  # (T, C, H, W)
        if q is not None:
            def syn(s):
                return q.synapse(s)
            p = q.lif_params()
        else:
            wt = torch.as_tensor(case.extra["torch_weight"])

            def syn(s):
                return L.conv_fixed(s, wt, 0, case.stride[::-1], case.padding[::-1], case.dilation[::-1],
                                    case.groups)
            bias = lambda x: torch.as_tensor(x).view(-1, 1, 1) if np.ndim(x) else int(x)  # noqa: E731
            p = L.LifParams(case.lif.du, case.lif.dv, case.lif.vth, bias(case.lif.bias_mant), bias(case.lif.bias_exp))

        def to_lava(x):
            return x[0].permute(2, 1, 0).numpy()
    out: dict[str, list] = {"u": [], "v": [], "s": [], "wraps": [], "sats": []}
    zero = torch.zeros_like(syn(spikes[:1]))
    u = v = zero
    for t in range(spikes.shape[0]):
        a = syn(spikes[t - 1:t]) if t else zero
        step = L.lif_step_fixed(a, u, v, p)
        u, v = step.u, step.v
        for key, val in (("u", step.u), ("v", step.v), ("s", step.s.long())):
            out[key].append(to_lava(val))
        out["wraps"].append(int(step.u_wrapped.sum()))
        out["sats"].append(int(step.v_saturated.sum()))
    return {k: np.array(val) for k, val in out.items()}


@pytest.fixture(scope="module")
def lava_results():
    if not lava_available():
        pytest.skip("lava-nc not installed")
    rng = np.random.default_rng(20240601)
    cases = _dense_cases(rng) + _conv_cases(rng) + _quantized_cases(rng)
    return cases, run_isolated(run_cases, cases, timeout=300)  # ~5 s on an idle machine


@pytest.mark.lava
def test_bit_exact_against_lava_fixed_pt(lava_results):
    cases, results = lava_results
    totals = {"spikes": 0, "wraps": 0, "sats": 0}
    for i, (case, ref) in enumerate(zip(cases, results, strict=True)):
        mine = _replay(case)
        for key in ("u", "v", "s"):
            assert mine[key].shape == ref[key].shape, (i, key)
            bad = np.argwhere(mine[key] != ref[key])
            assert bad.size == 0, f"case {i} ({type(case).__name__}) {key} differs first at step {bad[0][0]}"
        totals["spikes"] += int(ref["s"].sum())
        totals["wraps"] += int(mine["wraps"].sum())
        totals["sats"] += int(mine["sats"].sum())
    # the comparison exercised spiking, 24-bit u wrap-around and v saturation
    assert totals["spikes"] > 100 and totals["wraps"] > 0 and totals["sats"] > 0, totals
    # read-out threshold: saturated voltages never spike
    overflow = results[len(_dense_cases(np.random.default_rng(0))) - 1]
    assert overflow["s"].sum() == 0 and overflow["v"].max() == L.V_LIMIT and overflow["v"].min() == -L.V_LIMIT


# ------------------------------------------------------------------------------------ formats, in-process


def test_dense_weight_format_matches_lava_weightutils():
    pytest.importorskip("lava")
    from lava.utils.weightutils import SignMode, clip_weights, truncate_weights

    rng = np.random.default_rng(1)
    for mode in (SignMode.MIXED, SignMode.EXCITATORY, SignMode.INHIBITORY):
        for bits in range(1, 9):
            w = rng.integers(-400, 400, (6, 9))
            ref = truncate_weights(clip_weights(w, mode, num_bits=8), mode, bits)
            np.testing.assert_array_equal(L.lava_dense_weights(w, mode, bits).numpy(), ref)
    assert int(L.determine_sign_mode(np.array([0, 3]))) == SignMode.EXCITATORY.value
    assert int(L.determine_sign_mode(np.array([0, -3]))) == SignMode.INHIBITORY.value


def test_conv_layout_matches_lava_conv_utils():
    pytest.importorskip("lava")
    from lava.proc.conv import utils

    rng = np.random.default_rng(2)
    wt = rng.integers(-100, 100, (4, 1, 3, 2))  # torch (out, in/g, kH, kW), groups=2
    x = (rng.random((2, 7, 6)) < 0.5).astype(np.int64)  # torch (C, H, W)
    ref = utils.conv(x.transpose(2, 1, 0), L.lava_conv_weight(wt).astype(np.int32), (2, 3), (1, 2), (1, 0), (2, 1), 2)
    mine = L.conv_fixed(torch.as_tensor(x)[None], torch.as_tensor(wt), stride=(2, 1), padding=(0, 1),
                        dilation=(1, 2), groups=2)
    np.testing.assert_array_equal(mine[0].permute(2, 1, 0).numpy(), ref)
    np.testing.assert_array_equal(L.torch_conv_weight(L.lava_conv_weight(wt)), wt)


def test_synapses_batched_exact_and_wrapping():
    rng = np.random.default_rng(3)
    w = torch.as_tensor(rng.integers(-256, 255, (7, 40)))
    s = torch.as_tensor(rng.random((5, 3, 40)) < 0.5)
    a = L.dense_fixed(s, w, weight_exp=-2)
    assert a.shape == (5, 3, 7) and a.dtype == torch.int64
    ref = torch.floor((s.double() @ w.double().T) / 4).long()  # >> 2 is floor division
    assert torch.equal(a, ref)
    for i in range(5):
        assert torch.equal(L.dense_fixed(s[i], w, -2), a[i])
    graded = torch.as_tensor(rng.integers(-3, 4, (2, 40)))
    assert torch.equal(L.dense_fixed(graded, w, 1, graded=True), (graded @ w.T) << 1)
    big = torch.full((1, 4), 1 << 30)
    assert int(L.dense_fixed(torch.ones(1, 4), big, 0)[0, 0]) == 0  # 2**32 wraps to 0 in the int32 channel
    wc = torch.as_tensor(rng.integers(-128, 128, (3, 2, 3, 3)))
    sc = torch.as_tensor(rng.random((4, 2, 6, 6)) < 0.5)
    ref = F.conv2d(sc.double(), wc.double(), padding=1).long()
    assert torch.equal(L.conv_fixed(sc, wc, padding=1), ref)
    assert torch.equal(L.conv_fixed(sc, wc << 20, padding=1), L.wrap24(ref << 20))


def test_lif_step_by_hand():
    p = L.LifParams(du=2047, dv=2048, vth=2, bias_mant=3, bias_exp=1)  # u, v halve; bias 6; threshold 128
    step = L.lif_step_fixed(torch.tensor([1, 0, 0]), torch.tensor([5, -5, 0]), torch.tensor([-3, 7, 300]), p)
    # u: trunc(5 / 2) + (1 << 6) = 66, trunc(-5 / 2) = -2 (towards zero, not floor)
    assert step.u.tolist() == [66, -2, 0]
    # v: trunc(-3 / 2) + 66 + 6 = 71, trunc(7 / 2) - 2 + 6 = 7, 150 + 0 + 6 = 156 > 128 -> spike, reset
    assert step.v.tolist() == [71, 7, 0]
    assert step.s.tolist() == [False, False, True]


def test_lif_step_reset_threshold_and_no_memory():
    p = L.LifParams(du=4095, dv=0, vth=1)
    u, v = torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)
    step = L.lif_step_fixed(torch.tensor([1, 1]), u + 999, v + torch.tensor([0, 1]), p)
    assert step.u.tolist() == [64, 64]  # du = 4095: u = a << 6, previous u forgotten
    assert step.s.tolist() == [False, True]  # 64 > 64 is false, 65 > 64 spikes
    assert step.v.tolist() == [64, 0]  # hard reset to 0


def test_readout_threshold_never_fires_and_params_validated():
    p = L.LifParams(du=4095, dv=0, vth=L.READOUT_VTH, bias_mant=4095, bias_exp=7)
    u = v = torch.zeros(3, dtype=torch.long)
    for _ in range(40):
        u, v, s, _, sat = L.lif_step_fixed(torch.full((3,), 1000), u, v, p)
        assert not s.any()
    assert v.tolist() == [L.V_LIMIT] * 3 and sat.all()
    for bad in ({"du": 0.5}, {"dv": 4096}, {"vth": -1}, {"bias_mant": 5000}, {"bias_exp": 9}, {"du": True}):
        with pytest.raises(L.QuantizationRangeError):
            L.LifParams(**bad)


# ------------------------------------------------------------------------------------ quantisation


def test_quantize_dense_tau2_close_to_float():
    gen = torch.Generator().manual_seed(0)
    w, b = torch.randn(32, 100, generator=gen) * 0.2, torch.randn(32, generator=gen) * 0.1
    q = Q.quantize_layer(w, b, tau=2.0)
    assert q.dv == 2048 and q.du == L.DU_MAX and q.sign_mode == L.SignMode.MIXED
    assert q.weight_mant.min() >= -128 and q.weight_mant.max() <= 127
    assert q.report["mantissa_use"] > 0.95 and q.report["weight_rel_rms_error"] < 0.01
    wq, bq = q.dequantized()
    assert np.abs(wq - w.numpy()).max() <= q.report["weight_max_abs_error"] + 1e-12
    np.testing.assert_allclose(wq, w.numpy(), atol=float(w.abs().max()) / 100)
    np.testing.assert_allclose(bq, b.numpy(), atol=1e-3)
    assert torch.equal(L.lava_dense_weights(q.weight_int, q.sign_mode), torch.as_tensor(q.weight_int))
    spikes = (torch.rand(24, 16, 100, generator=gen) < 0.3).float()
    ev = Q.evaluate_layer(q, w, b, spikes, strict=True)
    assert ev.spike_agreement > 0.98 and ev.v_rmse < 0.1 and ev.u_wraps == 0
    assert ev.float_rate > 0.02 and abs(ev.fixed_rate - ev.float_rate) < 0.01


def test_quantize_conv_and_readouts():
    gen = torch.Generator().manual_seed(1)
    w, b = torch.randn(8, 4, 3, 3, generator=gen) * 0.3, torch.randn(8, generator=gen) * 0.1
    spikes = (torch.rand(16, 2, 4, 8, 8, generator=gen) < 0.3).float()
    q = Q.quantize_layer(w, b, stride=1, padding=1)
    assert q.kind == "conv" and q.lif_params().bias_mant.shape == (8, 1, 1)
    ev = Q.evaluate_layer(q, w, b, spikes, strict=True)
    assert ev.spike_agreement > 0.98 and ev.float_rate > 0.02
    ro = Q.quantize_layer(w, b, padding=1, spiking=False, headroom=20.0)
    assert ro.vth == L.READOUT_VTH and not ro.spiking
    ev = Q.evaluate_layer(ro, w, b, spikes, strict=True)
    assert ev.fixed_rate == 0 and ev.v_rmse < 0.01
    integ = Q.quantize_layer(w[:, :, 0, 0].reshape(8, 4), None, tau=None, spiking=False, num_steps=16)
    assert integ.dv == 0 and integ.tau_in == 1.0
    ev = Q.evaluate_layer(integ, w[:, :, 0, 0].reshape(8, 4), None, spikes[:, :, :, 0, 0], tau=None, strict=True)
    assert ev.v_rmse < 0.01


def test_quantize_range_errors_are_explicit():
    w = torch.randn(4, 10)
    with pytest.raises(L.QuantizationRangeError):
        Q.quantize_layer(w * float("nan"))
    with pytest.raises(L.QuantizationRangeError):
        Q.quantize_layer(w * 1e9)  # beyond 8-bit mantissa << 7
    with pytest.raises(L.QuantizationRangeError):
        Q.quantize_layer(w, headroom=1e6)  # state range needed beyond 24 bits
    with pytest.raises(L.QuantizationRangeError):
        Q.quantize_layer(torch.randn(3, 3, 3))
    # too little headroom for the actual input: the overflow is counted and strict mode raises
    q = Q.quantize_layer(torch.ones(4, 64), headroom=1.0)
    spikes = torch.ones(3, 1, 64)
    ev = Q.evaluate_layer(q, torch.ones(4, 64), None, spikes)
    assert ev.u_wraps > 0
    with pytest.raises(L.QuantizationRangeError, match="wrap"):
        Q.evaluate_layer(q, torch.ones(4, 64), None, spikes, strict=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(4)
    w = torch.as_tensor(rng.integers(-256, 255, (7, 40)))
    s = torch.as_tensor(rng.random((5, 40)) < 0.5)
    assert torch.equal(L.dense_fixed(s.cuda(), w.cuda(), 2).cpu(), L.dense_fixed(s, w, 2))
    wc = torch.as_tensor(rng.integers(-256, 255, (3, 2, 3, 3)))
    sc = torch.as_tensor(rng.random((2, 2, 6, 6)) < 0.5)
    assert torch.equal(L.conv_fixed(sc.cuda(), wc.cuda(), 1, padding=1).cpu(), L.conv_fixed(sc, wc, 1, padding=1))
    p = L.LifParams(du=100, dv=300, vth=5, bias_mant=torch.arange(7) - 3, bias_exp=2)
    a = L.dense_fixed(s, w, 2)
    u = v = torch.zeros_like(a)
    gpu = L.lif_step_fixed(a.cuda(), u.cuda(), v.cuda(), p)
    cpu = L.lif_step_fixed(a, u, v, p)
    for x, y in zip(gpu, cpu, strict=True):
        assert torch.equal(x.cpu(), y)
