"""Test-session setup.

Triton decides between compiling and interpreting when its modules are first imported, and
other test modules (diffusers through torch) may import it during collection. Without a CUDA
device the Triton kernels can only run under the interpreter, so select it before anything
imports triton.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one torch thread: tiny models and small float64 convs run many
    times faster on one thread than on two contended ones on the 2-core CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
