"""CIFAR model zoo: sizes, state_dict layout of the public zoo, behaviour, checkpoint import."""
import argparse
import math
from pathlib import Path

import pytest
import torch
import yaml

from sortkd.models import ARCHS, CheckpointMismatchError, build, load_public_checkpoint
from sortkd.models.shufflenet import channel_shuffle

REPO = Path(__file__).resolve().parents[1]

# Parameter counts for 100 classes (methods.md §5); resnet8 / resnet14 counted by hand:
# resnet8 = stem 464 + stage1 4,672 + stage2 14,528 + stage3 57,728 + fc 6,500.
PARAM_COUNTS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg13": 9_462_180,
    "MobileNetV2": 812_836,
    "ShuffleV1": 949_258,
    "ShuffleV2": 1_355_528,
    "ResNet50": 23_705_252,
}


def test_archs_are_exactly_the_zoo():
    assert set(ARCHS) == set(PARAM_COUNTS)


@pytest.mark.parametrize("table", ["pairs_cifar100.yaml", "pairs_demo.yaml"])
def test_every_arch_of_the_pairs_tables_is_in_the_zoo(table):
    pairs = yaml.safe_load((REPO / "workflow" / "tables" / table).read_text())
    named = {pair[role] for pair in pairs.values() for role in ("teacher", "student")}
    assert named <= set(ARCHS), sorted(named - set(ARCHS))


@pytest.mark.parametrize("arch", sorted(PARAM_COUNTS))
def test_param_count_and_forward_backward(arch):
    torch.manual_seed(0)
    model = build(arch, num_classes=100)
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[arch]
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert isinstance(logits, torch.Tensor)  # logits only, no feature tuple
    assert logits.shape == (2, 100)
    logits.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert classifier.weight.grad.abs().sum() > 0


def test_num_classes_sets_the_classifier():
    model = build("resnet8", num_classes=10)
    assert model.fc.weight.shape == (10, 64)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_unknown_arch_names_value_and_allowed():
    with pytest.raises(ValueError) as err:
        build("resnet21")
    msg = str(err.value)
    assert "'resnet21'" in msg
    for name in ("resnet20", "wrn_40_2", "MobileNetV2", "ShuffleV1", "ResNet50"):
        assert name in msg


def test_bad_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        build("resnet8", num_classes=0)


