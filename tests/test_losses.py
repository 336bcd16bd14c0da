"""Each loss against an independent float64 re-derivation written from methods.md §2."""
import math

import numpy as np
import pytest
import torch

from sortkd import apply_variant, sort_logits
from sortkd.losses import (METHODS, GlobalTemperature, compute_loss, cosine_lambda, dkd_loss,
                           gradient_reversal, kd_loss, resolve_hparams, standardize)


# ---- float64 references, one sample at a time, in plain numpy -------------------------

def np_softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def np_kl(p, q):
    return float(sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q)))


def ref_kd(s, t, T):
    return T * T * np.mean([np_kl(np_softmax(t[i] / T), np_softmax(s[i] / T)) for i in range(len(s))])


def ref_dkd(s, t, y, alpha, beta, T):
    tckd, nckd = [], []
    for i in range(len(s)):
        ps, pt = np_softmax(s[i] / T), np_softmax(t[i] / T)
        bs = [ps[y[i]], 1 - ps[y[i]]]
        bt = [pt[y[i]], 1 - pt[y[i]]]
        tckd.append(np_kl(bt, bs))
        keep = [c for c in range(len(s[i])) if c != y[i]]
        # Masking by -1000 after /T is, to float64 precision, dropping the class.
        qs, qt = np_softmax(s[i][keep] / T), np_softmax(t[i][keep] / T)
        nckd.append(np_kl(qt, qs))
    return alpha * T * T * np.mean(tckd) + beta * T * T * np.mean(nckd)


def ref_standardize(v):
    out = []
    for row in v:
        m = sum(row) / len(row)
        sd = math.sqrt(sum((x - m) ** 2 for x in row) / (len(row) - 1))
        out.append([(x - m) / (1e-7 + sd) for x in row])
    return np.array(out)


def ref_ce(s, y):
    return float(np.mean([-math.log(np_softmax(s[i])[y[i]]) for i in range(len(s))]))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(8, 10, generator=g, dtype=torch.float64) * 3
    t = torch.randn(8, 10, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 10, (8,), generator=g)
    return s, t, y


@pytest.mark.parametrize("sorted_teacher", [False, True])
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_matches_reference(batch, T, sorted_teacher):
    s, t, y = batch
    if sorted_teacher:
        t = sort_logits(t, y)
    got = kd_loss(s, t, T).item()
    assert got == pytest.approx(ref_kd(s.numpy(), t.numpy(), T), rel=1e-10)


@pytest.mark.parametrize("sorted_teacher", [False, True])
def test_dkd_matches_reference(batch, sorted_teacher):
    s, t, y = batch
    if sorted_teacher:
        t = sort_logits(t, y)
    got = dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=4.0).item()
    expected = ref_dkd(s.numpy(), t.numpy(), y.numpy(), 1.0, 8.0, 4.0)
    assert got == pytest.approx(expected, rel=1e-9)


def test_standardize_matches_reference(batch):
    s, _, _ = batch
    np.testing.assert_allclose(standardize(s).numpy(), ref_standardize(s.numpy()), rtol=1e-12)


@pytest.mark.parametrize("sorted_teacher", [False, True])
def test_lskd_entry_matches_reference(batch, sorted_teacher):
    s, t, y = batch
    variant = "sort" if sorted_teacher else "base"
    out = compute_loss("lskd", s, t, y, epoch=1, hparams=resolve_hparams("lskd"), variant=variant)
    t_used = sort_logits(t, y) if sorted_teacher else t
    expected_kd = 9.0 * ref_kd(ref_standardize(s.numpy()), ref_standardize(t_used.numpy()), 2.0)
    assert out.terms["kd"].item() == pytest.approx(expected_kd, rel=1e-9)
    assert out.terms["ce"].item() == pytest.approx(0.1 * ref_ce(s.numpy(), y.numpy()), rel=1e-10)


