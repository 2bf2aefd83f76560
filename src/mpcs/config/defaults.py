"""The defaults of the three kinds of configuration: pre-training
(:data:`PRETRAIN_DEFAULTS`), fine-tuning / linear evaluation (:data:`FINETUNE_DEFAULTS`) and
experiment grids (:data:`EXPERIMENT_DEFAULTS`). Every key a configuration may hold is here,
with its default; :mod:`mpcs.config.validate` checks the values."""

from __future__ import annotations

from typing import Any

from mpcs.core.vocab import MAGNIFICATIONS

PRETRAIN_DEFAULTS: dict[str, Any] = {
    "name": "custom",
    "description": "",
    "seed": 0,
    # Self-supervised objective (mpcs.methods): mpcs | simclr | byol | simsiam | barlow_twins
    # | vicreg; options of the non-MPCS methods in "ssl".
    "method": "mpcs",
    "data": {
        "input_size": 224,
        "patients": None,        # restrict pre-training to these patient ids (fold training part)
        # Where pairs come from: breakhis (the four magnifications of a BreakHis-layout
        # folder) | zoom (any folder of single-scale images, synthetic magnification by
        # nested crops) | wsi (whole-slide images, read at any scale; section "wsi").
        # A list (e.g. [breakhis, zoom]) trains on several sources of the folder in one run,
        # each taking source_weights' share of an epoch (null: in proportion to its samples).
        "source": "breakhis",
        "source_weights": None,
        "zoom_base_size": 0,     # zoom: side of the decoded base image; 0 = input_size x max scale
        # zoom on a BreakHis tree: all | lowest (each patient's lowest magnification) | 40X..400X
        "zoom_magnification": "lowest",
        "cache_dir": None,       # None: $MPCS_CACHE or ~/.cache/mpcs
        "use_cache": True,
        "on_bad_image": "error",  # error | skip (skipped files: RUN/skipped_images.csv)
        # Batch loading from the decoded-image cache (mpcs.data.loader): background threads
        # (None = auto: 1; 0 = in the training loop), batches prepared ahead, page-locked
        # memory for host-to-GPU copies (None = auto: on with CUDA).
        "num_workers": None,
        "prefetch": 2,
        "pin_memory": None,
    },
    "model": {
        "encoder": "resnet50_dilated",
        "weights": "imagenet",   # imagenet | none | path to a state dict
        "head_hidden": [1024],
        "head_out": 128,
        "channels_last": True,
        # leading encoder stages (timm's coarse groups: 1 = the stem, then block groups)
        # kept as initialised: no gradient, normalisation statistics frozen
        "frozen_stages": 0,
        # every encoder BatchNorm layer in eval mode while training (the initialisation's
        # running statistics, never updated; affine weights still train)
        "frozen_norm": False,
    },
    # strategy continuous: relative magnifications log-uniform in scale_range whose ratio is
    # at least min_ratio (sources zoom and wsi); log_scales writes RUN/pair_scales.csv.
    # complete_only: pair only samples at all four magnifications (the paper); false: every
    # sample with the magnifications its strategy needs (fixed: 200X+400X; ordered: one with
    # its successor; random: any two), pairs drawn among the ones it has.
    "pairs": {"strategy": "ordered", "scale_range": [1.0, 10.0], "min_ratio": 1.25,
              "log_scales": False, "complete_only": True},
    "ssl": {
        "predictor_hidden": 512,      # byol/simsiam: hidden size of the predictor MLP
        "momentum": 0.99,             # byol: target EMA momentum at step 0 (cosine to 1)
        "barlow_lambda": 0.005,       # barlow_twins: off-diagonal weight
        "vicreg_weights": [25.0, 25.0, 1.0],  # vicreg: invariance, variance, covariance
        "simclr_crop_scale": [0.35, 1.0],     # simclr: random resized crop area fraction
    },
    "wsi": {
        "mpp_at_1x": 2.0,             # µm per view pixel at relative magnification 1
        "locations_per_slide": 64,    # tissue locations sampled per slide (the "samples")
        "min_tissue": 0.5,            # tissue fraction of the widest field at a location
        "assume_mpp": None,           # level-0 µm/pixel for slides without metadata
        "mask_max_side": 1024,        # thumbnail side for the tissue mask
    },
    # Online kNN accuracy on held-out patients every knn_every epochs (0 = off); labels are
    # used only by the monitor. val_patients: the query patients (e.g. a fold's val part);
    # the training patients' images are the labelled reference bank.
    "monitor": {"knn_every": 0, "knn_k": 20, "knn_temperature": 0.07, "val_patients": None,
                "knn_magnification": "all"},
    # The uniform transformation T_U (mpcs.data.transforms). hed: H&E stain jitter strength
    # (0 = off); per_view_colour: colour and stain jitter drawn per view, geometry per pair.
    "augment": {
        "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1,
        "hflip": 0.5, "vflip": 0.5, "rot90": True, "rotation_degrees": 15.0, "translate": 0.05,
        "hed": 0.0, "per_view_colour": False,
    },
    "loss": {"temperature": 0.01},
    "optim": {
        "name": "adam",
        "lr": 1.0e-5,
        "weight_decay": 0.0,
        "momentum": 0.9,
        "lars_eta": 0.001,
        "lr_biases": None,
        "scale_lr_with_batch": False,  # lr * batch_size / 256 (LARS convention)
    },
    "schedule": {"name": "cosine", "warmup_epochs": 0, "final_lr_fraction": 0.0},
    "train": {
        "epochs": 1000,
        "batch_size": 128,       # GLOBAL batch (pairs per step over all torchrun processes)
        "drop_last": True,
        "checkpoint_every": 50,  # epoch_XXXX.pt every k epochs (and at the last epoch)
        "last_every": 1,         # last.pt (what --resume reads) every k epochs and at the end
        "device": "auto",        # auto | cpu | cuda | cuda:N | mps
        "amp": "auto",           # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off
        "threads": 0,            # torch CPU threads; 0 = torch's default
        "on_nonfinite": "stop",  # stop | skip (skip the step; stop anyway past 10% of an epoch)
    },
    # Multi-process runs (torchrun; mpcs.engine.distributed). Ignored by a single process.
    "distributed": {
        "sync_bn": False,        # SyncBatchNorm: BatchNorm statistics over the global batch (CUDA)
        "backend": "auto",       # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    },
}

KINDS: tuple[str, ...] = ("pretrain", "finetune", "experiment")

#: Fine-tuning and linear evaluation (``mpcs.engine.finetune``). The values are the paper's
#: fine-tuning settings (sec. 4.3.2: Adam, lr 2e-5, batch 32, input 224, random crop, flip,
#: affine, rotation, colour jitter, dropout 0.3); epochs, early stopping and the augmentation
#: strengths are not in the paper and are our choices.
FINETUNE_DEFAULTS: dict[str, Any] = {
    "kind": "finetune",
    "name": "custom",
    "description": "",
    "seed": 0,
    "data": {
        "input_size": 224,
        "cache_dir": None,       # None: $MPCS_CACHE or ~/.cache/mpcs
        "use_cache": True,
    },
    "model": {
        "encoder": "resnet50_dilated",  # used for init imagenet|none|plain state dict; an mpcs
                                        # pre-training checkpoint brings its own encoder
        "dropout": 0.3,
        "channels_last": True,
    },
    "augment": {
        "crop_scale": [0.8, 1.0],       # random resized crop: area fraction range
        "crop_ratio": [0.75, 1.3333333333333333],  # and aspect ratio range
        "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05,
        "hflip": 0.5, "vflip": 0.5, "rot90": True, "rotation_degrees": 15.0, "translate": 0.05,
    },
    "optim": {"name": "adam", "lr": 2.0e-5, "weight_decay": 0.0, "momentum": 0.9},
    "schedule": {"name": "constant", "warmup_epochs": 0, "final_lr_fraction": 0.0},
    "train": {
        "epochs": 50,
        "batch_size": 32,
        "patience": 10,          # early stopping: epochs without a better val score; 0 = off
        # at least this many optimiser steps: the epoch budget grows to reach them and early
        # stopping waits for them (small training sets have few steps per epoch)
        "min_steps": 0,
        "select_by": "val_ila",  # val_ila (val loss breaks ties) | val_loss (val ILA breaks ties)
        "eval_batch_size": 64,
        "device": "auto",
        "amp": "auto",
        "threads": 0,
    },
    "linear": {                  # linear evaluation: dropout + linear head on frozen features
        "epochs": 100,
        "batch_size": 256,
        "lr": 1.0e-3,
        "weight_decay": 0.0,
        "patience": 20,
    },
}


KEEP_CHECKPOINTS: tuple[str, ...] = ("all", "fold0")

EXPERIMENT_DEFAULTS: dict[str, Any] = {
    "kind": "experiment",
    "name": "custom",
    "description": "",
    "dataset": "breakhis",
    "seed": 0,
    "folds": 5,
    "methods": ["fixed", "ordered", "random"],   # MPCS pair strategies pre-trained per fold
    "baseline": "imagenet",                      # init of the baseline: imagenet | none
    "pretrain_preset": "mpcs-op-resnet50",       # its pairs.strategy is set per method
    "pretrain_overrides": [],
    "finetune_preset": "finetune-paper",
    "finetune_overrides": [],
    "mode": "finetune",                          # finetune | linear
    "magnifications": list(MAGNIFICATIONS),
    "label_fractions": [0.2],
    "cross_magnification": False,                # test each model at all four magnifications
    # Model checkpoints kept once a fold's cells are finished: all | fold0 (the report's
    # pictures read fold 0; later folds keep their metrics and predictions, and drop
    # best.pt and pre-training checkpoints: the demo 0.6 GB instead of 2.5)
    "keep_checkpoints": "all",
    # dataset bach | bcc: patch-based transfer (mpcs.evaluation.transfer); mode may be "both"
    "transfer": {
        "pretrained": [],         # MPCS checkpoints, pre-training runs or BreakHis experiments
        "pretrain_fold": 0,       # fold whose pre-training runs an experiment folder gives
        "pretrain_data": None,    # BreakHis folder: pre-train methods lacking a checkpoint
        "patch_size": 224,
        "patch_stride": 0,        # 0: patch_size (no overlap)
        "stain_norm": "none",     # none | reinhard | macenko
        "stain_reference": None,  # reference image (needed by reinhard / macenko)
        "stain_min_tissue": 0.05,  # macenko: less tissue -> raw patch kept (counted)
        "tta": "none",            # test-time augmentation: none | flips | dihedral
        "val_fraction": 0.25,     # validation images: this fraction of the non-test images
    },
}
