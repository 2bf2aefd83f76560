"""Where pre-training pairs come from: which two scales of a sample
(:mod:`~mpcs.data.pairs.samplers`: the paper's fixed / ordered / random strategies and
continuous scales) and the sources that render them: BreakHis' four magnifications
(:mod:`~mpcs.data.pairs.breakhis`), nested crops of single-scale images
(:mod:`~mpcs.data.pairs.zoom`), whole-slide images (:mod:`~mpcs.data.pairs.wsi`), and a
configuration's choice or mixture of them (:mod:`~mpcs.data.pairs.sources`)."""