def test_sort_before_or_after_standardization_gives_same_loss(batch):
    s, t, y = batch
    a = kd_loss(standardize(s), standardize(sort_logits(t, y)), 2.0)
    b = kd_loss(standardize(s), sort_logits(standardize(t), y), 2.0)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


def test_kd_entry_weights_and_variant(batch):
    s, t, y = batch
    for variant in ("base", "sort", "swap"):
        out = compute_loss("kd", s, t, y, epoch=1, hparams=resolve_hparams("kd"), variant=variant)
        t_used = apply_variant(t, y, variant).numpy()
        assert out.terms["kd"].item() == pytest.approx(0.9 * ref_kd(s.numpy(), t_used, 4.0), rel=1e-10)
        assert out.total.item() == pytest.approx(out.terms["ce"].item() + out.terms["kd"].item())


def test_dkd_entry_warmup(batch):
    s, t, y = batch
    full = dkd_loss(s, t, y, 1.0, 8.0, 4.0).item()
    for epoch, factor in ((1, 1 / 20), (10, 0.5), (20, 1.0), (200, 1.0)):
        out = compute_loss("dkd", s, t, y, epoch=epoch, hparams=resolve_hparams("dkd"))
        assert out.terms["dkd"].item() == pytest.approx(factor * full, rel=1e-12)


def test_pinned_values():
    # Hand-checkable numbers: a 2-class batch of one sample.
    s = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    # p_t = (3/4, 1/4), p_s = (1/2, 1/2): KL = 3/4 ln(3/2) + 1/4 ln(1/2) at T=1.
    assert kd_loss(s, t, 1.0).item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-14)
    # With two classes NCKD compares two one-class distributions: 0. TCKD equals the KL above.
    assert dkd_loss(s, t, torch.tensor([0]), 1.0, 5.0, 1.0).item() == pytest.approx(
        0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-12)


# ---- CTKD -----------------------------------------------------------------------------

def test_ctkd_lambda_schedule():
    assert cosine_lambda(1) == pytest.approx(-0.024471741852423, abs=1e-12)
    assert cosine_lambda(5) == pytest.approx(-0.5, abs=1e-12)
    for epoch in (10, 11, 240):
        assert cosine_lambda(epoch) == -1.0
    assert cosine_lambda(0) == 0.0


def test_ctkd_temperature_at_init():
    T = GlobalTemperature()(0.0)
    assert T.item() == pytest.approx(1 + 20 / (1 + math.exp(-1)), abs=1e-6)
    assert T.item() == pytest.approx(15.6212, abs=1e-4)


def test_gradient_reversal_flips_and_scales():
    x = torch.tensor(2.0, requires_grad=True)
    (gradient_reversal(x, -0.5) * 3.0).backward()
    assert x.grad.item() == pytest.approx(-1.5)
    theta = GlobalTemperature()
    T = theta(-0.25)
    T.backward()
    sig = 1 / (1 + math.exp(-1))
    # dT/dθ = 20·σ(1)(1−σ(1)), reversed and scaled by λ = −0.25.
    assert theta.theta.grad.item() == pytest.approx(-0.25 * 20 * sig * (1 - sig), rel=1e-6)


def test_ctkd_entry_temperature_ascends_loss(batch):
    s, t, y = batch
    hp = resolve_hparams("ctkd", {})
    state = METHODS["ctkd"].make_state(hp).double()
    out = compute_loss("ctkd", s, t, y, epoch=5, hparams=hp, state=state)
    T = out.diagnostics["ctkd_temperature"].item()
    assert out.diagnostics["ctkd_lambda"].item() == pytest.approx(-0.5)
    assert out.terms["kd"].item() == pytest.approx(0.9 * ref_kd(s.numpy(), t.numpy(), T), rel=1e-8)
    out.total.backward()
    # Finite-difference gradient of the KD term w.r.t. θ, then reversed by λ = −0.5.
    eps = 1e-6
    sig = lambda v: 1 / (1 + math.exp(-v))
    f = lambda th: 0.9 * ref_kd(s.numpy(), t.numpy(), 1 + 20 * sig(th))
    fd = (f(1 + eps) - f(1 - eps)) / (2 * eps)
    assert state.theta.grad.item() == pytest.approx(-0.5 * fd, rel=1e-5)


