"""Encoders f(.), projection heads g(.), the MPCS model (h, z) = (f(x), g(f(x))) and the
downstream classifier (encoder + dropout + linear)."""

from mpcs.models.classifier import CLASS_NAMES, Classifier, ClassifierHead, build_classifier
from mpcs.models.encoders import (
    ENCODERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Encoder,
    EncoderSpec,
    create_encoder,
    list_encoders,
    register_encoder,
    resolve_encoder_spec,
)
from mpcs.models.heads import MPCSModel, ProjectionHead, create_mpcs_model, default_head_dims
from mpcs.models.lite_weights import (
    LITE_MEAN,
    LITE_STD,
    lite_weights_available,
    lite_weights_path,
    load_lite_imagenet,
)
from mpcs.models.weights import load_encoder_weights

__all__ = [
    "CLASS_NAMES",
    "ENCODERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LITE_MEAN",
    "LITE_STD",
    "Classifier",
    "ClassifierHead",
    "Encoder",
    "EncoderSpec",
    "MPCSModel",
    "ProjectionHead",
    "build_classifier",
    "create_encoder",
    "create_mpcs_model",
    "default_head_dims",
    "list_encoders",
    "lite_weights_available",
    "lite_weights_path",
    "load_encoder_weights",
    "load_lite_imagenet",
    "register_encoder",
    "resolve_encoder_spec",
]
