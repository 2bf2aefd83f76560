"""Tests for mpcs.config: presets, --set overrides, validation and differences."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from mpcs.config import (
    PRETRAIN_DEFAULTS,
    differences,
    dump,
    load_preset,
    merge,
    parse_override,
    preset_names,
    resolve,
    validate_pretrain,
    yaml_load,
)
from mpcs.core.errors import ConfigError

PAPER = [f"mpcs-{s}-{e}" for s in ("fp", "op", "rp") for e in ("resnet50", "effnetb2")]
STRATEGY = {"fp": "fixed", "op": "ordered", "rp": "random"}


def test_shipped_presets_include_the_paper_settings() -> None:
    names = preset_names()
    assert set(PAPER) <= set(names)
    assert "cpu-small" in names
    assert names == sorted(names)


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_resolves_and_validates(name: str) -> None:
    cfg = resolve(preset=name)
    validate_pretrain(cfg)
    assert cfg["name"] == name
    assert cfg["description"]
    # A preset only sets known keys (merge would raise otherwise) and survives a dump/load.
    assert yaml_load(dump(cfg)) == cfg


@pytest.mark.parametrize("strategy", ["fp", "op", "rp"])
def test_resnet50_presets_hold_the_paper_numbers(strategy: str) -> None:
    cfg = resolve(preset=f"mpcs-{strategy}-resnet50")
    assert cfg["model"]["encoder"] == "resnet50_dilated"
    assert cfg["model"]["weights"] == "imagenet"
    assert cfg["model"]["head_hidden"] == [1024] and cfg["model"]["head_out"] == 128
    assert cfg["optim"]["name"] == "lars"
    assert cfg["train"]["batch_size"] == 1024
    assert cfg["data"]["input_size"] == 224
    assert cfg["loss"]["temperature"] == 0.01
    assert cfg["train"]["epochs"] == 1000
    assert cfg["pairs"]["strategy"] == STRATEGY[strategy]
    # Barlow Twins-style LARS (method notes).
    assert cfg["optim"]["lr"] == 0.2 and cfg["optim"]["lr_biases"] == 0.0048
    assert cfg["optim"]["weight_decay"] == 1e-6 and cfg["optim"]["lars_eta"] == 0.001
    assert cfg["optim"]["scale_lr_with_batch"] is True
    assert cfg["schedule"]["name"] == "cosine"
    assert 0 < cfg["schedule"]["warmup_epochs"] < cfg["train"]["epochs"]


@pytest.mark.parametrize("strategy", ["fp", "op", "rp"])
def test_effnetb2_presets_hold_the_paper_numbers(strategy: str) -> None:
    cfg = resolve(preset=f"mpcs-{strategy}-effnetb2")
    assert cfg["model"]["encoder"] == "efficientnet_b2"
    assert cfg["model"]["weights"] == "imagenet"
    assert cfg["optim"]["name"] == "adam"
    assert cfg["optim"]["lr"] == 1e-5
    assert cfg["train"]["batch_size"] == 128
    assert cfg["data"]["input_size"] == 341
    assert cfg["model"]["head_hidden"] == [2048, 1204] and cfg["model"]["head_out"] == 128
    assert cfg["loss"]["temperature"] == 0.01
    assert cfg["train"]["epochs"] == 1000
    assert cfg["pairs"]["strategy"] == STRATEGY[strategy]


def test_presets_of_one_encoder_differ_only_in_strategy_and_names() -> None:
    for encoder in ("resnet50", "effnetb2"):
        cfgs = [resolve(preset=f"mpcs-{s}-{encoder}") for s in ("fp", "op", "rp")]
        for other in cfgs[1:]:
            keys = {d.split(":")[0] for d in differences(cfgs[0], other)}
            assert keys == {"name", "description", "pairs.strategy"}


def test_defaults_validate_and_are_not_mutated() -> None:
    before = copy.deepcopy(PRETRAIN_DEFAULTS)
    cfg = resolve(overrides=["model.head_hidden=[8]", "train.epochs=3"])
    cfg["model"]["head_hidden"].append(5)
    resolve(preset="cpu-small")
    assert PRETRAIN_DEFAULTS == before
    validate_pretrain(copy.deepcopy(PRETRAIN_DEFAULTS))


def test_unknown_preset_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError) as info:
        load_preset("mpcs-xp-resnet50")
    assert "mpcs-op-resnet50" in str(info.value)
    with pytest.raises(ConfigError):
        resolve(preset="nope")


# --------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    ("text", "key", "value", "kind"),
    [("train.epochs=5", ("train", "epochs"), 5, int),
     ("loss.temperature=0.5", ("loss", "temperature"), 0.5, float),
     ("optim.lr=1e-3", ("optim", "lr"), 1e-3, float),      # YAML 1.1 would give a string
     ("optim.lr=2E-4", ("optim", "lr"), 2e-4, float),
     ("optim.lr=.001", ("optim", "lr"), 1e-3, float),
     ("optim.lr=3", ("optim", "lr"), 3, int),               # an int is accepted for a float
     ("model.head_hidden=[256, 64]", ("model", "head_hidden"), [256, 64], list),
     ("model.head_hidden=[]", ("model", "head_hidden"), [], list),
     ("model.channels_last=false", ("model", "channels_last"), False, bool),
     ("data.use_cache=true", ("data", "use_cache"), True, bool),
     ("data.cache_dir=null", ("data", "cache_dir"), None, type(None)),
     ("data.cache_dir=", ("data", "cache_dir"), None, type(None)),
     ("data.cache_dir=/tmp/x=y", ("data", "cache_dir"), "/tmp/x=y", str),
     ("optim.lr_biases=0.0048", ("optim", "lr_biases"), 0.0048, float),
     ("data.patients=[14-22549AB, 14-13412]", ("data", "patients"),
      ["14-22549AB", "14-13412"], list),
     ("seed=7", ("seed",), 7, int),
     ("pairs.strategy=rp", ("pairs", "strategy"), "rp", str)],
)
def test_overrides_parse_types(text: str, key: tuple[str, ...], value: object,
                               kind: type) -> None:
    cfg = resolve(overrides=[text])
    node = cfg
    for part in key:
        node = node[part]
    assert node == value and type(node) is kind


def test_parse_override_builds_a_nested_mapping() -> None:
    assert parse_override("a.b.c=3") == {"a": {"b": {"c": 3}}}
    assert parse_override(" train.epochs =4") == {"train": {"epochs": 4}}
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.epochs")


def test_later_overrides_win_and_apply_over_a_preset() -> None:
    cfg = resolve(preset="mpcs-op-resnet50",
                  overrides=["train.epochs=10", "train.epochs=20", "pairs.strategy=fixed"])
    assert cfg["train"]["epochs"] == 20
    assert cfg["pairs"]["strategy"] == "fixed"
    assert cfg["optim"]["name"] == "lars"  # the rest of the preset is kept
    assert cfg["name"] == "mpcs-op-resnet50"


@pytest.mark.parametrize(
    ("text", "suggestion"),
    [("train.epoch=5", "epochs"), ("trian.epochs=5", "train"),
     ("optim.weight_decey=0.1", "weight_decay"), ("loss.temprature=0.1", "temperature"),
     ("model.head_hiden=[3]", "head_hidden")],
)
def test_unknown_key_suggests_the_closest(text: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match="unknown config key") as info:
        resolve(overrides=[text])
    assert f"did you mean {suggestion!r}" in str(info.value)


def test_unknown_key_far_from_anything_has_no_suggestion() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'train.zzzzzz'") as info:
        resolve(overrides=["train.zzzzzz=1"])
    assert "did you mean" not in str(info.value)


def test_setting_a_section_to_a_scalar_is_an_error() -> None:
    with pytest.raises(ConfigError, match="mapping"):
        resolve(overrides=["train=5"])


@pytest.mark.parametrize(
    "text",
    ["train.epochs=2.5", "train.epochs=five", "train.epochs=true", "train.batch_size=[4]",
     "loss.temperature=hot", "loss.temperature=true", "model.head_hidden=256",
     "model.channels_last=1", "model.channels_last=yes please", "data.input_size=224.0",
     "data.cache_dir=[a]", "optim.lr_biases=fast", "data.patients=abc", "seed=null",
     "train.epochs=", "model.encoder=3"],
)
def test_wrong_type_is_an_error(text: str) -> None:
    with pytest.raises(ConfigError, match=text.split("=")[0]):
        resolve(overrides=[text])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [(["loss.temperature=0"], "temperature"), (["loss.temperature=-0.1"], "temperature"),
     (["train.epochs=0"], "epochs"), (["train.batch_size=1"], "batch_size"),
     (["train.epochs=5", "schedule.warmup_epochs=6"],
      r"warmup_epochs must be in \[0, train.epochs=5\], got 6; .*warmup_epochs=2"),
     (["schedule.warmup_epochs=-1"], "warmup_epochs"),
     (["optim.name=rmsprop"], "optim.name"), (["optim.name=LARS"], "optim.name"),
     (["pairs.strategy=diagonal"], "pairs.strategy"), (["schedule.name=step"], "schedule"),
     (["train.amp=fp8"], "train.amp"), (["optim.lr=0"], "optim.lr"),
     (["optim.weight_decay=-1e-6"], "weight_decay"),
     (["schedule.final_lr_fraction=1.5"], "final_lr_fraction"),
     (["data.input_size=8"], "input_size"), (["model.head_out=0"], "head_out"),
     (["model.head_hidden=[0]"], "head_hidden"), (["model.head_hidden=[1.5]"], "head_hidden"),
     (["model.head_hidden=[true]"], "head_hidden"),  # a bool is not a layer width
     (["train.checkpoint_every=0"], "checkpoint_every"),
     (["augment.brightness=1.0"], "augment.brightness"),
     (["augment.translate=0.5"], "augment.translate")],
)
def test_impossible_values_are_errors(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve(overrides=overrides)


def test_boundary_values_are_accepted() -> None:
    cfg = resolve(overrides=["train.epochs=1", "train.batch_size=2", "schedule.warmup_epochs=1",
                             "schedule.final_lr_fraction=1", "data.input_size=16",
                             "loss.temperature=1e-4"])
    assert cfg["loss"]["temperature"] == 1e-4


# --------------------------------------------------------------------------- config files


def test_config_file_is_merged_and_validated(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("train: {epochs: 7}\noptim: {lr: 5e-4}\n")
    cfg = resolve(config_file=good, overrides=["train.batch_size=16"])
    assert cfg["train"]["epochs"] == 7 and cfg["optim"]["lr"] == 5e-4
    assert cfg["train"]["batch_size"] == 16
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epoch: 7}\n")
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        resolve(config_file=bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        resolve(config_file=listing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: {epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve(config_file=broken)
    with pytest.raises(ConfigError, match="not found"):
        resolve(config_file=tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not both"):
        resolve(preset="cpu-small", config_file=good)


# --------------------------------------------------------------------------- differences


def test_differences_lists_changed_dotted_keys() -> None:
    base = resolve()
    changed = resolve(overrides=["train.epochs=5", "model.head_hidden=[64]",
                                 "augment.rot90=false", "seed=3"])
    diffs = differences(base, changed)
    assert [d.split(":")[0] for d in diffs] == [
        "augment.rot90", "model.head_hidden", "seed", "train.epochs"]
    assert "train.epochs: 1000 != 5" in diffs
    assert differences(base, copy.deepcopy(base)) == []
    assert differences(changed, base) != []


def test_differences_reports_missing_keys() -> None:
    a = {"x": 1, "sub": {"y": 2, "z": 3}}
    b = {"x": 1, "sub": {"y": 2}, "w": 4}
    assert [d.split(":")[0] for d in differences(a, b)] == ["sub.z", "w"]


def test_merge_rejects_unknown_nested_keys_with_full_path() -> None:
    with pytest.raises(ConfigError, match="'train.epochz'"):
        merge(PRETRAIN_DEFAULTS, {"train": {"epochz": 1}})


def test_bare_off_means_off_not_false() -> None:
    # YAML 1.1 reads `off` as false; for a setting whose choices include "off" that is "off".
    cfg = resolve(preset="cpu-small", overrides=["train.amp=off"])
    assert cfg["train"]["amp"] == "off"
    with pytest.raises(ConfigError, match="train.amp"):
        resolve(preset="cpu-small", overrides=["train.amp=on"])
