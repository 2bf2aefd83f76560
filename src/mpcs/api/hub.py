"""The timm / Hugging Face hub layout of an exported encoder: ``config.json`` and ``README.md``.

:func:`timm_config` writes the configuration layout of timm's ``save_for_hf``
(``timm/models/_hub.py``: ``architecture``, ``num_classes``, ``num_features``,
``global_pool``, ``model_args``, ``pretrained_cfg`` with input size, interpolation, crop,
mean and std), so that ``timm.create_model("local-dir:DIR", pretrained=True)`` loads the
export offline and ``hf-hub:USER/REPO`` after an upload. The keys mpcs wrote before
(``timm_name``, ``timm_kwargs``, ``input_size``, ``mean``, ``std``, ``source_checkpoint``,
``encoder_name``, ``checkpoint_kind``) stay at the top level; timm ignores them.

``pretrained_cfg`` describes mpcs's own evaluation pre-processing: the whole image resized
to the square input (``crop_mode: squash``, ``crop_pct: 1.0``, bilinear), then normalised.

:func:`model_card` writes the model card: data, method, pair strategy, epochs, and the
evaluation tables of a report when one is given.

Example:
    >>> cfg = timm_config(encoder, 224, "runs/op/checkpoints/last.pt", "mpcs-pretrain")
    ... # doctest: +SKIP
    >>> cfg["pretrained_cfg"]["input_size"]                            # doctest: +SKIP
    [3, 224, 224]
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mpcs import __version__
from mpcs.config import PRETRAIN_DEFAULTS, get_dotted, with_defaults
from mpcs.core.errors import ConfigError
from mpcs.core.vocab import STRATEGY_DESCRIPTIONS, canonical_strategy
from mpcs.methods import method_class
from mpcs.models.encoders import Encoder

__all__ = ["model_card", "read_report", "timm_config"]


CITATION = """@inproceedings{chhipa2023magnification,
  title={Magnification Prior: A Self-Supervised Method for Learning Representations on
         Breast Cancer Histopathological Images},
  author={Chhipa, Prakash Chandra and Upadhyay, Richa and Pihlgren, Gustav Grund and
          Saini, Rajkumar and Uchida, Seiichi and Liwicki, Marcus},
  booktitle={IEEE/CVF Winter Conference on Applications of Computer Vision (WACV)},
  year={2023}
}"""

BREAKHIS_CITATION = """@article{spanhol2016dataset,
  title={A Dataset for Breast Cancer Histopathological Image Classification},
  author={Spanhol, Fabio A. and Oliveira, Luiz S. and Petitjean, Caroline and Heutte, Laurent},
  journal={IEEE Transactions on Biomedical Engineering},
  volume={63}, number={7}, pages={1455--1462}, year={2016}
}"""


def global_pool_type(model: Any) -> str | None:
    """The pooling a timm model ends with (``"avg"``, ``"token"``, ...), as timm records it."""
    pool = getattr(model, "global_pool", None)
    kind = pool if isinstance(pool, str) else getattr(pool, "pool_type", None)
    return kind if isinstance(kind, str) and kind else None


def timm_config(enc: Encoder, input_size: int, checkpoint: str | os.PathLike[str],
                kind: str) -> dict[str, Any]:
    """``config.json`` of an export: timm's ``save_for_hf`` layout plus mpcs's keys."""
    default = dict(enc.model.pretrained_cfg or {})
    pool = global_pool_type(enc.model)
    model_args = {**dict(enc.timm_kwargs), "num_classes": 0, "in_chans": 3,
                  **({"global_pool": pool} if pool else {})}
    pretrained_cfg = {
        "tag": "mpcs",
        "custom_load": False,
        "input_size": [3, int(input_size), int(input_size)],
        "fixed_input_size": bool(default.get("fixed_input_size", False)),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "squash",
        "mean": list(enc.mean),
        "std": list(enc.std),
        "num_classes": 0,
        "pool_size": None,
        "first_conv": default.get("first_conv"),
        "classifier": default.get("classifier"),
    }
    return {
        "architecture": enc.timm_name,
        "num_classes": 0,
        "num_features": int(enc.num_features),
        **({"global_pool": pool} if pool else {}),
        "model_args": model_args,
        "pretrained_cfg": {k: v for k, v in pretrained_cfg.items() if v is not None
                           or k == "pool_size"},
        # mpcs's keys (timm reads none of them)
        "timm_name": enc.timm_name,
        "timm_kwargs": dict(enc.timm_kwargs),
        "input_size": int(input_size),
        "mean": list(enc.mean),
        "std": list(enc.std),
        "source_checkpoint": str(Path(checkpoint).resolve()),
        "encoder_name": enc.name,
        "checkpoint_kind": kind,
        "mpcs_version": __version__,
    }


def read_report(path: str | os.PathLike[str]) -> str:
    """The evaluation tables of a report for the card: ``report.md`` (a file, or the one in
    an experiment / reproduction folder) with its headings one level down and its pictures
    left out (their links point into the run folder).

    Raises:
        ConfigError: no such file, or a folder without ``report.md``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "report.md"
    if not path.is_file():
        raise ConfigError(f"--report {path}: not found (give a report.md from `mpcs report` or "
                          "`mpcs reproduce`, or the folder holding it)")
    lines = []
    for line in path.read_text().splitlines():
        if "![" in line or line.startswith("<img"):
            continue
        lines.append("#" + line if re.match(r"#{1,5} ", line) else line)
    return "\n".join(lines).strip()


