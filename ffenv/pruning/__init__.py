"""Pruning, along the data: importance (once) → budget projector → the two engines behind one
:class:`~ffenv.pruning.engines.Pruner` protocol → Calib (post-pruning ridge compensation)."""