# ---- state_dict layout of the public zoo (mdistiller/models/cifar/*.py) ----
# (key, shape) pairs that must exist, and keys that must not.
LAYOUT = {
    "resnet20": (
        {
            "conv1.weight": (16, 3, 3, 3),
            "bn1.running_mean": (16,),
            "layer1.0.conv1.weight": (16, 16, 3, 3),
            "layer2.0.conv1.weight": (32, 16, 3, 3),
            "layer2.0.downsample.0.weight": (32, 16, 1, 1),
            "layer2.0.downsample.1.running_var": (32,),
            "layer3.2.bn2.num_batches_tracked": (),
            "fc.weight": (100, 64),
            "fc.bias": (100,),
        },
        ("layer1.0.downsample.0.weight", "layer3.3.conv1.weight", "linear.weight"),
    ),
    "resnet8x4": (
        {
            "conv1.weight": (32, 3, 3, 3),
            "layer1.0.downsample.0.weight": (64, 32, 1, 1),
            "layer3.0.conv2.weight": (256, 256, 3, 3),
            "fc.weight": (100, 256),
        },
        ("layer1.1.conv1.weight",),
    ),
    "resnet32x4": (
        {"layer3.4.conv2.weight": (256, 256, 3, 3), "layer3.0.downsample.1.weight": (256,)},
        ("layer3.5.conv1.weight",),
    ),
    "ResNet50": (
        {
            "conv1.weight": (64, 3, 3, 3),
            "layer1.0.conv1.weight": (64, 64, 1, 1),
            "layer1.0.conv3.weight": (256, 64, 1, 1),
            "layer1.0.shortcut.0.weight": (256, 64, 1, 1),
            "layer2.0.conv2.weight": (128, 128, 3, 3),
            "layer4.0.shortcut.1.running_mean": (2048,),
            "layer4.2.bn3.running_var": (2048,),
            "linear.weight": (100, 2048),
        },
        ("layer1.1.shortcut.0.weight", "layer4.3.conv1.weight", "fc.weight"),
    ),
    "wrn_40_2": (
        {
            "conv1.weight": (16, 3, 3, 3),
            "block1.layer.0.bn1.running_mean": (16,),
            "block1.layer.0.convShortcut.weight": (32, 16, 1, 1),
            "block2.layer.0.convShortcut.weight": (64, 32, 1, 1),
            "block3.layer.5.conv2.weight": (128, 128, 3, 3),
            "bn1.weight": (128,),
            "fc.weight": (100, 128),
        },
        ("block1.layer.1.convShortcut.weight", "block3.layer.6.conv1.weight"),
    ),
    "wrn_40_1": (
        {"block2.layer.0.convShortcut.weight": (32, 16, 1, 1), "fc.weight": (100, 64)},
        ("block1.layer.0.convShortcut.weight",),
    ),
    "wrn_16_2": (
        {"block3.layer.1.conv1.weight": (128, 128, 3, 3)},
        ("block3.layer.2.conv1.weight",),
    ),
    "vgg13": (
        {
            "block0.0.weight": (64, 3, 3, 3),
            "block0.0.bias": (64,),
            "block0.1.running_mean": (64,),
            "block0.3.weight": (64, 64, 3, 3),
            "block0.4.running_var": (64,),
            "block1.0.weight": (128, 64, 3, 3),
            "block4.3.weight": (512, 512, 3, 3),
            "classifier.weight": (100, 512),
        },
        ("block0.6.weight", "block0.5.weight", "block5.0.weight", "classifier.0.weight"),
    ),
    "vgg8": (
        {
            "block0.0.weight": (64, 3, 3, 3),
            "block0.1.weight": (64,),
            "block3.0.weight": (512, 256, 3, 3),
            "block4.0.weight": (512, 512, 3, 3),
            "classifier.bias": (100,),
        },
        ("block0.3.weight",),
    ),
    "MobileNetV2": (
        {
            "conv1.0.weight": (16, 3, 3, 3),
            "conv1.1.running_mean": (16,),
            "blocks.0.0.conv.0.weight": (16, 16, 1, 1),  # expansion 1 still has the 1x1 expand
            "blocks.0.0.conv.3.weight": (16, 1, 3, 3),
            "blocks.0.0.conv.6.weight": (8, 16, 1, 1),
            "blocks.1.0.conv.0.weight": (48, 8, 1, 1),
            "blocks.3.3.conv.4.weight": (192,),
            "blocks.6.0.conv.7.running_var": (160,),
            "conv2.0.weight": (1280, 160, 1, 1),
            "classifier.0.weight": (100, 1280),
        },
        ("blocks.7.0.conv.0.weight", "blocks.6.1.conv.0.weight", "classifier.weight"),
    ),
    "ShuffleV1": (
        {
            "conv1.weight": (24, 3, 1, 1),
            "layer1.0.conv1.weight": (54, 24, 1, 1),  # ungrouped after the 24-channel stem
            "layer1.0.conv2.weight": (54, 1, 3, 3),
            "layer1.0.conv3.weight": (216, 18, 1, 1),
            "layer1.1.conv1.weight": (60, 80, 1, 1),
            "layer2.0.conv3.weight": (240, 20, 1, 1),
            "layer2.7.bn3.weight": (480,),
            "layer3.3.bn3.running_mean": (960,),
            "linear.weight": (100, 960),
        },
        ("layer1.4.conv1.weight", "layer1.0.shortcut.0.weight", "fc.weight"),
    ),
    "ShuffleV2": (
        {
            "conv1.weight": (24, 3, 1, 1),
            "layer1.0.conv1.weight": (24, 1, 3, 3),
            "layer1.0.conv2.weight": (58, 24, 1, 1),
            "layer1.0.conv3.weight": (58, 24, 1, 1),
            "layer1.0.conv4.weight": (58, 1, 3, 3),
            "layer1.0.bn5.running_mean": (58,),
            "layer1.3.conv1.weight": (58, 58, 1, 1),
            "layer2.7.conv2.weight": (116, 1, 3, 3),
            "layer3.0.conv2.weight": (232, 232, 1, 1),
            "conv2.weight": (1024, 464, 1, 1),
            "bn2.running_var": (1024,),
            "linear.weight": (100, 1024),
        },
        ("layer1.4.conv1.weight", "layer2.8.conv1.weight", "layer1.1.conv4.weight"),
    ),
}


