"""The paper's numbers (WACV 2023, Tables 5-9) and settings, for side-by-side reports.

BreakHis (Tables 5 and 6): keys (encoder, label fraction, method, metric) -> {magnification:
%} with a "Mean" entry; :data:`PAPER_BREAKHIS` holds the means, :data:`PAPER_BREAKHIS_STD`
the standard deviations over folds. Encoders use mpcs names; label fraction 0.3333 (20 % of
all images = a third of the training part) is Table 5 (limited labels), 1.0 is Table 6
(fully supervised).

BACH (Tables 7 and 8) and BCC (Table 9), ResNet-50: ``(mean, std)`` pairs, accuracies in %,
F1 / precision / recall in [0, 1]. :data:`PAPER_SETTINGS` holds what the paper's text says
about the settings (and :data:`AUTHORS_CODE` where the authors' code differs from it).

Example:
    >>> paper_row("resnet50_dilated", 1.0, "MPCS-OP", "ila")["Mean"]
    92.18
    >>> PAPER_BACH["MPCS-OP"]["image_test"]
    (91.85, 1.77)
"""

from __future__ import annotations

from mpcs.core.vocab import MAGNIFICATIONS

MAGS = (*MAGNIFICATIONS, "Mean")


def _row(*values: float) -> dict[str, float]:
    return dict(zip(MAGS, values, strict=True))


PAPER_BREAKHIS: dict[tuple[str, float, str, str], dict[str, float]] = {
    # Table 5: 20 % labels.
    ("efficientnet_b2", 0.3333, "ImageNet", "ila"): _row(86.36, 87.80, 86.82, 84.98, 86.49),
    ("efficientnet_b2", 0.3333, "MPCS-FP", "ila"): _row(87.26, 87.45, 89.38, 88.12, 88.05),
    ("efficientnet_b2", 0.3333, "MPCS-OP", "ila"): _row(87.40, 89.30, 90.50, 88.35, 88.89),
    ("efficientnet_b2", 0.3333, "MPCS-RP", "ila"): _row(86.21, 89.55, 89.18, 87.34, 88.07),
    ("efficientnet_b2", 0.3333, "ImageNet", "pla"): _row(86.13, 87.76, 85.79, 85.51, 86.30),
    ("efficientnet_b2", 0.3333, "MPCS-FP", "pla"): _row(86.90, 87.64, 89.60, 88.26, 88.10),
    ("efficientnet_b2", 0.3333, "MPCS-OP", "pla"): _row(87.19, 88.86, 90.20, 88.96, 88.80),
    ("efficientnet_b2", 0.3333, "MPCS-RP", "pla"): _row(87.17, 88.36, 88.58, 88.66, 88.19),
    ("resnet50_dilated", 0.3333, "ImageNet", "ila"): _row(87.40, 86.22, 86.02, 85.30, 86.24),
    ("resnet50_dilated", 0.3333, "MPCS-FP", "ila"): _row(86.69, 86.94, 88.76, 88.81, 87.68),
    ("resnet50_dilated", 0.3333, "MPCS-OP", "ila"): _row(87.56, 88.60, 89.77, 87.61, 88.38),
    ("resnet50_dilated", 0.3333, "MPCS-RP", "ila"): _row(87.06, 87.96, 88.55, 86.64, 87.55),
    ("resnet50_dilated", 0.3333, "ImageNet", "pla"): _row(87.10, 88.06, 84.19, 85.01, 86.09),
    ("resnet50_dilated", 0.3333, "MPCS-FP", "pla"): _row(87.45, 86.38, 88.18, 88.89, 87.72),
    ("resnet50_dilated", 0.3333, "MPCS-OP", "pla"): _row(87.88, 88.21, 89.52, 87.90, 88.38),
    ("resnet50_dilated", 0.3333, "MPCS-RP", "pla"): _row(87.17, 87.96, 88.76, 88.06, 87.99),
    # Table 6: all training labels.
    ("efficientnet_b2", 1.0, "ImageNet", "pla"): _row(91.91, 91.93, 91.46, 88.10, 90.85),
    ("efficientnet_b2", 1.0, "MPCS-FP", "pla"): _row(92.23, 92.72, 91.94, 88.40, 91.33),
    ("efficientnet_b2", 1.0, "MPCS-OP", "pla"): _row(92.45, 93.47, 92.44, 89.00, 91.84),
    ("efficientnet_b2", 1.0, "MPCS-RP", "pla"): _row(93.26, 93.57, 92.23, 89.57, 92.15),
    ("efficientnet_b2", 1.0, "ImageNet", "ila"): _row(92.12, 92.66, 91.83, 88.35, 91.24),
    ("efficientnet_b2", 1.0, "MPCS-FP", "ila"): _row(92.23, 93.57, 92.23, 88.40, 91.61),
    ("efficientnet_b2", 1.0, "MPCS-OP", "ila"): _row(92.67, 93.63, 92.72, 88.74, 91.94),
    ("efficientnet_b2", 1.0, "MPCS-RP", "ila"): _row(93.45, 93.38, 92.28, 89.81, 92.23),
    ("resnet50_dilated", 1.0, "ImageNet", "pla"): _row(91.46, 91.24, 90.72, 87.90, 90.33),
    ("resnet50_dilated", 1.0, "MPCS-FP", "pla"): _row(91.83, 92.67, 91.61, 89.00, 91.28),
    ("resnet50_dilated", 1.0, "MPCS-OP", "pla"): _row(93.00, 93.26, 92.28, 88.74, 91.82),
    ("resnet50_dilated", 1.0, "MPCS-RP", "pla"): _row(92.72, 93.57, 92.23, 88.40, 91.73),
    ("resnet50_dilated", 1.0, "ImageNet", "ila"): _row(91.83, 92.23, 91.61, 87.88, 90.89),
    ("resnet50_dilated", 1.0, "MPCS-FP", "ila"): _row(92.24, 92.66, 91.91, 88.40, 91.30),
    ("resnet50_dilated", 1.0, "MPCS-OP", "ila"): _row(93.26, 93.45, 92.45, 89.57, 92.18),
    ("resnet50_dilated", 1.0, "MPCS-RP", "ila"): _row(92.72, 92.72, 91.91, 88.56, 91.48),
}