# ---- registry ------------------------------------------------------------------------------

def test_registry_errors(batch):
    s, t, y = batch
    hp = resolve_hparams("kd")
    with pytest.raises(ValueError, match="unknown method 'kdd'.*allowed: .*ctkd"):
        compute_loss("kdd", s, t, y, epoch=1, hparams=hp)
    with pytest.raises(ValueError, match="no hyper-parameter 'temp'.*allowed"):
        resolve_hparams("kd", {"temp": 4})
    with pytest.raises(ValueError, match="allowed: base, sort, swap"):
        compute_loss("kd", s, t, y, epoch=1, hparams=hp, variant="sorted")
    with pytest.raises(ValueError, match="needs teacher logits"):
        compute_loss("kd", s, None, y, epoch=1, hparams=hp)
    with pytest.raises(ValueError, match="no teacher, so variant 'sort'"):
        compute_loss("vanilla", s, None, y, epoch=1, hparams={}, variant="sort")


@pytest.mark.parametrize("name", ["kd", "dkd", "ctkd"])
def test_compute_loss_does_not_resolve(batch, name):
    """compute_loss takes complete hyper-parameters; a missing one is a one-line error."""
    s, t, y = batch
    hp = resolve_hparams(name)
    missing = sorted(hp)[0]
    del hp[missing]
    state = METHODS[name].make_state(resolve_hparams(name))
    with pytest.raises(ValueError, match=rf"hyper-parameter '{missing}' is missing; .*resolve_hparams"):
        compute_loss(name, s, t, y, epoch=1, hparams=hp, state=state.double() if state else None)


def test_resolve_hparams_precedence():
    assert resolve_hparams("kd") == {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9}
    assert resolve_hparams("kd", {"temperature": 3}) == {"temperature": 3, "ce_weight": 0.1, "kd_weight": 0.9}
    with pytest.raises(TypeError):
        METHODS["kd"].defaults["temperature"] = 1.0  # read-only: no run can change another's defaults


def test_variant_applied_only_to_teacher(batch):
    s, t, y = batch
    hp = resolve_hparams("kd")
    base = compute_loss("kd", s, t, y, 1, hp, "base")
    srt = compute_loss("kd", s, t, y, 1, hp, "sort")
    assert base.terms["ce"].item() == srt.terms["ce"].item()
    wrong = (t.argmax(1) != y).any()
    assert wrong and base.terms["kd"].item() != srt.terms["kd"].item()


# ---- MLKD (methods.md, "MLKD") ---------------------------------------------------------------

MLKD_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)


def np_softmax_rows(z, tau=1.0):
    return np.stack([np_softmax(row / tau) for row in z])


def ref_kd_rows(s, t, tau):
    return np.array([tau * tau * np_kl(np_softmax(t[i] / tau), np_softmax(s[i] / tau)) for i in range(len(s))])


def ref_gram_sq(s, t, tau, level):
    """Squared difference of the class-level (C×C) or batch-level (B×B) Gram matrices."""
    ps, pt = np_softmax_rows(s, tau), np_softmax_rows(t, tau)
    if level == "class":
        return (pt.T @ pt - ps.T @ ps) ** 2
    return (pt @ pt.T - ps @ ps.T) ** 2