@pytest.mark.parametrize("arch", sorted(LAYOUT))
def test_state_dict_layout_matches_public_zoo(arch):
    present, absent = LAYOUT[arch]
    state = build(arch).state_dict()
    for key, shape in present.items():
        assert key in state, f"{arch}: missing {key}"
        assert tuple(state[key].shape) == shape, f"{arch}: {key} has {tuple(state[key].shape)}"
    for key in absent:
        assert key not in state, f"{arch}: unexpected {key}"


@pytest.mark.parametrize(
    "arch, keys",
    # conv + 5 BN entries per conv-bn pair + classifier; counted from the public definitions.
    [
        ("resnet20", 21 + 21 * 5 + 2),  # 19 convs + 2 downsample convs, each followed by a BN
        ("wrn_16_2", 13 + 3 + 12 * 5 + 5 + 2),  # stem + 12 block convs + 3 shortcut convs; 12 BNs + final BN
        ("vgg8", 5 * 2 + 5 * 5 + 2),  # 5 convs with bias, 5 BNs
    ],
)
def test_state_dict_key_count(arch, keys):
    assert len(build(arch).state_dict()) == keys


# ---- behaviour that pins layer order, strides and pooling ----

def _output_shapes(model, names):
    shapes = {}
    mods = dict(model.named_modules())
    hooks = [mods[n].register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape))) for n in names]
    with torch.no_grad():
        model.eval()(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    return shapes


@pytest.mark.parametrize(
    "arch, expected",
    [
        ("resnet8", {"layer1": (2, 16, 32, 32), "layer2": (2, 32, 16, 16), "layer3": (2, 64, 8, 8)}),
        ("wrn_16_2", {"block1": (2, 32, 32, 32), "block3": (2, 128, 8, 8)}),
        ("vgg8", {"block0": (2, 64, 32, 32), "block2": (2, 256, 8, 8), "block3": (2, 512, 4, 4),
                  "block4": (2, 512, 4, 4)}),  # no pool before block4 at 32 pixels
        ("MobileNetV2", {"conv1": (2, 16, 16, 16), "blocks.2": (2, 16, 8, 8), "blocks.4": (2, 48, 4, 4),
                         "conv2": (2, 1280, 2, 2)}),
        ("ShuffleV1", {"layer1": (2, 240, 16, 16), "layer2": (2, 480, 8, 8), "layer3": (2, 960, 4, 4)}),
        ("ShuffleV2", {"layer1": (2, 116, 16, 16), "layer3": (2, 464, 4, 4), "conv2": (2, 1024, 4, 4)}),
    ],
)
def test_feature_map_sizes(arch, expected):
    torch.manual_seed(0)
    assert _output_shapes(build(arch), list(expected)) == expected


def test_resnet50_stage_sizes():
    torch.manual_seed(0)
    shapes = _output_shapes(build("ResNet50"), ["conv1", "layer1", "layer2", "layer3", "layer4"])
    assert shapes == {"conv1": (2, 64, 32, 32), "layer1": (2, 256, 32, 32), "layer2": (2, 512, 16, 16),
                      "layer3": (2, 1024, 8, 8), "layer4": (2, 2048, 4, 4)}


def test_channel_shuffle_order():
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def _zero_(*modules):
    for m in modules:
        for p in m.parameters():
            torch.nn.init.zeros_(p)


def test_resnet_block_relu_after_identity_sum():
    # With the residual branch silenced (last BN zeroed), a post-activation block is relu(x).
    block = build("resnet8").layer1[0].eval()
    _zero_(block.bn2)
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(block(x), x.clamp(min=0))


def test_wrn_projection_shortcut_sees_preactivated_input():
    # Branch silenced; the 1x1 shortcut of a widening block reads relu(bn1(x)) not x.
    block = build("wrn_40_2").block1.layer[0].eval()
    _zero_(block.conv2)
    torch.nn.init.ones_(block.convShortcut.weight)
    x = torch.randn(2, 16, 4, 4)
    expected = (x.clamp(min=0) / math.sqrt(1 + block.bn1.eps)).sum(1, keepdim=True).expand(2, 32, 4, 4)
    torch.testing.assert_close(block(x), expected)
    # An equal-width block adds the raw input (no final relu).
    same = build("wrn_40_2").block1.layer[1].eval()
    _zero_(same.conv2)
    y = torch.randn(2, 32, 4, 4)
    assert torch.equal(same(y), y)


def test_mobilenetv2_residual_only_when_shapes_match():
    model = build("MobileNetV2").eval()
    widening, repeat = model.blocks[1][0], model.blocks[1][1]  # 8 -> 12, then 12 -> 12
    _zero_(widening.conv[7], repeat.conv[7])
    assert torch.equal(widening(torch.randn(2, 8, 4, 4)), torch.zeros(2, 12, 4, 4))
    x = torch.randn(2, 12, 4, 4)
    assert torch.equal(repeat(x), x)


def test_shufflev1_down_unit_concats_padded_average_pool():
    unit = build("ShuffleV1").layer1[0].eval()
    _zero_(unit.bn3)
    out = unit(torch.ones(1, 24, 4, 4))
    assert out.shape == (1, 240, 2, 2)
    assert torch.equal(out[:, :216], torch.zeros(1, 216, 2, 2))
    # 3x3 windows, stride 2, zero padding counted in the mean: 4/9 at the corner, 6/9 on the edge.
    corner_and_edges = torch.tensor([[4 / 9, 6 / 9], [6 / 9, 1.0]])
    torch.testing.assert_close(out[0, 216:], corner_and_edges.expand(24, 2, 2))


def test_shufflev2_basic_unit_passes_first_half_through():
    unit = build("ShuffleV2").layer1[1].eval()
    x = torch.randn(2, 116, 4, 4)
    out = unit(x)
    assert torch.equal(out[:, 0::2], x[:, :58])  # shuffle with 2 groups interleaves the halves
    assert (out[:, 1::2] >= 0).all()  # the transformed half ends with a relu


# ---- initialisation as in the public models ----

def test_initialisation_follows_public_models():
    torch.manual_seed(0)
    r = build("resnet32x4")
    w = r.layer3[1].conv1.weight  # He normal, fan_out = 9 * 256
    assert abs(w.std().item() - math.sqrt(2 / (9 * 256))) < 0.02 * math.sqrt(2 / (9 * 256))
    v = build("vgg13")
    assert abs(v.classifier.weight.std().item() - 0.01) < 0.001
    assert torch.equal(v.classifier.bias, torch.zeros(100))
    assert torch.equal(v.block2[0].bias, torch.zeros(256))
    assert torch.equal(build("wrn_16_2").fc.bias, torch.zeros(100))
    m = build("MobileNetV2")
    assert abs(m.classifier[0].weight.std().item() - 0.01) < 0.001
    assert torch.equal(m.classifier[0].bias, torch.zeros(100))
    w = build("ResNet50").layer4[0].conv2.weight  # He normal, fan_out = 9 * 512
    assert abs(w.std().item() - math.sqrt(2 / (9 * 512))) < 0.02 * math.sqrt(2 / (9 * 512))
    # ShuffleNets keep torch's defaults: kaiming-uniform(a=sqrt(5)) -> std = 1 / sqrt(3 * fan_in).
    s = build("ShuffleV2")
    assert abs(s.conv2.weight.std().item() - 1 / math.sqrt(3 * 464)) < 0.02 / math.sqrt(3 * 464)
    assert (s.linear.bias.abs() > 0).any()


def test_same_seed_same_weights():
    torch.manual_seed(3)
    a = build("wrn_16_2").state_dict()
    torch.manual_seed(3)
    b = build("wrn_16_2").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- checkpoint import ----

def _trained_like(arch="resnet8"):
    """A model whose weights and BN statistics differ from a fresh build."""
    torch.manual_seed(1)
    model = build(arch).train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32) * 2 + 0.5)
    return model.eval()


