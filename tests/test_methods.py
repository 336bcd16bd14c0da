"""Registry-wide invariants (every registered method, whatever file it lives in) and the
"a new method is one file" test: a throwaway method added as the README describes, trained for
one epoch through the real CLI."""
import importlib.util
import json
import math
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sortkd.losses
from sortkd.losses import METHODS, VIEWS, compute_loss, get_method, resolve_hparams

NAMES = sorted(METHODS)
TEACHER_METHODS = [n for n in NAMES if METHODS[n].needs_teacher]
B, C = 12, 10


def make_inputs(method, seed=0, teacher_right=False):
    """Student logits (requiring grad) and teacher logits per view, as the method takes them."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, C, (B,), generator=g)
    student, teacher = {}, {}
    for view in method.views:
        student[view] = (torch.randn(B, C, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
        t = torch.randn(B, C, generator=g, dtype=torch.float64) * 3
        if teacher_right:  # the target holds the row's strict maximum
            t = t.scatter(1, target[:, None], t.max(dim=1, keepdim=True).values + 1.0)
        else:  # wrong on the first half of the rows at least
            t[: B // 2] = t[: B // 2].scatter(1, target[: B // 2, None], t[: B // 2].min(dim=1, keepdim=True).values - 1.0)
        teacher[view] = t.requires_grad_(True)
    if len(method.views) == 1:
        return student["weak"], teacher["weak"], target
    return student, teacher, target


def run(name, variant="base", seed=0, teacher_right=False, epoch=3):
    method = get_method(name)
    hp = resolve_hparams(name)
    state = method.make_state(hp)
    if state is not None:
        state = state.double()
    student, teacher, target = make_inputs(method, seed, teacher_right)
    out = compute_loss(name, student, teacher if method.needs_teacher else None, target, epoch, hp,
                       variant, state)
    return out, student, teacher, state


def leaves(x):
    return list(x.values()) if isinstance(x, dict) else [x]


def variants_of(name):
    return ["base", "sort", "swap"] if METHODS[name].needs_teacher else ["base"]


# --- the interface -------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_method_declares_the_interface(name):
    method = METHODS[name]
    assert method.name == name and get_method(name) is method
    assert isinstance(method.label, str) and method.label.strip() == method.label != ""
    assert isinstance(method.description, str) and method.description
    assert method.views[0] == "weak" and set(method.views) <= set(VIEWS)
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in method.defaults.values())
    # The defaults are a complete, valid setting on their own.
    assert resolve_hparams(name) == dict(method.defaults)


def test_labels_are_unique():
    labels = [m.label for m in METHODS.values()]
    assert len(set(labels)) == len(labels), labels


def test_every_module_of_the_package_registers_a_method():
    """A method is one file: each module (but the machinery) registers what it defines."""
    package = Path(sortkd.losses.__file__).parent
    modules = {m.name for m in pkgutil.iter_modules([str(package)])} - {"registry"}
    registering = {type(m).__module__.rsplit(".", 1)[1] for m in METHODS.values()}
    assert modules == registering


def test_registering_twice_or_a_bad_method_fails():
    from sortkd.losses import Method, register

    with pytest.raises(ValueError, match="'kd' is already registered"):
        register(type("Again", (Method,), {"name": "kd", "label": "KD again", "description": "",
                                           "defaults": {}}))
    with pytest.raises(ValueError, match="label 'KD' is already used by 'kd'"):
        register(type("SameLabel", (Method,), {"name": "kd_twin", "label": "KD", "description": "",
                                               "defaults": {}}))
    with pytest.raises(ValueError, match="views .* must start with 'weak'"):
        register(type("Views", (Method,), {"name": "odd_views", "label": "Odd", "description": "",
                                           "defaults": {}, "views": ("strong",)}))
    with pytest.raises(ValueError, match="default flag=True is not a number"):
        register(type("Flag", (Method,), {"name": "flagged", "label": "Flag", "description": "",
                                          "defaults": {"flag": True}}))
    with pytest.raises(TypeError, match="does not set 'label'"):
        register(type("NoLabel", (Method,), {"name": "unlabelled", "description": "", "defaults": {}}))
    assert not {"kd_twin", "odd_views", "flagged", "unlabelled"} & set(METHODS)


class RecordingDict(dict):
    def __init__(self, *args):
        super().__init__(*args)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


@pytest.mark.parametrize("name", NAMES)
def test_defaults_are_complete_and_all_used(name):
    """The method reads only keys it declares (else KeyError), and reads every one of them."""
    method = METHODS[name]
    hp = RecordingDict(resolve_hparams(name))
    state = method.make_state(hp)
    student, teacher, target = make_inputs(method)
    compute_loss(name, student, teacher if method.needs_teacher else None, target, 3, hp, "base",
                 state.double() if state is not None else None)
    assert hp.read == set(method.defaults)


# --- the numbers ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,variant", [(n, v) for n in NAMES for v in variants_of(n)])
def test_loss_and_gradients_are_finite(name, variant):
    out, student, teacher, state = run(name, variant)
    assert out.terms and all(t.dim() == 0 and torch.isfinite(t) for t in out.terms.values())
    assert torch.equal(out.total, sum(out.terms.values()))
    out.total.backward()
    for s in leaves(student):
        assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    # The teacher is a fixed target: the variant detaches it.
    assert all(t.grad is None for t in leaves(teacher))
    for p in (state.parameters() if state is not None else []):
        assert p.grad is not None and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", TEACHER_METHODS)
def test_sort_and_swap_equal_base_when_the_teacher_is_right(name):
    """A teacher right on every row is left bit-identical by the sort, so the loss is too."""
    base = run(name, "base", teacher_right=True)[0]
    for variant in ("sort", "swap"):
        other = run(name, variant, teacher_right=True)[0]
        assert list(other.terms) == list(base.terms)
        for key in base.terms:
            assert torch.equal(other.terms[key], base.terms[key]), (variant, key)


@pytest.mark.parametrize("name", TEACHER_METHODS)
def test_the_variant_reaches_the_loss_when_the_teacher_is_wrong(name):
    base, srt = run(name, "base")[0], run(name, "sort")[0]
    if "ce" in base.terms:
        assert base.terms["ce"].item() == srt.terms["ce"].item()  # CE never sees the teacher
    assert base.total.item() != srt.total.item()


@pytest.mark.parametrize("name", [n for n in NAMES if len(METHODS[n].views) > 1])
def test_multi_view_methods_take_dicts_of_views(name):
    method = METHODS[name]
    student, teacher, target = make_inputs(method)
    hp = resolve_hparams(name)
    with pytest.raises(ValueError, match="as a dict with the views weak, strong"):
        compute_loss(name, student["weak"], teacher, target, 1, hp)
    with pytest.raises(ValueError, match="teacher logits as a dict"):
        compute_loss(name, student, {"weak": teacher["weak"]}, target, 1, hp)


# --- a new method is one file --------------------------------------------------------------

# The README's worked example ("Adding a method"), verbatim: keep the two in step.
EXAMPLE_FILE = "sortkd/losses/reverse_kd.py"
EXAMPLE_METHOD = '''\
"""Reverse KD: the KL divergence taken from the student to the teacher."""
import torch.nn.functional as F

from sortkd.losses.registry import Method, register


@register
class ReverseKD(Method):
    name = "reverse_kd"
    label = "RKL"
    description = "KD with the reverse KL, T² · batch-mean KL(p_T(student) ‖ p_T(teacher))"
    defaults = {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9}

    def terms(self, student, teacher, target, hp, schedule, state):
        T = hp["temperature"]
        log_p_student = F.log_softmax(student / T, dim=1)
        log_p_teacher = F.log_softmax(teacher / T, dim=1)
        reverse_kl = (log_p_student.exp() * (log_p_student - log_p_teacher)).sum(dim=1).mean()
        return {"ce": hp["ce_weight"] * F.cross_entropy(student, target),
                "kd": hp["kd_weight"] * T**2 * reverse_kl}, {}
'''


def cli(args, env, cwd):
    proc = subprocess.run([sys.executable, "-m", "sortkd", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"sortkd {args[0]} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_a_new_method_is_one_file_and_trains_through_the_cli(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(Path(sortkd.losses.__file__).parents[1], repo / "sortkd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (repo / EXAMPLE_FILE).write_text(EXAMPLE_METHOD)
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    data = tmp_path / "data" / "tiny.npz"
    cli(["prepare-data", "--source", "synthetic", "--root", str(data.parent), "--out", str(data),
         "--num-classes", "5", "--train-per-class", "24", "--test-per-class", "8", "--seed", "1"], env, tmp_path)
    common = {"data": str(data), "arch": "resnet8", "epochs": 1, "batch_size": 16, "lr": 0.05,
              "lr_milestones": [1], "threads": 1}
    teacher = {"kind": "teacher", "name": "toy/teacher", "method": "vanilla", "hparams": {}, **common}
    cli(["train", "--spec", json.dumps(teacher), "--out-dir", str(tmp_path / "teacher")], env, tmp_path)
    student = {"kind": "student", "name": "toy/reverse_kd/sort", "method": "reverse_kd", "variant": "sort",
               "hparams": {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9},
               "teacher_arch": "resnet8", "teacher_dir": str(tmp_path / "teacher"), "teacher_logits": "online",
               "pair": "resnet8-resnet8", **common}
    cli(["train", "--spec", json.dumps(student), "--out-dir", str(tmp_path / "student")], env, tmp_path)

    summary = json.loads((tmp_path / "student" / "summary.json").read_text())
    assert math.isfinite(summary["final_top1"]) and 0 <= summary["final_top1"] <= 100
    rows = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and math.isfinite(rows[0]["loss_kd"]) and rows[0]["loss_kd"] > 0
    # The method came from the copy: the installed package knows nothing of it.
    assert "reverse_kd" not in METHODS
    assert importlib.util.find_spec("sortkd.losses.reverse_kd") is None
