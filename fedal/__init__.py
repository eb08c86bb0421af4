"""fedal: federated active learning on Flower, PyTorch and Ray."""

__version__ = "0.1.0"