def ref_mlkd(sw, ss, tw, ts, y, T0=4.0, w_ce=0.1, w=0.9, standardized=False, mask_scale=True,
             weak_at_2_6=True, drop_strong_cc_bc=True):
    """MLKD's terms from methods.md in float64 numpy; the switches turn the upstream quirks off."""
    B, C = sw.shape
    temps = (T0,) + MLKD_TEMPERATURES
    p = np_softmax_rows(tw)
    conf, ccf = p.max(axis=1), p.sum(axis=0)
    mask = (conf <= np.percentile(conf, 50)).astype(float)
    cmask = (ccf <= np.percentile(ccf, 50)).astype(float)
    z = ref_standardize if standardized else (lambda v: v)
    kd_in = {"weak": (z(sw), z(tw)), "strong": (z(ss), z(ts))}
    gram_in = {"weak": (sw, tw), "strong": (ss, ts)}
    strong = lambda tau: "weak" if weak_at_2_6 and tau in (2.0, 6.0) else "strong"

    def masked(rows, m):  # upstream: mean(rows)·mean(m); otherwise the masked rows' mean
        return rows.mean() * m.mean() if mask_scale else (rows * m).mean()

    kd = sum(w * masked(ref_kd_rows(*kd_in["weak"], tau), mask) for tau in temps)
    kd += sum(w * ref_kd_rows(*kd_in[strong(tau)], tau).mean() for tau in temps)
    cc = sum(w * masked(ref_gram_sq(*gram_in["weak"], tau, "class").sum(axis=1), cmask) for tau in temps)
    bc = sum(w * masked(ref_gram_sq(*gram_in["weak"], tau, "batch").sum(axis=1), mask) for tau in temps)
    if not drop_strong_cc_bc:
        cc += sum(w * ref_gram_sq(*gram_in[strong(tau)], tau, "class").sum() / C for tau in temps)
        bc += sum(w * ref_gram_sq(*gram_in[strong(tau)], tau, "batch").sum() / B for tau in temps)
    ce = w_ce * (ref_ce(sw, y) + ref_ce(ss, y))
    return {"ce": ce, "kd": kd, "cc": cc, "bc": bc}


def mlkd_batch(rows, seed=0, classes=10):
    g = torch.Generator().manual_seed(seed)
    sw, ss, tw, ts = (torch.randn(rows, classes, generator=g, dtype=torch.float64) * 3 for _ in range(4))
    return sw, ss, tw, ts, torch.randint(0, classes, (rows,), generator=g)


def assert_terms_equal(got, expected):
    assert list(got) == ["ce", "kd", "cc", "bc"]
    for key, value in expected.items():
        assert got[key].item() == pytest.approx(value, rel=1e-10, abs=1e-13), key


@pytest.mark.parametrize("rows", [8, 9])  # the median of an even and of an odd batch
@pytest.mark.parametrize("inputs", ["raw", "sorted", "standardized"])
def test_mlkd_loss_matches_reference(rows, inputs):
    from sortkd.losses import mlkd_loss

    sw, ss, tw, ts, y = mlkd_batch(rows, seed=rows)
    if inputs == "sorted":
        tw, ts = sort_logits(tw, y), sort_logits(ts, y)
    standardized = inputs == "standardized"
    T0, w = (2.0, 9.0) if standardized else (4.0, 0.9)
    got = mlkd_loss(sw, ss, tw, ts, y, temperature=T0, ce_weight=0.1, kd_weight=w, standardize=standardized)
    expected = ref_mlkd(*(v.numpy() for v in (sw, ss, tw, ts, y)), T0=T0, w=w, standardized=standardized)
    assert_terms_equal(got, expected)