#: Standard deviations over folds of :data:`PAPER_BREAKHIS` (same keys).
PAPER_BREAKHIS_STD: dict[tuple[str, float, str, str], dict[str, float]] = {
    ('efficientnet_b2', 0.3333, 'ImageNet', 'ila'): _row(6.13, 4.15, 5.74, 6.05, 5.63),
    ('efficientnet_b2', 0.3333, 'MPCS-FP', 'ila'): _row(4.46, 2.35, 2.18, 3.84, 3.20),
    ('efficientnet_b2', 0.3333, 'MPCS-OP', 'ila'): _row(3.73, 2.74, 2.19, 3.30, 2.99),
    ('efficientnet_b2', 0.3333, 'MPCS-RP', 'ila'): _row(4.20, 2.84, 4.05, 3.44, 3.63),
    ('efficientnet_b2', 0.3333, 'ImageNet', 'pla'): _row(5.15, 6.03, 4.10, 5.27, 5.14),
    ('efficientnet_b2', 0.3333, 'MPCS-FP', 'pla'): _row(4.14, 3.05, 3.28, 3.05, 3.38),
    ('efficientnet_b2', 0.3333, 'MPCS-OP', 'pla'): _row(3.20, 2.58, 3.26, 3.22, 3.07),
    ('efficientnet_b2', 0.3333, 'MPCS-RP', 'pla'): _row(3.88, 2.84, 4.01, 3.13, 3.48),
    ('resnet50_dilated', 0.3333, 'ImageNet', 'ila'): _row(4.88, 5.71, 4.74, 5.95, 5.32),
    ('resnet50_dilated', 0.3333, 'MPCS-FP', 'ila'): _row(3.96, 3.05, 2.28, 2.77, 3.01),
    ('resnet50_dilated', 0.3333, 'MPCS-OP', 'ila'): _row(3.48, 3.01, 2.19, 3.48, 3.04),
    ('resnet50_dilated', 0.3333, 'MPCS-RP', 'ila'): _row(3.40, 3.44, 3.15, 2.98, 3.24),
    ('resnet50_dilated', 0.3333, 'ImageNet', 'pla'): _row(4.80, 5.11, 4.28, 5.27, 4.86),
    ('resnet50_dilated', 0.3333, 'MPCS-FP', 'pla'): _row(3.96, 3.12, 3.00, 2.98, 3.27),
    ('resnet50_dilated', 0.3333, 'MPCS-OP', 'pla'): _row(2.89, 3.21, 3.26, 3.03, 3.09),
    ('resnet50_dilated', 0.3333, 'MPCS-RP', 'pla'): _row(2.98, 3.02, 3.55, 3.00, 3.14),
    ('efficientnet_b2', 1.0, 'ImageNet', 'pla'): _row(4.25, 4.20, 5.17, 3.88, 4.36),
    ('efficientnet_b2', 1.0, 'ImageNet', 'ila'): _row(4.18, 4.20, 4.55, 5.21, 4.54),
    ('efficientnet_b2', 1.0, 'MPCS-FP', 'pla'): _row(3.50, 3.68, 3.80, 3.26, 3.56),
    ('efficientnet_b2', 1.0, 'MPCS-FP', 'ila'): _row(3.80, 3.23, 2.98, 3.90, 3.48),
    ('efficientnet_b2', 1.0, 'MPCS-OP', 'pla'): _row(3.25, 2.98, 3.30, 3.05, 3.15),
    ('efficientnet_b2', 1.0, 'MPCS-OP', 'ila'): _row(3.36, 3.38, 2.80, 3.90, 3.36),
    ('efficientnet_b2', 1.0, 'MPCS-RP', 'pla'): _row(3.48, 3.36, 3.21, 3.79, 3.46),
    ('efficientnet_b2', 1.0, 'MPCS-RP', 'ila'): _row(3.55, 2.80, 3.49, 3.15, 3.24),
    ('resnet50_dilated', 1.0, 'ImageNet', 'pla'): _row(4.30, 5.10, 4.68, 4.12, 4.55),
    ('resnet50_dilated', 1.0, 'ImageNet', 'ila'): _row(5.12, 4.15, 4.00, 4.80, 4.52),
    ('resnet50_dilated', 1.0, 'MPCS-FP', 'pla'): _row(3.88, 2.72, 3.40, 3.15, 3.29),
    ('resnet50_dilated', 1.0, 'MPCS-FP', 'ila'): _row(3.48, 3.88, 3.68, 3.66, 3.68),
    ('resnet50_dilated', 1.0, 'MPCS-OP', 'pla'): _row(3.66, 3.08, 2.88, 3.60, 3.31),
    ('resnet50_dilated', 1.0, 'MPCS-OP', 'ila'): _row(3.40, 2.89, 3.77, 2.96, 3.26),
    ('resnet50_dilated', 1.0, 'MPCS-RP', 'pla'): _row(3.50, 2.88, 3.90, 3.05, 3.33),
    ('resnet50_dilated', 1.0, 'MPCS-RP', 'ila'): _row(3.38, 4.02, 3.21, 3.89, 3.66),
}

