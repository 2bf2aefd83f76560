"""The contract of a pre-training method: what the training loop calls, and nothing else.

A method is an ``nn.Module`` holding an ``encoder`` (what downstream tasks keep) and a
``head`` (the projection head: t-SNE of projections, inference). The pre-training loop
(:mod:`mpcs.engine.trainer`) builds every method, MPCS included, through
:func:`mpcs.methods.create_method` and calls only this interface:

==========================  ================================================================
``same_image``              True when both views of a pair come from the SAME image
                            (SimCLR); the pair sampler then draws one magnification per
                            sample. False: the same region at two magnifications.
``use_global_batch(on)``    once, before training under ``torchrun``: every statistic of
                            the loss that spans the batch (negatives, cross-correlation,
                            covariance) must then be over ALL ranks' pairs, so that a step
                            equals one process's step on the whole batch (see below).
``make_views(...)``         the network inputs of this rank's pairs from the raw uint8 views.
``forward(x1, x2)``         the scalar loss of this rank's N pairs; the loop calls the
                            module (under DDP the wrapper), so every parameter that takes
                            part in the loss is synchronised.
``after_step(step, total)`` after every optimiser step (momentum encoders).
``loggable()``              per-epoch values for ``metrics.jsonl``.
==========================  ================================================================

Distributed training (W ranks, each with a contiguous slice of N = B / W pairs of the global
batch B; DDP AVERAGES the parameter gradients over the ranks):

* a loss that is a mean of per-pair terms (BYOL, SimSiam) needs nothing: the mean of the W
  slice means is the global mean, and so is the average of their gradients;
* a loss with batch statistics gathers the other ranks' projections with a gradient
  (:func:`mpcs.losses.gather.gather_rows`), either computing the whole batch's loss
  on every rank (Barlow Twins, VICReg) or its own anchors against all rows (NT-Xent); both
  give the single-process loss and gradient after DDP's averaging;
* random draws for the views are made for the GLOBAL batch from the generator every rank
  holds in the same state, and each rank uses its slice (``global_pairs``, ``first``), so W
  ranks make exactly the views one process makes of the whole batch;
* BatchNorm layers inside encoder, head or predictor normalise each rank's slice with its
  own statistics unless converted to SyncBatchNorm (``distributed.sync_bn`` on CUDA), as for
  every DDP model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mpcs.data.transforms import UniformPairAugment
from mpcs.models.encoders import Encoder
from mpcs.models.heads import MPCSModel, ProjectionHead, create_mpcs_model


def uniform_views(aug: UniformPairAugment, v1: Tensor, v2: Tensor,
                  generator: torch.Generator, global_pairs: int | None = None, first: int = 0
                  ) -> tuple[Tensor, Tensor]:
    """MPCS's uniform transformation of N pairs (one parameter set per pair, applied to both
    views), taking rows ``first:first + N`` of a draw for ``global_pairs`` pairs (default N:
    one process). Every rank draws the same parameters and keeps its slice."""
    n = v1.shape[0]
    params = aug.sample(global_pairs or n, generator).take(first, first + n)
    return aug(v1, v2, params=params)


class PairMethod(nn.Module, ABC):
    """Base class of the self-supervised methods on pairs of views (see the module doc).

    Class attributes:
        name: registry name.
        same_image: True when both views come from the SAME image (SimCLR); False when they
            are the same region at two magnifications (every other method).
    """

    name: ClassVar[str] = ""
    same_image: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def describe(cls, cfg: Mapping[str, Any]) -> dict[str, str]:
        """``{"method": ..., "loss": ...}``: one line each for a model card, from a resolved
        pre-training configuration ``cfg`` (the options this method reads)."""

    def __init__(self, encoder: Encoder, head: ProjectionHead, channels_last: bool = False
                 ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.channels_last = channels_last

    def _encode(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder features of both views (one pass over the concatenated batch)."""
        x = torch.cat([x1, x2])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        h = self.encoder(x)
        return h[:len(x1)], h[len(x1):]

    @abstractmethod
    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        """Scalar loss of N pairs of normalised float views ``[N, 3, S, S]``."""

    @abstractmethod
    def use_global_batch(self, enabled: bool) -> None:
        """With ``enabled`` (several ranks), compute every batch statistic of the loss over
        the pairs of all ranks; a loss of per-pair terms has nothing to change."""

    def make_views(self, aug: UniformPairAugment, v1: Tensor, v2: Tensor,
                   generator: torch.Generator, global_pairs: int | None = None, first: int = 0
                   ) -> tuple[Tensor, Tensor]:
        """Network inputs from this rank's raw uint8 views ``[N, 3, H, W]``, rows
        ``first:first + N`` of a global batch of ``global_pairs`` pairs (default: N, one
        process). By default MPCS's uniform transformation (:func:`uniform_views`)."""
        return uniform_views(aug, v1, v2, generator, global_pairs, first)

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after every optimiser step (``step`` counts from 1); momentum updates."""

    def loggable(self) -> dict[str, float]:
        """Per-epoch values worth logging (e.g. the current EMA momentum)."""
        return {}


# --------------------------------------------------------------------------- building


def option(cfg: Mapping[str, Any], key: str) -> Any:
    """``cfg["ssl"][key]`` of a resolved configuration (a checkpoint's configuration is
    completed with the defaults before a method is rebuilt from it)."""
    return cfg["ssl"][key]


def backbone(cfg: Mapping[str, Any]) -> MPCSModel:
    """Encoder and projection head as ``model.*`` configures them (MPCS's network)."""
    m = cfg["model"]
    return create_mpcs_model(m["encoder"], weights=m["weights"], head_hidden=m["head_hidden"],
                             head_out=m["head_out"], channels_last=m["channels_last"],
                             frozen_stages=m.get("frozen_stages", 0),
                             frozen_norm=m.get("frozen_norm", False))


def predictor(cfg: Mapping[str, Any]) -> ProjectionHead:
    """BYOL's and SimSiam's predictor: ``head_out -> ssl.predictor_hidden -> head_out``."""
    out = cfg["model"]["head_out"]
    return ProjectionHead(out, [int(option(cfg, "predictor_hidden"))], out)
