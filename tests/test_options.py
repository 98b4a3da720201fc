"""Every command's options are its config's fields: the same names and the same defaults.

A command builds its config from its arguments; an option whose ``dest`` is not a field (or a renamed one
not in the table below) is a second copy of a setting that can drift. Each command is compared with its
config dataclasses (or the entry point it calls, for the commands without one). Options a command uses
itself (how it reports, its input files) are listed in ``OWN`` with the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from pathlib import Path

import pytest

from schoolvision.cli import build_parser
from schoolvision.cluster.algorithms import ClusterConfig
from schoolvision.cluster.runner import ClusterRunConfig
from schoolvision.commands import scan as scan_command
from schoolvision.data.chips import ChipConfig, make_chips
from schoolvision.demo import make_demo
from schoolvision.explain.runner import ExplainConfig
from schoolvision.model.export import export_deepness
from schoolvision.review.decisions import import_decisions
from schoolvision.review.estimate import estimate
from schoolvision.review.queue import ReviewConfig
from schoolvision.review.sample import SampleConfig
from schoolvision.rounds.retrain import RetrainConfig
from schoolvision.scan.candidates import MIN_AREA_M2
from schoolvision.scan.options import ScanOptions
from schoolvision.scan.runner import ScanConfig
from schoolvision.train.evaluation import EvalConfig
from schoolvision.train.fit import TrainConfig
from schoolvision.train.novelty import NoveltyConfig, build_run_summary

# command -> (config owners, {option dest: field} where the name cannot be the field's)
CONFIGS = {
    "demo": ((make_demo,), {"out": "out_dir"}),
    "chips": ((ChipConfig, make_chips), {"out": "out_dir", "point_buffer": "point_buffer_m"}),
    "train": ((TrainConfig,), {"chips": "chips_dir", "out": "out_dir", "freeze_epochs": "freeze_backbone_epochs",
                               "beta": "threshold_beta"}),
    "evaluate": ((EvalConfig,), {"run": "run_dir", "chips": "chips_dir"}),
    "explain": ((ExplainConfig,), {"chips": "chips_dir", "out": "out_dir", "method": "methods"}),
    "cluster": ((ClusterConfig, ClusterRunConfig), {"chips": "chips_dir", "out": "out_dir", "cams": "cams_dir",
                                                   "cache": "cache_dir"}),
    "scan": ((ScanConfig,), scan_command.RENAMED),
    "novelty": ((NoveltyConfig, build_run_summary), {"chips": "chips_dir"}),
    "export": ((export_deepness,), {"tiles_overlap": "overlap"}),
    "review build": ((ReviewConfig, SampleConfig), {"scan": "scan_dir", "out": "out_dir", "sample": "size"}),
    "review import": ((import_decisions,), {"decisions": "decisions_path", "queue": "queue_dir"}),
    "review retrain": ((RetrainConfig,), {}),
    "estimate": ((estimate,), {"queue": "queue_dir"}),
}
"""The rename table: ``--out``, ``--run``, ``--chips`` and ``--scan`` are every command's folders (their fields
say ``_dir``); ``--freeze-epochs`` and ``--beta`` are short for the training fields; ``--point-buffer`` and
``--tiles-overlap`` name their unit or QGIS's term; ``review build --sample`` is the sample's size; ``explain
--method`` is repeated, one method each time."""

# command -> {option dest: why the command handles it itself}
OWN = {
    "demo": {},
    "chips": {"negatives_where": "a filter of the --negatives file, read by the command"},
    "train": {"folds": "cross-validation: the command runs fit once per fold",
              "pretrained": "--no-pretrained, a flag whose field default is True"},
    "evaluate": {},
    "explain": {},
    "cluster": {"no_gradcam": "--no-gradcam turns off the cluster maps' CAMs (ClusterRunConfig.gradcam)",
                "no_tsne": "--no-tsne turns off ClusterConfig.tsne"},
    "scan": {dest: f"--no-x flag of ScanConfig.{field}" for dest, field in scan_command.NEGATED.items()},
    "novelty": {"run": "the run folder, the entry point's first argument"},
    "export": {"run": "the checkpoint the command loads", "out": "the ONNX file", "deepness": "its Deepness copy",
               "image_size": "checked by the command, the exporter's input size", "overwrite": "files to replace"},
    "review build": {"run": "the run of the scan, for the context images' CAMs (ReviewConfig)"},
    "review import": {},
    "review retrain": {},
    "estimate": {"decisions": "one or more decision files"},
}

LIBRARY_ONLY = {"progress", "prefetch_depth"}
"""``ScanConfig`` fields without an option: progress bars (always on at the terminal) and the read-ahead."""


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser by its name (``review build`` for the review sub-commands)."""
    found = {}

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        subs = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if subs is None:
            found[" ".join(path)] = parser
            return
        for name, sub in subs.choices.items():
            walk(sub, (*path, name))

    walk(build_parser(), ())
    return found


