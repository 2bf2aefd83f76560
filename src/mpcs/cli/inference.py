"""``mpcs embed``, ``predict``, ``export``: using a trained model on new images."""

from __future__ import annotations

import argparse

from mpcs.api.embed import embed
from mpcs.api.export import export_encoder
from mpcs.api.predict import predict


def cmd_embed(args: argparse.Namespace) -> int:
    df = embed(args.checkpoint, args.images, args.out, batch_size=args.batch_size,
               skip_bad=args.skip_bad, progress=not args.quiet, device=args.device,
               workers=args.workers, amp=args.amp, keep_features=False)
    skipped = df.attrs.get("skipped", [])
    print(f"wrote {len(df)} feature rows to {args.out}"
          + (f"; skipped {len(skipped)} unreadable image(s)" if skipped else ""))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    df = predict(args.checkpoint, args.images, args.out, batch_size=args.batch_size,
                 skip_bad=args.skip_bad, progress=not args.quiet, device=args.device,
                 workers=args.workers, amp=args.amp)
    patients = df.attrs.get("patients")
    print(f"wrote {len(df)} predictions to {args.out}"
          + (f" and {len(patients)} patient-level rows beside it"
             if patients is not None and len(patients) else ""))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    path = export_encoder(args.checkpoint, args.out, report=args.report)
    print(f"wrote {path}: model.safetensors, config.json (timm's save_for_hf layout) and "
          f"README.md (model card); load it with timm.create_model(\"local-dir:{path}\", "
          "pretrained=True, num_classes=0)")
    return 0
