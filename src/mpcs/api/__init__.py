"""Using trained models on new images: embeddings, predictions and a plain-timm export.

Everything comes from the checkpoint (no configuration file; :func:`mpcs.engine.loading.
load_model` reads any mpcs checkpoint):

* :func:`embed` (:mod:`mpcs.api.embed`) writes one row per image (path, BreakHis fields when
  the name parses, the pooled features ``f0..f{D-1}``) to ``.parquet`` (needs pyarrow) or
  ``.csv``;
* :func:`predict` (:mod:`mpcs.api.predict`) writes class probabilities and the prediction per
  image of a fine-tuned ``best.pt``, plus a patient-level table ``<out>_patients.csv`` when
  BreakHis names parse;
* :func:`export_encoder` (:mod:`mpcs.api.export`, :mod:`mpcs.api.hub`) writes
  ``model.safetensors``, ``config.json`` and a ``README.md`` model card in the layout of
  timm's ``save_for_hf``, so that plain timm loads it
  (``timm.create_model("local-dir:DIR", pretrained=True, num_classes=0)``, offline).

Images are listed by :func:`mpcs.data.images.list_images`, decoded and resized on background
threads while the model runs on the previous batch (:mod:`mpcs.models.features`), and the
rows are written batch by batch (:mod:`mpcs.api.tables`): memory stays flat however many
images there are.

Written tables go through :mod:`mpcs.core.tables`: a path that starts with ``= + - @`` (or a tab)
is written with an apostrophe in front, so no spreadsheet runs it as a formula, and bytes of a
file name that are not UTF-8 are written as ``\\xNN`` (one warning says how many names); the
returned DataFrame keeps the exact names.

The package re-exports nothing: import from the module (``from mpcs.api.predict import
predict``), which also keeps a command's imports to what it needs.

Example:
    >>> from mpcs.api.embed import embed
    >>> from mpcs.api.predict import predict
    >>> df = embed("runs/demo/checkpoints/last.pt", "data/new", "emb.csv")  # doctest: +SKIP
    >>> pred = predict("runs/ft/best.pt", "data/new", "pred.csv")  # doctest: +SKIP
"""