def test_checkpoint_round_trip_public_format(tmp_path):
    source = _trained_like()
    path = tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir()
    torch.save({"epoch": 240, "model": source.state_dict(), "best_acc": torch.tensor(70.3),
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.05}]}}, path)
    torch.manual_seed(99)  # a different fresh init inside the loader
    loaded = load_public_checkpoint(path, "resnet8")
    assert not loaded.training
    ref, got = source.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


def test_checkpoint_bare_state_dict_and_dataparallel_prefix(tmp_path):
    source = _trained_like()
    bare = tmp_path / "bare.pth"
    torch.save(source.state_dict(), bare)
    prefixed = tmp_path / "prefixed.pth"
    torch.save({"model": {"module." + k: v for k, v in source.state_dict().items()}}, prefixed)
    for path in (bare, prefixed):
        got = load_public_checkpoint(path, "resnet8").state_dict()
        assert torch.equal(got["layer3.0.bn2.running_var"], source.layer3[0].bn2.running_var)


def test_checkpoint_with_pickled_extras_and_old_bn_layout(tmp_path):
    source = _trained_like()
    # Old torch (< 0.4.1) saved no BN step counters; some trainers pickle their argparse options.
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "ckpt.pth"
    torch.save({"model": state, "opt": argparse.Namespace(model="resnet8")}, path)
    got = load_public_checkpoint(path, "resnet8").state_dict()
    assert torch.equal(got["fc.weight"], source.fc.weight)


