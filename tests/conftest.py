"""Test-session setup.

Triton decides between compiling and interpreting when its modules are first imported, and
other test modules (diffusers through torch) may import it during collection. Without a CUDA
device the Triton kernels can only run under the interpreter, so select it before anything
imports triton.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