def _pretrain_details(meta: Mapping[str, Any], patients: int | None) -> dict[str, str]:
    cfg = meta.get("config", {})
    strategy = get_dotted(cfg, "pairs.strategy", "?")
    cls = method_class(str(get_dotted(cfg, "method", "mpcs")))
    method = cls.describe(with_defaults(cfg, PRETRAIN_DEFAULTS))  # options added since
    pairs = ("none: both views come from one image" if cls.same_image else
             STRATEGY_DESCRIPTIONS.get(canonical_strategy(str(strategy)), str(strategy)))
    details = {
        "Method": method["method"],
        "Pair strategy": pairs,
        "Epochs": f"{meta.get('epoch', '?')} of {get_dotted(cfg, 'train.epochs', '?')} configured",
        "Batch size": str(get_dotted(cfg, "train.batch_size", "?")),
        "Loss": method["loss"],
        "Optimiser": f"{get_dotted(cfg, 'optim.name', '?')}, lr {get_dotted(cfg, 'optim.lr', '?')}",
        "Initialisation": str(get_dotted(cfg, "model.weights", "?")),
        "Pre-training data": "BreakHis v1 layout (histopathology, 40X/100X/200X/400X)"
                             + (f", {patients} patients" if patients else ""),
    }
    return details


def _finetune_details(meta: Mapping[str, Any]) -> dict[str, str]:
    val = meta.get("val", {})
    return {
        "Method": f"{'linear evaluation' if meta.get('mode') == 'linear' else 'fine-tuning'} "
                  "of an encoder; this export holds the encoder only (no classifier)",
        "Classes of the fine-tuned classifier": ", ".join(meta.get("class_names", [])),
        "Initialisation": str(meta.get("init", "?")),
        "Selected epoch": f"{meta.get('epoch', '?')} (on the validation part: ILA "
                          f"{100 * float(val.get('ila', float('nan'))):.2f} %)",
    }


def model_card(config: Mapping[str, Any], meta: Mapping[str, Any], params: int,
               patients: int | None = None, report: str | None = None) -> str:
    """``README.md`` of an export (front matter as timm's ``generate_readme`` writes it)."""
    name = f"mpcs-{config['encoder_name']}"
    kind = config["checkpoint_kind"]
    details = {
        "Model type": f"image feature backbone: timm `{config['architecture']}` "
                      f"{config['model_args']}, pooled features of {config['num_features']}",
        "Params (M)": f"{params / 1e6:.1f}",
        "Image size": f"{config['input_size']} x {config['input_size']}",
        **(_pretrain_details(meta, patients) if kind == "mpcs-pretrain"
           else _finetune_details(meta)),
        "Exported from": f"`{config['source_checkpoint']}` with mpcs {__version__}",
    }
    size = config["input_size"]
    lines = ["---", "tags:", "- image-feature-extraction", "- timm", "- histopathology",
             "- self-supervised", "library_name: timm", "license: other",
             "datasets:", "- breakhis", "---", f"# Model card for {name}", "",
             "An encoder trained with mpcs, the reference implementation of MPCS "
             "(Chhipa et al., WACV 2023). Weights trained on BreakHis are subject to the "
             "data set's terms (cite Spanhol et al., 2016).", "", "## Model Details"]
    lines += [f"- **{k}:** {v}" for k, v in details.items()]
    lines += ["", "## Model Usage", "", "```python", "import timm", "",
              "model = timm.create_model(\"local-dir:PATH/TO/THIS/FOLDER\", pretrained=True,",
              "                          num_classes=0).eval()",
              "# after an upload: timm.create_model(\"hf-hub:USER/REPO\", pretrained=True, "
              "num_classes=0)",
              "cfg = timm.data.resolve_data_config({}, model=model)",
              "transform = timm.data.create_transform(**cfg)  # squash-resize to "
              f"{size}x{size}, normalise",
              "features = model(transform(image).unsqueeze(0))  # [1, "
              f"{config['num_features']}]", "```", "",
              "`mpcs embed` resizes the whole image to the input size (bilinear, antialiased, "
              "on the tensor) and normalises with `mean`/`std`; timm's transform resizes with "
              "PIL, so features agree closely, and exactly when the same input tensor is fed.",
              "", "## Evaluation", ""]
    lines += [report] if report else ["No evaluation was given at export (`mpcs export "
                                      "--report REPORT.md` puts a run's tables here)."]
    lines += ["", "## Citation", "", "```bibtex", CITATION, "```", "", "```bibtex",
              BREAKHIS_CITATION, "```", ""]
    return "\n".join(lines)
