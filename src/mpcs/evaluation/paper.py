"""The paper's BreakHis numbers (WACV 2023, Tables 5 and 6), for side-by-side reports.

Keys: (encoder, label fraction, method, metric) -> {magnification: mean %} with a "Mean"
entry. Encoders use mpcs names; label fraction 0.3333 (20 % of all images = a third of the training
part) is Table 5 (limited labels), 1.0 is
Table 6 (fully supervised).
"""

from __future__ import annotations

MAGS = ("40X", "100X", "200X", "400X", "Mean")


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


def paper_row(encoder: str, label_fraction: float, method: str, metric: str
              ) -> dict[str, float] | None:
    """The paper's row for this setting, or None where the paper has none."""
    return PAPER_BREAKHIS.get((encoder, round(float(label_fraction), 4), method, metric))
