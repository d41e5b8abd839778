"""Training: the loop (``loop.train``), one step's methods (``methods``), the dataset the config names
(``data``), evaluation (``evaluate``), checkpoints (``checkpoint``), console output (``console``), the
experiment trackers (``trackers``), what a run records about where it ran (``provenance``), the
process group (``distributed``) and how a run stops early (``interrupt``, ``errors``, torch-free). The
configuration a run is trained from is :mod:`harness.config`. Import the modules directly::

    from harness.config import TrainConfig
    from harness.train.loop import train
"""
