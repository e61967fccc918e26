"""The backends that apply R, by name, and the environment variable that picks one (DESIGN §7).

Torch-free, so that the command line's help can name them without importing torch (1.9 s);
:mod:`kernelscale.dispatch` chooses among them.
"""

ENV_VAR = "KERNELSCALE_BACKEND"
BACKENDS = ("torch", "triton", "auto")
