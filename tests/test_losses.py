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

