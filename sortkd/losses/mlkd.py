"""Multi-Level Logit Distillation (MLKD, CVPR 2023): instance, batch and class levels, two views.

Each sample comes as a weak view (crop + flip) and a strong view (crop + flip + RandAugment +
Cutout, sortkd.data.randaugment); student and teacher see both. With P = softmax(z / τ) per row
and the temperatures 𝒯 = (T0, 3, 5, 2, 6):

- instance level: KD(s, t, τ) = τ² · batch-mean KL(P_t ‖ P_s), on standardized logits for MLKD+LS;
- class level:    cc(s, t, τ) = Σ_jk (P_tᵀP_t − P_sᵀP_s)²_jk / C;
- batch level:    bc(s, t, τ) = Σ_ij (P_t P_tᵀ − P_s P_sᵀ)²_ij / B;
- masks from the weak teacher's softmax at τ = 1: ``mask_i = conf_i ≤ median(conf)`` with conf the
  row maximum, ``cmask_c = ccf_c ≤ median(ccf)`` with ccf the column sum (numpy's median).

The upstream code has four quirks (methods.md, "MLKD"). Each has a switch; the first three are
reproduced by default, the fourth is not (the masks are computed on the device):

1. ``quirk_mask_scale``: the masks scale batch-mean scalars (≈ ×0.5) instead of selecting
   samples. Off: KD and bc are masked per sample, cc per class (row j of the Gram by cmask_j).
2. ``quirk_weak_at_2_6``: the "strong" sums use the weak logits at τ = 2 and τ = 6.
3. ``quirk_drop_strong_cc_bc``: the strong-view cc and bc sums are left out of the total.
   Off: they are added, unmasked, built like the strong KD sum.
4. ``quirk_host_masks``: 1 computes the two medians with numpy on the host, as upstream (one
   sync per step); 0 (the default) computes them on the device.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sortkd.losses.lskd import standardize as _standardize
from sortkd.losses.registry import Method, register

# The four temperatures MLKD adds to T0; their order fixes the summation order of the terms.
EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)
# Upstream's "strong" sums use the weak logits at these temperatures (quirk 2).
_WEAK_IN_STRONG_SUM = (2.0, 6.0)

QUIRKS = ("quirk_mask_scale", "quirk_weak_at_2_6", "quirk_drop_strong_cc_bc", "quirk_host_masks")


def _median(values: torch.Tensor) -> torch.Tensor:
    """numpy's 50th percentile of a 1-D tensor (mean of the two middle values for an even count),
    on the tensor's device: the indices depend only on the shape, so there is no host sync."""
    ordered = values.sort().values
    n = ordered.shape[0]
    low, high = ordered[(n - 1) // 2], ordered[n // 2]
    # numpy's interpolation at fraction 0.5 (its branch for fractions >= 0.5): b − (b − a)·0.5.
    return high - (high - low) * 0.5


def _host_median(values: torch.Tensor) -> float:
    return float(np.percentile(values.detach().cpu().numpy(), 50))


def confidence_masks(teacher_weak: torch.Tensor, on_host: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [B], cmask [C]) as 0/1 in the logits' dtype: the less confident half of the
    samples, and of the classes, by the weak teacher's softmax at τ = 1."""
    p = F.softmax(teacher_weak.detach(), dim=1)
    confidence = p.max(dim=1).values
    class_confidence = p.sum(dim=0)
    if on_host:
        # Upstream compares against a Python float: the threshold is rounded to the tensor dtype.
        mask = confidence.le(_host_median(confidence))
        cmask = class_confidence.le(_host_median(class_confidence))
    else:
        mask = confidence <= _median(confidence)
        cmask = class_confidence <= _median(class_confidence)
    return mask.to(p.dtype), cmask.to(p.dtype)


def _kd_rows(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """τ² · KL(P_t ‖ P_s) per sample [B]."""
    log_p_student = F.log_softmax(student / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=1)
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1) * temperature**2


def _gram_rows(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
               level: str) -> torch.Tensor:
    """Row sums of the squared Gram difference: per class [C] ("class") or per sample [B] ("batch")."""
    p_student = F.softmax(student / temperature, dim=1)
    p_teacher = F.softmax(teacher / temperature, dim=1)
    if level == "class":
        gram_student, gram_teacher = p_student.t() @ p_student, p_teacher.t() @ p_teacher
    else:
        gram_student, gram_teacher = p_student @ p_student.t(), p_teacher @ p_teacher.t()
    return ((gram_teacher - gram_student) ** 2).sum(dim=1)


def _masked(rows: torch.Tensor, mask: torch.Tensor | None, as_scale: bool) -> torch.Tensor:
    """mean(rows) (no mask), mean(rows)·mean(mask) (upstream), or mean(rows·mask) (selection)."""
    if mask is None:
        return rows.mean()
    if as_scale:
        return rows.mean() * mask.mean()
    return (rows * mask).mean()


def mlkd_terms(student_weak, student_strong, teacher_weak, teacher_strong, target,
               temperature=4.0, ce_weight=0.1, kd_weight=0.9, standardize=False, *,
               quirk_mask_scale=True, quirk_weak_at_2_6=True, quirk_drop_strong_cc_bc=True,
               quirk_host_masks=False) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(terms ce, kd, cc, bc; diagnostics: the kept fractions of samples and classes)."""
    # The cache may hold fp16 teacher logits; the loss is computed in the student's dtype.
    teacher_weak = teacher_weak.detach().to(student_weak.dtype)
    teacher_strong = teacher_strong.detach().to(student_strong.dtype)
    mask, cmask = confidence_masks(teacher_weak, on_host=bool(quirk_host_masks))
    as_scale = bool(quirk_mask_scale)
    temperatures = (float(temperature),) + EXTRA_TEMPERATURES
    w = kd_weight

    kd_inputs = {"weak": (student_weak, teacher_weak), "strong": (student_strong, teacher_strong)}
    if standardize:
        kd_inputs = {view: (_standardize(s), _standardize(t)) for view, (s, t) in kd_inputs.items()}
    gram_inputs = {"weak": (student_weak, teacher_weak), "strong": (student_strong, teacher_strong)}

    def strong_view(tau):
        return "weak" if quirk_weak_at_2_6 and tau in _WEAK_IN_STRONG_SUM else "strong"

    kd = sum(w * _masked(_kd_rows(*kd_inputs["weak"], tau), mask, as_scale) for tau in temperatures)
    kd = kd + sum(w * _kd_rows(*kd_inputs[strong_view(tau)], tau).mean() for tau in temperatures)
    cc = sum(w * _masked(_gram_rows(*gram_inputs["weak"], tau, "class"), cmask, as_scale)
             for tau in temperatures)
    bc = sum(w * _masked(_gram_rows(*gram_inputs["weak"], tau, "batch"), mask, as_scale)
             for tau in temperatures)
    if not quirk_drop_strong_cc_bc:
        cc = cc + sum(w * _gram_rows(*gram_inputs[strong_view(tau)], tau, "class").mean()
                      for tau in temperatures)
        bc = bc + sum(w * _gram_rows(*gram_inputs[strong_view(tau)], tau, "batch").mean()
                      for tau in temperatures)
    ce = ce_weight * (F.cross_entropy(student_weak, target) + F.cross_entropy(student_strong, target))
    terms = {"ce": ce, "kd": kd, "cc": cc, "bc": bc}
    return terms, {"mlkd_mask_frac": mask.mean().detach(), "mlkd_cmask_frac": cmask.mean().detach()}


def mlkd_loss(student_weak, student_strong, teacher_weak, teacher_strong, target,
              temperature=4.0, ce_weight=0.1, kd_weight=0.9, standardize=False, **quirks
              ) -> dict[str, torch.Tensor]:
    """MLKD's terms ``ce``, ``kd``, ``cc``, ``bc`` (weighted; the loss is their sum).

    Upstream semantics at the defaults; ``quirks`` are the keyword switches of the module
    docstring (``quirk_mask_scale=False``, ...). The sort is not applied here: pass sorted
    teacher logits, as ``compute_loss`` does.
    """
    unknown = sorted(set(quirks) - set(QUIRKS))
    if unknown:
        raise TypeError(f"mlkd_loss got unknown switch(es) {', '.join(unknown)}; allowed: {', '.join(QUIRKS)}")
    terms, _ = mlkd_terms(student_weak, student_strong, teacher_weak, teacher_strong, target,
                          temperature, ce_weight, kd_weight, standardize, **quirks)
    return terms


@register
class MLKD(Method):
    name = "mlkd"
    label = "MLKD"
    description = "Multi-level logit distillation (instance, batch, class) on a weak and a strong view"
    defaults = {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9,
                "quirk_mask_scale": 1, "quirk_weak_at_2_6": 1, "quirk_drop_strong_cc_bc": 1,
                "quirk_host_masks": 0}
    views = ("weak", "strong")
    standardize = False

    def check(self, hp):
        for key in QUIRKS:
            if hp[key] not in (0, 1):
                raise ValueError(f"method {self.name!r}: {key}={hp[key]!r} is not allowed; allowed: 0, 1")
        if not hp["temperature"] > 0:
            raise ValueError(f"method {self.name!r}: temperature={hp['temperature']!r} must be > 0")

    def terms(self, student, teacher, target, hp, schedule, state):
        return mlkd_terms(student["weak"], student["strong"], teacher["weak"], teacher["strong"], target,
                          hp["temperature"], hp["ce_weight"], hp["kd_weight"], self.standardize,
                          **{key: hp[key] for key in QUIRKS})


@register
class MLKDLS(MLKD):
    name = "mlkd_ls"
    label = "MLKD+LS"
    description = "MLKD with standardized logits in its KD terms"
    defaults = {**MLKD.defaults, "temperature": 2.0, "kd_weight": 9.0}
    standardize = True
