"""The arguments of ``mpcs embed``, ``predict``, ``export``."""

from __future__ import annotations

import argparse

Subparsers = argparse._SubParsersAction


def add_export(sub: Subparsers) -> None:
    s = sub.add_parser("export", help="the encoder in timm's hub layout (model.safetensors, "
                       "config.json, README.md model card): timm.create_model(\"local-dir:OUT\", "
                       "pretrained=True) loads it offline, hf-hub: after an upload")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--report", help="a report.md (or the experiment / reproduction folder "
                   "holding it) whose tables go into the model card")


def add_embed_predict(sub: Subparsers) -> None:
    """``embed`` and ``predict``: the same arguments."""
    for name, what, default_out in (
            ("embed", "features of images (one row per image)", "features.csv"),
            ("predict", "class probabilities from a fine-tuned checkpoint",
             "predictions.csv")):
        s = sub.add_parser(name, help=what)
        s.add_argument("--checkpoint", required=True)
        s.add_argument("--images", required=True, nargs="+", help="image files or folders")
        s.add_argument("--out", default=default_out,
                       help=f"output file (default {default_out}; .parquet needs pyarrow)")
        s.add_argument("--batch-size", type=int, default=64,
                       help="images per forward pass (default 64)")
        s.add_argument("--workers", type=int, default=None, help="background threads that "
                       "decode and resize the images while the model runs (default: one "
                       "per CPU core, at most 16; 0: decode in the main thread)")
        s.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
        s.add_argument("--amp", choices=("off", "bf16"), default="off", help="bf16: run the "
                       "model under bf16 autocast (for a GPU; outputs differ slightly from "
                       "float32); default off")
        s.add_argument("--skip-bad", action="store_true",
                       help="leave unreadable images out with a warning instead of stopping")
        s.add_argument("--quiet", action="store_true")
