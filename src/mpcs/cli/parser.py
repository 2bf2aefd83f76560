"""The ``mpcs`` argument parser, from the argument modules of :mod:`mpcs.cli.options`, and
:data:`COMMANDS`: which module runs each command (imported only when that command runs)."""

from __future__ import annotations

import argparse

from mpcs import __version__
from mpcs.cli.options import data, experiments, inference, pictures, training

__all__ = ["COMMANDS", "DECODING_COMMANDS", "build_parser"]

#: Command -> the module holding its ``cmd_<command>`` function (``-`` as ``_``).
COMMANDS: dict[str, str] = {
    **dict.fromkeys(("inspect", "synth", "download", "splits"), "mpcs.cli.data"),
    **dict.fromkeys(("pretrain", "finetune", "linear-eval", "presets"), "mpcs.cli.training"),
    **dict.fromkeys(("demo", "compare-methods", "experiment", "reproduce", "real-probe",
                     "report"), "mpcs.cli.experiments"),
    **dict.fromkeys(("embed", "predict", "export"), "mpcs.cli.inference"),
    **dict.fromkeys(("plot-metrics", "tsne", "gradcam", "curves"), "mpcs.cli.pictures"),
}

#: Commands that decode images on background threads while the model runs on the other
#: cores: they run with ``OMP_WAIT_POLICY=PASSIVE`` (unless set), so that OpenMP's idle
#: threads sleep instead of spinning and leave the cores to the decoding (on 2 busy cores
#: ``predict`` took 50 instead of 100 ms of CPU per image, bench/README.md, P5).
DECODING_COMMANDS: frozenset[str] = frozenset({"embed", "predict", "tsne", "gradcam"})

#: The sub-parsers, in the order ``mpcs --help`` lists them.
_ADD = (experiments.add_demo, experiments.add_compare_methods, pictures.add_plot_metrics,
        data.add_inspect, data.add_synth, data.add_download, training.add_pretrain,
        data.add_splits, training.add_downstream, experiments.add_experiment,
        experiments.add_reproduce, experiments.add_real_probe, experiments.add_report,
        inference.add_embed_predict, inference.add_export, pictures.add_tsne,
        pictures.add_gradcam, pictures.add_curves, training.add_presets)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (its ``command`` names the one given)."""
    p = argparse.ArgumentParser(
        prog="mpcs", description="Magnification Prior Contrastive Similarity (WACV 2023): "
        "self-supervised pre-training for histopathology.")
    p.add_argument("--version", action="version", version=f"mpcs {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    for add in _ADD:
        add(sub)
    return p