#: Table 7 (BACH, 100 % of the training labels): image- and patch-wise accuracy, validation
#: and test. The ImageNet row is the paper's re-implementation of its reference [57].
PAPER_BACH: dict[str, dict[str, tuple[float, float]]] = {
    "ImageNet": {"image_val": (92.40, 2.04), "image_test": (90.50, 2.10),
                 "patch_val": (80.56, 3.06), "patch_test": (80.00, 2.64)},
    "MPCS-FP": {"image_val": (92.50, 1.90), "image_test": (90.55, 2.05),
                "patch_val": (84.25, 1.88), "patch_test": (82.79, 2.05)},
    "MPCS-OP": {"image_val": (93.31, 1.85), "image_test": (91.85, 1.77),
                "patch_val": (83.90, 1.89), "patch_test": (83.13, 2.00)},
    "MPCS-RP": {"image_val": (93.00, 1.88), "image_test": (91.00, 2.32),
                "patch_val": (83.78, 2.09), "patch_test": (82.90, 2.10)},
}

#: Table 8 (BACH, test part, image-wise): {label fraction: {method: {"f1": ..., "accuracy":
#: ...}}}. The paper prints 89.75±0.02 for MPCS-RP at 80 % (kept as printed).
PAPER_BACH_FRACTIONS: dict[float, dict[str, dict[str, tuple[float, float]]]] = {
    0.05: {"MPCS-FP": {"f1": (0.50, 0.05), "accuracy": (51.25, 5.02)},
           "MPCS-OP": {"f1": (0.50, 0.05), "accuracy": (50.00, 4.80)},
           "MPCS-RP": {"f1": (0.51, 0.05), "accuracy": (53.00, 5.06)}},
    0.1: {"MPCS-FP": {"f1": (0.60, 0.05), "accuracy": (60.50, 4.88)},
          "MPCS-OP": {"f1": (0.61, 0.04), "accuracy": (61.75, 3.93)},
          "MPCS-RP": {"f1": (0.61, 0.05), "accuracy": (62.50, 4.60)}},
    0.2: {"MPCS-FP": {"f1": (0.65, 0.03), "accuracy": (69.25, 2.92)},
          "MPCS-OP": {"f1": (0.70, 0.04), "accuracy": (71.00, 3.90)},
          "MPCS-RP": {"f1": (0.68, 0.02), "accuracy": (69.00, 2.89)}},
    0.4: {"MPCS-FP": {"f1": (0.79, 0.04), "accuracy": (80.75, 3.40)},
          "MPCS-OP": {"f1": (0.81, 0.04), "accuracy": (81.75, 3.52)},
          "MPCS-RP": {"f1": (0.80, 0.03), "accuracy": (81.50, 3.05)}},
    0.6: {"MPCS-FP": {"f1": (0.87, 0.03), "accuracy": (87.70, 3.48)},
          "MPCS-OP": {"f1": (0.87, 0.03), "accuracy": (87.75, 3.10)},
          "MPCS-RP": {"f1": (0.86, 0.03), "accuracy": (86.50, 3.00)}},
    0.8: {"MPCS-FP": {"f1": (0.89, 0.03), "accuracy": (89.25, 3.02)},
          "MPCS-OP": {"f1": (0.90, 0.02), "accuracy": (90.75, 2.17)},
          "MPCS-RP": {"f1": (0.89, 0.02), "accuracy": (89.75, 0.02)}},
    1.0: {"MPCS-FP": {"f1": (0.90, 0.02), "accuracy": (90.55, 2.05)},
          "MPCS-OP": {"f1": (0.91, 0.02), "accuracy": (91.85, 1.77)},
          "MPCS-RP": {"f1": (0.90, 0.02), "accuracy": (91.00, 2.32)}},
}

