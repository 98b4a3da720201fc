"""One source of truth for defaults: the command line, the library's configs and the book's CPU profile agree.

A user who follows the README (commands with their defaults) must get the model the book recommends. Each
parameter a chapter and a command share is compared here; a deliberate difference is listed in DIFFERENCES with
its reason, and the command's ``--help`` must say it too.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

from build_tools.book import chapter_parameters
from schoolvision.cli import build_parser
from schoolvision.cluster.algorithms import ClusterConfig
from schoolvision.cluster.runner import ClusterRunConfig
from schoolvision.commands import default_of
from schoolvision.data.chips import ChipConfig
from schoolvision.demo import make_demo
from schoolvision.explain.runner import ExplainConfig
from schoolvision.model.backbones import pretraining_size
from schoolvision.scan.runner import ScanConfig
from schoolvision.train.fit import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CPU_PROFILE = ROOT / "book" / "params" / "cpu.yaml"

# chapter -> {chapter parameter: (owner of the default, field or parameter name)}
SHARED = {
    "01_data": {
        "towns": (make_demo, "towns"),
        "size": (make_demo, "size"),
        "gsd": (make_demo, "gsd"),
        "chip_size": (ChipConfig, "chip_size"),
        "stride": (ChipConfig, "stride"),
        "seed": (ChipConfig, "seed"),
    },
    "02_training": {
        name: (TrainConfig, name)
        for name in ("backbone", "pretrained", "epochs", "batch_size", "image_size", "lr", "seed", "device")
    },
    "03_gradcam": {"seed": (ExplainConfig, "seed"), "device": (ExplainConfig, "device")},
    "04_shap": {
        "background_size": (ExplainConfig, "background_size"),
        "nsamples": (ExplainConfig, "shap_nsamples"),
        "seed": (ExplainConfig, "seed"),
        "device": (ExplainConfig, "device"),
    },
    "05_clustering": {
        "subset": (ClusterRunConfig, "subset"),
        "split": (ClusterRunConfig, "split"),
        "method": (ClusterConfig, "method"),
        "k": (ClusterConfig, "k"),
        "k_max": (ClusterConfig, "k_max"),
        "variance": (ClusterConfig, "variance"),
        "seed": (ClusterConfig, "seed"),
        "device": (ClusterRunConfig, "device"),
    },
    "06_mapping": {
        "stride": (ScanConfig, "stride"),
        "batch_size": (ScanConfig, "batch_size"),
        "threshold": (ScanConfig, "threshold"),
        "match_distance": (ScanConfig, "match_distance"),
        "device": (ScanConfig, "device"),
    },
}

# (chapter, parameter) -> (command, option, reason). The reason's key words must appear in the option's --help.
DIFFERENCES = {
    ("05_clustering", "subset"): ("cluster", "--subset", "true-school"),
    ("05_clustering", "k_max"): ("cluster", "--k-max", "fewer chips"),
}


def resolved(owner, name: str, value, params: dict):
    """Defaults that mean "derive it" compared by what they resolve to."""
    if owner is ChipConfig and name == "stride" and value is None:
        return params.get("chip_size", default_of(ChipConfig, "chip_size")) // 2
    if owner is ScanConfig and name == "stride" and value is None:  # half the run's chip (the default chips)
        return default_of(ChipConfig, "chip_size") // 2
    if owner is TrainConfig and name == "image_size" and value is None:
        return pretraining_size(params.get("backbone", default_of(TrainConfig, "backbone")))
    return value


def book_parameters(chapter: str) -> dict:
    """The chapter's parameters cell with the CPU profile applied, as ``make book`` runs it."""
    source = (ROOT / "book" / f"{chapter}.py").read_text()
    cell = source.split('# %% tags=["parameters"]\n', 1)[1].split("\n# %%", 1)[0]
    params = {}
    for node in ast.parse(cell).body:
        if isinstance(node, ast.Assign):
            params[node.targets[0].id] = ast.literal_eval(node.value)
    return {**params, **chapter_parameters(CPU_PROFILE, chapter, declared=params)}


def option_help(command: str, option: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    action = next(a for a in sub._actions if option in a.option_strings)
    return (action.help or "") % {"default": action.default}


@pytest.mark.parametrize("chapter", sorted(SHARED))
def test_book_cpu_profile_uses_the_library_defaults(chapter):
    params = book_parameters(chapter)
    for parameter, (owner, name) in SHARED[chapter].items():
        assert parameter in params, f"{chapter} no longer declares {parameter}: update SHARED"
        if (chapter, parameter) in DIFFERENCES:
            command, option, reason = DIFFERENCES[(chapter, parameter)]
            assert params[parameter] != default_of(owner, name), (
                f"{chapter}.{parameter} agrees now: drop it from DIFFERENCES"
            )
            assert reason in option_help(command, option), f"`{command} {option}` --help must say why it differs"
            continue
        book = resolved(owner, name, params[parameter], params)
        library = resolved(owner, name, default_of(owner, name), params)
        assert book == library, f"{chapter}: {parameter}={book!r} in the book, {library!r} in {owner.__name__}"


# command -> (config owners, {option dest: field name} where they differ)
COMMAND_CONFIGS = {
    "demo": ((make_demo,), {}),
    "chips": ((ChipConfig,), {}),
    "train": ((TrainConfig,), {"freeze_epochs": "freeze_backbone_epochs", "beta": "threshold_beta"}),
    "explain": ((ExplainConfig,), {}),
    "cluster": ((ClusterConfig, ClusterRunConfig), {}),
    "scan": ((ScanConfig,), {}),
}


@pytest.mark.parametrize("command", sorted(COMMAND_CONFIGS))
def test_command_line_defaults_are_the_config_defaults(command):
    owners, aliases = COMMAND_CONFIGS[command]
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    compared = 0
    for action in sub._actions:
        if action.default in (None, argparse.SUPPRESS) and action.dest == "help":
            continue
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            continue  # flags: their default is the absence of the flag
        name = aliases.get(action.dest, action.dest)
        for owner in owners:
            try:
                expected = default_of(owner, name)
            except KeyError:
                continue
            assert action.default == expected, f"{command} --{action.dest}: {action.default!r} != {expected!r}"
            compared += 1
            break
    assert compared >= 3, f"{command}: too few options matched a config field"


def test_train_defaults_recommend_the_pretraining_input_size():
    args = build_parser().parse_args(["train", "--chips", "c", "--out", "r"])
    assert args.image_size is None  # resolved by fit: 224 for the ImageNet backbones
    assert pretraining_size(args.backbone) == 224
    assert args.epochs == default_of(TrainConfig, "epochs") == book_parameters("02_training")["epochs"]


def test_the_printed_train_command_trains_the_same_config():
    from schoolvision.commands.train import OPTIONS, command_line

    book = TrainConfig(chips_dir=Path("data/chips"), out_dir=Path("runs/quick"), image_size=224)
    assert command_line(book) == "schoolvision train --chips data/chips --out runs/quick --image-size 224"
    other = TrainConfig(chips_dir=Path("/abs/chips"), out_dir=Path("/abs/run"), epochs=30, lr=3e-4, batch_size=64,
                        pretrained=False, threshold_beta=2.0)
    text = command_line(other, chips="data/chips_full", out="runs/full")
    args = build_parser().parse_args(text.split()[1:])
    aliases = {"freeze_backbone_epochs": "freeze_epochs", "threshold_beta": "beta"}
    for name in OPTIONS:
        assert getattr(args, aliases.get(name, name)) == getattr(other, name), name
    assert (str(args.chips), str(args.out), args.pretrained) == ("data/chips_full", "runs/full", False)
