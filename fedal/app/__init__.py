"""The application layer: the Flower ServerApp, the simulation runner, the benchmarks,
preflight checks, seed grids and diagnoses.

Dependencies flow one way (README, "Layers"): :mod:`fedal.cli` -> ``fedal.app`` ->
``clients`` -> ``strategies`` -> the core modules of ``fedal``. Only this layer (and
``clients``) may import Flower.
"""
