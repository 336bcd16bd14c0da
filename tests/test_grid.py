"""Settings resolved once, at DAG construction: config, tables, precedence, specs (no Snakemake here)."""
import copy
import json
from pathlib import Path

import pytest
import yaml

from sortkd.experiment.config import TEACHER_ARCHIVE_URL, ConfigError, load_config, settle
from sortkd.experiment.grid import Grid, GridError, ImageNetGrid, StudentRun, load_pairs_table
from sortkd.experiment.specs import ImageNetRunSpec, RunSpec
from sortkd.losses import METHODS
from tests.fake_imagenet import make_fake_imagenet

REPO = Path(__file__).resolve().parents[1]
# Every distillation method the registry holds (the grid may run any of them).
STUDENT_METHODS = sorted(m for m in METHODS if m != "vanilla")


def raw(name="config.yaml") -> dict:
    return yaml.safe_load((REPO / name).read_text())


def grid(**changes) -> Grid:
    config = raw()
    config.update(changes)
    return Grid(settle(config), root=REPO)


def write_table(tmp_path, table: dict, name="pairs.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(table))
    return str(path)


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    return make_fake_imagenet(tmp_path_factory.mktemp("imagenet"), num_classes=3, train_per_class=1,
                              val_per_class=1)


def imagenet_grid(root, **section) -> ImageNetGrid:
    config = raw()
    config["imagenet"] = {"enabled": True, "root": str(root), **section}
    return ImageNetGrid(settle(config), "results/x", root=REPO)


# --- precedence: registry defaults < pairs table < config methods ------------------------------

def test_config_methods_beat_the_pairs_table_for_every_pair():
    plain = grid()
    table = plain.table
    # Without config values the table's per-pair T_b applies (2 or 3), over the registry's 2.0.
    assert {p: plain.student_spec(StudentRun(p, "lskd", "sort", 0)).hparams["temperature"]
            for p in plain.pairs} == {p: table[p]["hparams"]["lskd"]["temperature"] for p in plain.pairs}
    assert {table[p]["hparams"]["lskd"]["temperature"] for p in plain.pairs} == {2, 3}

    override = grid(methods={"kd": {}, "lskd": {"temperature": 3}})
    runs = [r for r in override.student_runs() if r.method == "lskd"]
    assert len(runs) == len(plain.pairs) * 2 * 3
    for run in runs:
        hp = override.student_spec(run).hparams
        assert hp["temperature"] == 3
        # A key the config leaves alone still comes from the table (w = 1 only for ResNet50).
        assert hp["kd_weight"] == table[run.pair]["hparams"]["lskd"]["kd_weight"]
        assert hp["ce_weight"] == METHODS["lskd"].defaults["ce_weight"]


def test_command_line_config_strings_reach_the_specs_as_numbers():
    # What `--config 'methods={lskd: {temperature: 3}}'` merges into config.yaml's methods.
    config = raw()
    config["methods"]["lskd"] = {"temperature": "3", "kd_weight": "1e-1"}
    config["seeds"] = ["0", "1"]
    g = Grid(settle(config), root=REPO)
    hp = g.student_spec(StudentRun("vgg13-vgg8", "lskd", "base", 1)).hparams
    assert hp["temperature"] == 3 and hp["kd_weight"] == 0.1 and g.seeds == [0, 1]
    assert set(g.methods) == {"kd", "dkd", "ctkd", "lskd"}


def test_a_method_list_selects_methods_without_overrides():
    g = grid(methods=["dkd", "kd"])
    assert g.methods == ["dkd", "kd"]
    assert g.student_spec(StudentRun("vgg13-vgg8", "dkd", "sort", 2)).hparams["beta"] == 6


def test_every_spec_carries_exactly_its_methods_hyper_parameters():
    g = grid(methods=STUDENT_METHODS)
    assert len(g.student_runs()) == len(g.pairs) * len(STUDENT_METHODS) * 2 * 3
    for run in g.student_runs():
        spec = g.student_spec(run)
        assert set(spec.hparams) == set(METHODS[run.method].defaults), run.path
        assert RunSpec.from_json(spec.to_json()) == spec


def test_method_pairs_restricts_a_method_to_some_pairs_only():
    g = grid(methods={"kd": {}, "mlkd": {}}, method_pairs={"mlkd": ["resnet32x4-resnet8x4"]})
    runs = g.student_runs()
    mlkd_pairs = {r.pair for r in runs if r.method == "mlkd"}
    assert mlkd_pairs == {"resnet32x4-resnet8x4"}
    assert {r.pair for r in runs if r.method == "kd"} == set(g.pairs) and len(g.pairs) > 1
    assert len(runs) == (len(g.pairs) + 1) * 2 * 3
    # MLKD's recipe from the pairs table: 240 epochs, LR 0.025 on this pair.
    spec = g.student_spec(StudentRun("resnet32x4-resnet8x4", "mlkd", "sort", 0))
    assert (spec.epochs, spec.lr) == (240, 0.025)


@pytest.mark.parametrize("method_pairs, message", [
    ({"mlkdd": ["vgg13-vgg8"]}, r"^config: method_pairs: 'mlkdd' is not allowed; allowed: .*mlkd, mlkd_ls"),
    ({"mlkd": ["vgg13-vgg9"]}, r"^config: method_pairs.mlkd: 'vgg13-vgg9' is not allowed; allowed: .*vgg13-vgg8"),
])
def test_method_pairs_names_only_methods_and_pairs_of_the_grid(method_pairs, message):
    with pytest.raises(GridError, match=message):
        grid(methods={"kd": {}, "mlkd": {}}, method_pairs=method_pairs)


def test_method_pairs_of_a_method_outside_the_grid_is_unused():
    g = grid(methods=["kd"], method_pairs={"mlkd": ["vgg13-vgg8"]})
    assert {r.method for r in g.student_runs()} == {"kd"} and len(g.student_runs()) == len(g.pairs) * 2 * 3


def test_the_demo_runs_mlkd_on_one_pair():
    g = Grid(settle(raw("config.demo.yaml")), root=REPO)
    mlkd = [r for r in g.student_runs() if r.method == "mlkd"]
    assert {r.pair for r in mlkd} == {"resnet14-resnet8"} and len(mlkd) == 4
    assert g.teacher_logits("resnet14-resnet8") == "cache"   # weak from the cache, strong online


# --- the pairs table: recipes, schema, entries the grid does not use ----------------------------

def small_table(**row_extra) -> dict:
    return {"resnet14-resnet8": {"teacher": "resnet14", "student": "resnet8", "lr": 0.05, **row_extra},
            "resnet20-resnet8": {"teacher": "resnet20", "student": "resnet8", "lr": 0.01}}


def demo_grid(tmp_path, table: dict, **changes) -> Grid:
    config = raw("config.demo.yaml")
    config["pairs_table"] = write_table(tmp_path, table)
    config.update(changes)
    return Grid(settle(config), root=REPO)


def test_a_pairs_recipe_changes_one_method_on_one_pair(tmp_path):
    table = small_table(recipes={"kd": {"lr": 0.025, "epochs": 9}})
    g = demo_grid(tmp_path, table, methods={"kd": {}, "dkd": {}})
    recipe = raw("config.demo.yaml")["recipe"]
    kd = g.student_spec(StudentRun("resnet14-resnet8", "kd", "base", 0))
    assert (kd.lr, kd.epochs) == (0.025, 9)
    # The LR steps stay at the config's milestones whatever the length (MLKD's rule).
    assert kd.lr_milestones == tuple(recipe["lr_milestones"]) and kd.batch_size == recipe["batch_size"]
    dkd = g.student_spec(StudentRun("resnet14-resnet8", "dkd", "base", 0))
    assert (dkd.lr, dkd.epochs) == (0.05, recipe["epochs"])
    other = g.student_spec(StudentRun("resnet20-resnet8", "kd", "base", 0))
    assert (other.lr, other.epochs) == (0.01, recipe["epochs"])


def test_table_entries_for_methods_outside_the_grid_or_registry_are_tolerated(tmp_path):
    assert "not_registered_yet" not in METHODS
    table = small_table(hparams={"not_registered_yet": {"anything": 1}, "lskd": {"temperature": 5}},
                        recipes={"not_registered_yet": {"lr": 0.1, "epochs": 960}})
    g = demo_grid(tmp_path, table, methods={"kd": {}})
    assert g.methods == ["kd"] and len(g.student_runs()) == 2 * 2 * 2
    with pytest.raises(GridError) as error:
        demo_grid(tmp_path, table, methods={"not_registered_yet": {}})
    assert str(error.value) == (f"config: methods: 'not_registered_yet' is not allowed; "
                                f"allowed: {', '.join(STUDENT_METHODS)}")


@pytest.mark.parametrize("row_extra, message", [
    ({"recipes": {"kd": {"lr_decay": 2}}},
     "resnet14-resnet8.recipes.kd: Additional properties are not allowed ('lr_decay' was unexpected)"),
    ({"hparams": {"kd": {"temperature": "four"}}},
     "resnet14-resnet8.hparams.kd.temperature: 'four' is not of type 'number'"),
    ({"hparams": {"kd": {"tau": 4}}},
     "resnet14-resnet8.hparams.kd: method 'kd' has no hyper-parameter 'tau'; "
     "allowed: ce_weight, kd_weight, temperature"),
    ({"teacher_logits": "disk"}, "resnet14-resnet8.teacher_logits: 'disk' is not one of ['cache', 'online']"),
])
def test_a_bad_pairs_table_is_one_line_naming_the_key(tmp_path, row_extra, message):
    path = write_table(tmp_path, small_table(**row_extra))
    with pytest.raises(GridError) as error:
        load_pairs_table(path)
    assert str(error.value) == f"{path}: {message}"
    assert "\n" not in str(error.value)


def test_a_pair_must_be_named_teacher_student(tmp_path):
    path = write_table(tmp_path, {"resnet14-resnet9": {"teacher": "resnet14", "student": "resnet8", "lr": 0.05}})
    with pytest.raises(GridError, match="pair 'resnet14-resnet9' must be named 'resnet14-resnet8'"):
        load_pairs_table(path)
    path = write_table(tmp_path, {"resnet14-resnet8": {"teacher": "resnet14", "student": "resnet8"}})
    with pytest.raises(GridError, match="resnet14-resnet8: 'lr' is a required property"):
        load_pairs_table(path)


def test_the_shipped_tables_pass_their_schema():
    for name in ("pairs_cifar100.yaml", "pairs_demo.yaml"):
        assert load_pairs_table(REPO / "workflow" / "tables" / name)


# --- config: schema, defaults, derived settings ---------------------------------------------------

def test_config_errors_are_one_line_naming_the_key():
    config = raw()
    config["compute"]["device"] = "gpu"
    with pytest.raises(ConfigError) as error:
        settle(config)
    assert str(error.value) == "config: compute.device: 'gpu' is not one of ['cuda', 'cpu']"
    config = raw()
    config["logging"] = {"tensorboard": "maybe"}
    with pytest.raises(ConfigError, match=r"^config: logging.tensorboard: 'maybe' is not of type 'boolean'$"):
        settle(config)


def test_defaults_fill_what_a_config_leaves_out():
    config = load_config(REPO / "config.demo.yaml")
    assert config["logging"] == {"tensorboard": False}
    assert config["teacher_archive"] == {"url": None, "path": "data/cifar_teachers.tar", "md5": None}
    assert config["imagenet"]["enabled"] is False
    assert set(config["imagenet"]["methods"]) == {"kd", "dkd", "ctkd", "lskd"}
    assert Grid(config, root=REPO).teacher_archive_url == TEACHER_ARCHIVE_URL


@pytest.mark.parametrize("precision, configured, expected", [
    ("exact", None, "float32"), ("bf16", None, "float16"), ("exact", "float16", "float16"),
    ("bf16", "float32", "float32")])
def test_cache_dtype_follows_precision_unless_set(precision, configured, expected):
    config = raw()
    config["compute"]["precision"] = precision
    config["cache_dtype"] = configured
    assert Grid(settle(config), root=REPO).cache_dtype == expected


def test_tensorboard_reaches_every_spec_and_leaves_the_checkpoint_key_alone():
    config = raw("config.demo.yaml")
    off = Grid(settle(copy.deepcopy(config)), root=REPO)
    config["logging"] = {"tensorboard": True}
    on = Grid(settle(config), root=REPO)
    for run in on.student_runs():
        assert on.student_spec(run).tensorboard and not off.student_spec(run).tensorboard
        assert on.student_spec(run).hash == off.student_spec(run).hash
    for arch in on.teachers_by_source("train"):
        assert on.teacher_spec(arch).tensorboard
        assert on.teacher_spec(arch).hash == off.teacher_spec(arch).hash


# --- specs -----------------------------------------------------------------------------------------

def student(**changes) -> dict:
    spec = {"kind": "student", "name": "t/s", "data": "d.npz", "arch": "resnet8", "method": "kd",
            "hparams": dict(METHODS["kd"].defaults), "teacher_arch": "resnet14", "teacher_dir": "t"}
    spec.update(changes)
    return spec


def test_a_spec_needs_exactly_its_methods_hyper_parameters():
    RunSpec.from_dict(student())
    with pytest.raises(ValueError) as error:
        RunSpec.from_dict(student(hparams={"temperature": 4.0}))
    assert str(error.value).startswith("run t/s: hparams lack 'ce_weight', 'kd_weight' of method 'kd'")
    with pytest.raises(ValueError, match="method 'kd' has no hyper-parameter 'beta'; allowed: ce_weight"):
        RunSpec.from_dict(student(hparams={**METHODS["kd"].defaults, "beta": 1.0}))
    with pytest.raises(ValueError, match=r"hparams.temperature='4' is not a number"):
        RunSpec.from_dict(student(hparams={**METHODS["kd"].defaults, "temperature": "4"}))
    with pytest.raises(ValueError, match="method='kdd' is not allowed; allowed: "):
        RunSpec.from_dict(student(method="kdd"))


def test_bf16_is_allowed_on_the_cpu_and_gpu_decoding_is_not(imagenet_root):
    assert RunSpec.from_dict(student(precision="bf16")).device == "cpu"
    spec = imagenet_grid(imagenet_root).specs["resnet34-resnet18/kd/base/seed0"].to_dict()
    cpu = ImageNetRunSpec.from_dict({**spec, "device": "cpu", "precision": "bf16"})
    assert cpu.precision == "bf16" and cpu.sync_bn is False
    with pytest.raises(ValueError, match="decode 'gpu' \\(nvJPEG\\) is one of the CUDA paths"):
        ImageNetRunSpec.from_dict({**spec, "device": "cpu", "decode": "gpu"})


# --- ImageNet: the same resolution, from imagenet.yaml ---------------------------------------------

def test_imagenet_specs_are_complete_with_config_overrides_on_top(imagenet_root):
    g = imagenet_grid(imagenet_root, methods={"kd": {"temperature": 2}, "lskd": None})
    assert [r.method for r in g.runs()].count("kd") == 2 * 2
    for run in g.runs():
        spec = g.spec(run)
        assert set(spec.hparams) == set(METHODS[run.method].defaults)
        assert spec.sync_bn is False and spec.experiment == "imagenet"
        assert json.loads(spec.to_json()) == spec.to_dict()
    kd = g.spec(StudentRun("resnet34-resnet18", "kd", "base", 0)).hparams
    assert kd == {"temperature": 2, "ce_weight": 0.5, "kd_weight": 0.5}
    assert g.spec(StudentRun("resnet50-mobilenetv1", "lskd", "sort", 0)).hparams["ce_weight"] == 1.0


def test_imagenet_methods_must_be_in_the_table(imagenet_root):
    with pytest.raises(GridError, match="config: imagenet.methods: 'dkd_ls' is not allowed; allowed: "):
        imagenet_grid(imagenet_root, methods=["dkd_ls"])
    # In the table, but the ImageNet trainer renders no strong view: refused when the DAG is built.
    with pytest.raises(GridError, match=r"^config: imagenet.methods: 'mlkd' needs the view\(s\) strong, which the "
                                        r"ImageNet trainer does not render; it runs on CIFAR-100 only$"):
        imagenet_grid(imagenet_root, methods=["kd", "mlkd"])


def test_a_bad_imagenet_table_is_one_line(tmp_path, imagenet_root):
    table = yaml.safe_load((REPO / "workflow" / "tables" / "imagenet.yaml").read_text())
    table["recipe"]["epoch"] = 100
    path = write_table(tmp_path, table, "imagenet.yaml")
    with pytest.raises(GridError) as error:
        imagenet_grid(imagenet_root, table=path)
    assert str(error.value) == (f"{path}: recipe: Additional properties are not allowed "
                                f"('epoch' was unexpected)")
