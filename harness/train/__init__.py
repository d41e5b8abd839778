"""CIFAR-100 training: configuration (``config``, no torch), loss methods (``methods``), checkpoints
(``checkpoint``) and the loop (``loop.train``). Import the torch-using modules directly::

    from harness.train.config import TrainConfig
    from harness.train.loop import train
"""