#: Table 9 (UCSB BCC, test part, image-wise): {method: {mode: {metric: (mean, std)}}}.
PAPER_BCC: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    "MPCS-FP": {"finetune": {"accuracy": (98.14, 2.05), "precision": (0.99, 0.01),
                             "recall": (0.98, 0.01)},
                "linear": {"accuracy": (96.29, 1.90), "precision": (0.97, 0.01),
                           "recall": (0.96, 0.01)}},
    "MPCS-OP": {"finetune": {"accuracy": (98.18, 1.80), "precision": (0.99, 0.01),
                             "recall": (0.98, 0.01)},
                "linear": {"accuracy": (96.36, 1.88), "precision": (0.97, 0.01),
                           "recall": (0.96, 0.01)}},
    "MPCS-RP": {"finetune": {"accuracy": (98.10, 2.00), "precision": (0.985, 0.01),
                             "recall": (0.98, 0.01)},
                "linear": {"accuracy": (96.22, 2.02), "precision": (0.965, 0.01),
                           "recall": (0.96, 0.01)}},
}

#: The settings the paper's text gives (sec. 4.3-4.4), as dotted keys of our configurations:
#: pre-training per encoder, fine-tuning, the grids.
PAPER_SETTINGS: dict[str, dict[str, object]] = {
    "pretrain:resnet50_dilated": {
        "model.encoder": "resnet50_dilated", "model.weights": "imagenet", "train.epochs": 1000,
        "train.batch_size": 1024, "data.input_size": 224, "optim.name": "lars",
        "optim.lr": 1.0e-5, "loss.temperature": 0.01},
    "pretrain:efficientnet_b2": {
        "model.encoder": "efficientnet_b2", "model.weights": "imagenet", "train.epochs": 1000,
        "train.batch_size": 128, "data.input_size": 341, "optim.name": "adam",
        "optim.lr": 1.0e-5, "loss.temperature": 0.01},
    "finetune": {"optim.name": "adam", "optim.lr": 2.0e-5, "train.batch_size": 32,
                 "data.input_size": 224, "model.dropout": 0.3},
    "grid:breakhis": {"folds": 5, "baseline": "imagenet"},
    "grid:bach": {"folds": 5, "baseline": "imagenet", "transfer.patch_size": 512},
    "grid:bcc": {"folds": 5, "transfer.patch_size": 224},
}

#: Where the authors' public code differs from the paper's text (method notes).
AUTHORS_CODE: dict[str, object] = {"loss.temperature": 0.1}


def paper_row(encoder: str, label_fraction: float, method: str, metric: str
              ) -> dict[str, float] | None:
    """The paper's row for this setting, or None where the paper has none."""
    return PAPER_BREAKHIS.get((encoder, round(float(label_fraction), 4), method, metric))


def paper_std(encoder: str, label_fraction: float, method: str, metric: str
              ) -> dict[str, float] | None:
    """The paper's standard deviations for this setting, or None where it has none."""
    return PAPER_BREAKHIS_STD.get((encoder, round(float(label_fraction), 4), method, metric))
