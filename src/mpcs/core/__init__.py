"""The bottom layer: what every other layer may use and nothing here imports from them.

* :mod:`mpcs.core.errors`: the errors that reach the user as one line (exit code 2);
* :mod:`mpcs.core.io`: THE atomic writer (every file mpcs writes goes through it) and the
  checks of output paths;
* :mod:`mpcs.core.tables`: safe CSV cells (formula neutralising, undecodable bytes);
* :mod:`mpcs.core.checkpoint`: THE checkpoint reader/writer (``torch.load`` with
  ``weights_only=True``, safetensors, checkpoint kinds);
* :mod:`mpcs.core.runtime`: device, autocast, seeding, the decoded-image cache folder;
* :mod:`mpcs.core.vocab`: the names of the domain (magnifications, pair strategies and
  their paper labels, baselines, classes).
"""