@pytest.mark.parametrize("name,variant", [("mlkd", "sort"), ("mlkd", "swap"), ("mlkd_ls", "sort"), ("mlkd_ls", "base")])
def test_mlkd_entries_apply_the_variant_to_both_views(name, variant):
    sw, ss, tw, ts, y = mlkd_batch(9, seed=1)
    out = compute_loss(name, {"weak": sw, "strong": ss}, {"weak": tw, "strong": ts}, y, 1,
                       resolve_hparams(name), variant)
    tw_v, ts_v = (apply_variant(t, y, variant).numpy() for t in (tw, ts))
    hp = resolve_hparams(name)
    expected = ref_mlkd(sw.numpy(), ss.numpy(), tw_v, ts_v, y.numpy(), T0=hp["temperature"],
                        w_ce=hp["ce_weight"], w=hp["kd_weight"], standardized=name == "mlkd_ls")
    assert_terms_equal(out.terms, expected)
    # Odd batch: the median is a member, so (B + 1) / 2 rows are kept.
    assert out.diagnostics["mlkd_mask_frac"].item() == pytest.approx(5 / 9)
    assert out.diagnostics["mlkd_cmask_frac"].item() == pytest.approx(5 / 10)


@pytest.mark.parametrize("switch,ref_key", [("quirk_mask_scale", "mask_scale"),
                                            ("quirk_weak_at_2_6", "weak_at_2_6"),
                                            ("quirk_drop_strong_cc_bc", "drop_strong_cc_bc")])
@pytest.mark.parametrize("rows", [8, 9])
def test_mlkd_quirks_switch_off_one_at_a_time(switch, ref_key, rows):
    from sortkd.losses import mlkd_loss

    sw, ss, tw, ts, y = mlkd_batch(rows, seed=20 + rows)
    got = mlkd_loss(sw, ss, tw, ts, y, **{switch: False})
    expected = ref_mlkd(*(v.numpy() for v in (sw, ss, tw, ts, y)), **{ref_key: False})
    assert_terms_equal(got, expected)
    # Each switch changes a number the upstream default would give.
    upstream = mlkd_loss(sw, ss, tw, ts, y)
    assert any(upstream[k].item() != got[k].item() for k in got)


def test_mlkd_host_masks_equal_device_masks():
    from sortkd.losses import mlkd_loss

    for rows in (8, 9, 64):
        sw, ss, tw, ts, y = mlkd_batch(rows, seed=rows)
        device = mlkd_loss(sw, ss, tw, ts, y)
        host = mlkd_loss(sw, ss, tw, ts, y, quirk_host_masks=True)
        for key in device:
            assert torch.equal(device[key], host[key])


@pytest.mark.parametrize("rows", range(1, 12))
def test_median_is_numpys_percentile(rows):
    from sortkd.losses.mlkd import _median

    g = torch.Generator().manual_seed(rows)
    for values in (torch.rand(rows, generator=g, dtype=torch.float64),
                   torch.randint(0, 3, (rows,), generator=g).double()):  # with ties
        assert _median(values).item() == np.percentile(values.numpy(), 50)


def test_mlkd_errors():
    from sortkd.losses import mlkd_loss

    sw, ss, tw, ts, y = mlkd_batch(4)
    with pytest.raises(TypeError, match="unknown switch.*quirk_mask"):
        mlkd_loss(sw, ss, tw, ts, y, quirk_mask=False)
    with pytest.raises(ValueError, match="quirk_mask_scale=2 is not allowed; allowed: 0, 1"):
        resolve_hparams("mlkd", {"quirk_mask_scale": 2})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mlkd_on_cuda_needs_no_host_sync():
    sw, ss, tw, ts, y = (v.cuda() for v in mlkd_batch(64, classes=100))
    hp = resolve_hparams("mlkd")
    cpu = compute_loss("mlkd", {"weak": sw.cpu(), "strong": ss.cpu()}, {"weak": tw.cpu(), "strong": ts.cpu()},
                       y.cpu(), 1, hp, "sort")
    compute_loss("mlkd", {"weak": sw, "strong": ss}, {"weak": tw, "strong": ts}, y, 1, hp, "sort")  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync in the loss raises
    try:
        out = compute_loss("mlkd", {"weak": sw, "strong": ss}, {"weak": tw, "strong": ts}, y, 1, hp, "sort")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for key in cpu.terms:
        assert out.terms[key].item() == pytest.approx(cpu.terms[key].item(), rel=1e-10)
