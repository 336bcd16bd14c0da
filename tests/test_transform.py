"""sort_logits / swap_logits against invariants and a slow per-row construction."""
import numpy as np
import pytest
import torch

from sortkd import apply_variant, sort_logits, swap_logits

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def slow_sort_row(z: list[float], y: int) -> list[float]:
    """Literal reading of the method: y first, then the others by descending teacher logit."""
    values = sorted(z, reverse=True)
    others = sorted((c for c in range(len(z)) if c != y), key=lambda c: -z[c])
    out = [0.0] * len(z)
    for value, cls in zip(values, [y] + others):
        out[cls] = value
    return out


def random_batch(dtype, rows=64, classes=10, seed=0, ties=False):
    g = torch.Generator().manual_seed(seed)
    if ties:
        z = torch.randint(0, 4, (rows, classes), generator=g).to(torch.float64)
    else:
        z = torch.randn(rows, classes, generator=g, dtype=torch.float64) * 5
    return z.to(dtype), torch.randint(0, classes, (rows,), generator=g)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True])
def test_sort_invariants(dtype, ties):
    z, y = random_batch(dtype, ties=ties)
    out = sort_logits(z, y)
    assert out.dtype == dtype and out.shape == z.shape
    # Each row keeps its multiset of values.
    assert torch.equal(out.sort(dim=1).values, z.sort(dim=1).values)
    # The target holds the row maximum (test the value: with ties argmax may name another class).
    assert torch.equal(out.gather(1, y[:, None]).squeeze(1), z.max(dim=1).values)
    # Rows where the teacher was right are bit-identical.
    right = z.gather(1, y[:, None]).squeeze(1) == z.max(dim=1).values
    assert right.any() and (~right).any()
    assert torch.equal(out[right].view(torch.int16 if dtype in (torch.float16, torch.bfloat16) else
                                      (torch.int32 if dtype == torch.float32 else torch.int64)),
                       z[right].view(torch.int16 if dtype in (torch.float16, torch.bfloat16) else
                                     (torch.int32 if dtype == torch.float32 else torch.int64)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sort_matches_slow_construction_on_tie_free_rows(dtype):
    z, y = random_batch(dtype, rows=200, classes=7, seed=3)
    out = sort_logits(z, y)
    for i in range(z.shape[0]):
        row = z[i].double().tolist()
        if len(set(row)) < len(row):
            continue  # low-precision rounding can create ties; the closed form is about tie-free rows
        expected = slow_sort_row(row, int(y[i]))
        assert out[i].double().tolist() == expected


def test_sort_closed_form_example():
    # Ranks: class1 (5) > class2 (3) > class3 (2) > class0 (1); target class3 at rank 3.
    z = torch.tensor([[1.0, 5.0, 3.0, 2.0]])
    assert sort_logits(z, torch.tensor([3])).tolist() == [[1.0, 3.0, 2.0, 5.0]]
    assert swap_logits(z, torch.tensor([3])).tolist() == [[1.0, 2.0, 3.0, 5.0]]


def test_sort_is_exact_in_fp16_at_extreme_values():
    # An "add a huge constant" implementation would overflow fp16 here.
    z = torch.tensor([[65504.0, -65504.0, 0.0], [-65504.0, 65504.0, 60000.0]], dtype=torch.float16)
    y = torch.tensor([1, 2])
    out = sort_logits(z, y)
    assert torch.isfinite(out).all()
    # Row 0: target (rank 3) takes the max, class 0 takes rank 2's 0, class 2 takes rank 3's value.
    assert out.tolist() == [[0.0, 65504.0, -65504.0], [-65504.0, 60000.0, 65504.0]]


@pytest.mark.parametrize("dtype", DTYPES)
def test_swap_invariants(dtype):
    z, y = random_batch(dtype, seed=5)
    out = swap_logits(z, y)
    assert out.dtype == dtype
    assert torch.equal(out.sort(dim=1).values, z.sort(dim=1).values)
    assert torch.equal(out.gather(1, y[:, None]).squeeze(1), z.max(dim=1).values)
    top = z.argmax(dim=1)
    changed = (out != z)
    for i in range(z.shape[0]):
        allowed = {int(y[i]), int(top[i])}
        assert set(torch.nonzero(changed[i]).flatten().tolist()) <= allowed
        assert out[i, top[i]] == z[i, y[i]]


def test_no_gradient_and_detached():
    z = torch.randn(4, 5, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    for fn in (sort_logits, swap_logits):
        assert not fn(z, y).requires_grad
    assert not apply_variant(z, y, "base").requires_grad


def test_apply_variant_dispatch_and_errors():
    z, y = random_batch(torch.float32, seed=9)
    assert torch.equal(apply_variant(z, y, "base"), z)
    assert torch.equal(apply_variant(z, y, "sort"), sort_logits(z, y))
    assert torch.equal(apply_variant(z, y, "swap"), swap_logits(z, y))
    with pytest.raises(ValueError, match="allowed: base, sort, swap"):
        apply_variant(z, y, "sorted")
    with pytest.raises(ValueError, match="2-D"):
        sort_logits(z[0], y[:1])


def test_sort_commutes_with_temperature_and_standardization():
    from sortkd.losses import standardize

    z, y = random_batch(torch.float64, seed=11)
    assert torch.allclose(sort_logits(z / 4.0, y), sort_logits(z, y) / 4.0, rtol=0, atol=1e-12)
    assert torch.allclose(sort_logits(standardize(z), y), standardize(sort_logits(z, y)),
                          rtol=0, atol=1e-12)


def test_sort_statistics_unchanged():
    z, y = random_batch(torch.float64, seed=13)
    out = sort_logits(z, y)
    for T in (1.0, 4.0):
        p, q = torch.softmax(z / T, 1), torch.softmax(out / T, 1)
        ent = lambda r: -(r * r.log()).sum(1)
        assert torch.allclose(ent(p), ent(q), atol=1e-12)
    assert torch.allclose(z.logsumexp(1), out.logsumexp(1), atol=1e-12)
    np.testing.assert_allclose(z.std(1).numpy(), out.std(1).numpy(), atol=1e-12)


def test_top_level_import_is_lazy():
    """``import sortkd`` loads no torch (the CLI takes a GPU slot first), and the sort needs only torch."""
    import subprocess
    import sys

    code = ("import sys, sortkd; assert 'torch' not in sys.modules, 'torch'; "
            "from sortkd import sort_logits, swap_logits; import torch; "
            "assert sort_logits.__module__ == 'sortkd.sorting'; "
            "assert 'torchvision' not in sys.modules and 'sortkd.experiment.specs' not in sys.modules, 'heavy'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