def test_checkpoint_of_wrong_arch_is_rejected_clearly(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"model": _trained_like("resnet8").state_dict(), "epoch": 240}, path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_public_checkpoint(path, "resnet14")
    msg = str(err.value)
    assert "'resnet14'" in msg and "missing keys" in msg and "layer1.1.conv1.weight" in msg
    with pytest.raises(CheckpointMismatchError) as err:
        load_public_checkpoint(path, "wrn_16_2")
    msg = str(err.value)
    assert "unexpected keys" in msg and "layer1.0.bn1.weight" in msg and "block1.layer.0.bn1.weight" in msg
    assert "more)" in msg  # long key lists are cut, with a count
    assert "fc.weight: checkpoint (100, 64) vs model (100, 128)" in msg


def test_checkpoint_with_wrong_class_count_is_rejected(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"model": _trained_like().state_dict()}, path)
    with pytest.raises(CheckpointMismatchError, match=r"fc\.weight: checkpoint \(100, 64\) vs model \(10, 64\)"):
        load_public_checkpoint(path, "resnet8", num_classes=10)


def test_checkpoint_not_a_state_dict(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointMismatchError, match="neither"):
        load_public_checkpoint(path, "resnet8")
    with pytest.raises(FileNotFoundError):
        load_public_checkpoint(tmp_path / "absent.pth", "resnet8")
