"""kernelscale: training-free resolution scaling of trained networks by weight surgery."""

__version__ = "0.1.0"
