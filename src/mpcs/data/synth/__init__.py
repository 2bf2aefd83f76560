"""Synthetic stand-ins for the data sets, written in their official layouts: BreakHis
(:mod:`~mpcs.data.synth.breakhis`), BACH and UCSB BCC (:mod:`~mpcs.data.synth.transfer`),
and archives packed like the official downloads (:mod:`~mpcs.data.synth.archive`).

``SynthConfig`` and ``write_breakhis`` are re-exported here (``mpcs.data.synth.write_breakhis``).
"""

from mpcs.data.synth.breakhis import SynthConfig, write_breakhis

__all__ = ["SynthConfig", "write_breakhis"]