def fields_of(owner) -> dict[str, object]:
    """Field or parameter name -> default (``inspect.Parameter.empty`` / ``MISSING`` when required)."""
    if dataclasses.is_dataclass(owner):
        return {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(owner)}
    return {name: p.default for name, p in inspect.signature(owner).parameters.items()}


def test_every_command_is_compared():
    assert set(commands()) == set(CONFIGS) == set(OWN)


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_options_are_config_fields_with_their_defaults(command):
    owners, renamed = CONFIGS[command]
    parser = commands()[command]
    for action in parser._actions:
        if action.dest == "help" or action.dest in OWN[command]:
            continue
        name = renamed.get(action.dest, action.dest)
        owner = next((o for o in owners if name in fields_of(o)), None)
        assert owner is not None, f"{command} --{action.dest}: no field {name!r} in {[o.__name__ for o in owners]}"
        if action.required:
            continue
        default = fields_of(owner)[name]
        if isinstance(action, argparse._StoreTrueAction):
            assert default is False, f"{command} --{action.dest}: a flag for a field that defaults to {default!r}"
            continue
        if default in (dataclasses.MISSING, inspect.Parameter.empty):
            continue  # the entry point requires it; the command's default fills it
        assert action.default == default, f"{command} --{action.dest}: {action.default!r} != {default!r}"


def test_every_scan_field_is_an_option():
    parser = commands()["scan"]
    dests = {scan_command.RENAMED.get(a.dest, a.dest) for a in parser._actions}
    fields = {f.name for f in dataclasses.fields(ScanConfig)}
    options = dests | set(scan_command.NEGATED.values())
    assert fields - options == LIBRARY_ONLY


def test_the_scan_command_builds_the_libraries_config():
    args = build_parser().parse_args(["scan", "--run", "r", "--imagery", "a.tif", "b.tif", "--out", "o"])
    config = scan_command.config_of(args)
    assert config == ScanConfig(run=Path("r"), imagery=[Path("a.tif"), Path("b.tif")], out_dir=Path("o"))
    flags = build_parser().parse_args(["scan", "--run", "r", "--imagery", "a.tif", "--out", "o", "--no-map",
                                       "--no-cam", "--min-area", "0", "--bands", "3,2,1"])
    config = scan_command.config_of(flags)
    assert (config.make_map, config.cam_peaks, config.min_area_m2, config.bands) == (False, False, 0.0, (3, 2, 1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.stride = 8


def test_min_area_has_one_default():
    """The scan's --min-area, its options and the candidate functions below agree (review reads scan.json's)."""
    from schoolvision.scan import candidates, evaluation

    assert ScanOptions().min_area_m2 == default_of_option("scan", "min_area_m2") == MIN_AREA_M2
    functions = [candidates.extract_candidates, candidates.read_fields, candidates.extract_all,
                 candidates.ProbabilityField.points, candidates.ProbabilityField.peak_arrays,
                 candidates.ProbabilityField.sweep, candidates.ProbabilityField.start_sweep,
                 candidates.ProbabilityField.candidates, candidates.PeakSweep.peak_arrays,
                 evaluation.pr_curve, evaluation.evaluate_scan, evaluation.rejected_lookalikes]
    for function in functions:
        assert inspect.signature(function).parameters["min_area_m2"].default == MIN_AREA_M2, function.__qualname__


def default_of_option(command: str, dest: str):
    return next(a.default for a in commands()[command]._actions if a.dest == dest)
