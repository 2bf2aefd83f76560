"""P3: forward + backward time of our NTXentLoss / lightly.loss.NTXentLoss.

Both at N pairs (2N views), d dimensions, temperatures 0.1 and 0.01, on the same random
projections. The loss values and the input gradients are checked to agree (1e-5) before
timing. Reported: median over repetitions, interleaving the two implementations.

Run: ``.venv/bin/python bench/p3_ntxent.py``
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from common import header, median, peak_rss_mb, verdict

from mpcs.losses import NTXentLoss

TARGET = 1.0
TOL = 1e-5


def fwd_bwd(loss_fn: torch.nn.Module, z1: torch.Tensor, z2: torch.Tensor
            ) -> tuple[float, torch.Tensor, torch.Tensor, float]:
    a = z1.detach().clone().requires_grad_(True)
    b = z2.detach().clone().requires_grad_(True)
    t0 = time.perf_counter()
    loss = loss_fn(a, b)
    loss.backward()
    seconds = time.perf_counter() - t0
    return float(loss), a.grad, b.grad, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024, help="pairs (2N views)")
    ap.add_argument("--d", type=int, default=128, help="projection dimension")
    ap.add_argument("--reps", type=int, default=30, help="timed repetitions per implementation")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from lightly.loss import NTXentLoss as LightlyNTXent

    header("P3 NT-Xent forward+backward")
    gen = torch.Generator().manual_seed(0)
    z1 = torch.randn(args.n, args.d, generator=gen)
    z2 = 0.3 * z1 + torch.randn(args.n, args.d, generator=gen)  # weakly correlated positives
    ratios = []
    for tau in (0.1, 0.01):
        ours = NTXentLoss(temperature=tau)
        ref = LightlyNTXent(temperature=tau, memory_bank_size=0)
        lo, g1o, g2o, _ = fwd_bwd(ours, z1, z2)
        lr, g1r, g2r, _ = fwd_bwd(ref, z1, z2)
        dl = abs(lo - lr)
        dg = max((g1o - g1r).abs().max().item(), (g2o - g2r).abs().max().item())
        same = dl <= TOL * max(1.0, abs(lr)) and dg <= TOL
        print(f"tau {tau}: loss ours {lo:.6f} lightly {lr:.6f} |diff| {dl:.2e}; "
              f"max |grad diff| {dg:.2e}  {'same to 1e-5' if same else 'DIFFERENT'}")
        t_ours, t_ref = [], []
        for i in range(args.warmup + args.reps):
            a = fwd_bwd(ours, z1, z2)[3]
            b = fwd_bwd(ref, z1, z2)[3]
            if i >= args.warmup:
                t_ours.append(a)
                t_ref.append(b)
        r = median(t_ours) / median(t_ref)
        ratios.append(r)
        print(f"tau {tau}: N={args.n} d={args.d}, median of {args.reps}: ours "
              f"{median(t_ours) * 1e3:.2f} ms, lightly {median(t_ref) * 1e3:.2f} ms, "
              f"ratio {r:.3f}  peak RSS {peak_rss_mb():.0f} MiB")
    print(f"peak RSS {peak_rss_mb():.0f} MiB")
    print(verdict("P3 ratio (ours / lightly, time, worst tau)", max(ratios), TARGET, False))


if __name__ == "__main__":
    main()
