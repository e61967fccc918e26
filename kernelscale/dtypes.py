"""Dtype names as safetensors spells them, and their torch and numpy counterparts."""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

from kernelscale.errors import UnsupportedTensorError

TORCH_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _attr):
        TORCH_DTYPES[_name] = getattr(torch, _attr)

DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in TORCH_DTYPES.items()}

# Dtypes kernelscale resizes: computed in float32 (float64 for F64) and rounded once.
RESIZABLE = ("F64", "F32", "F16", "BF16")


def dtype_name(dtype: Union[str, torch.dtype, np.dtype]) -> str:
    """The safetensors name ("F16", "BF16", …) of a torch or numpy dtype, or a name itself."""
    if isinstance(dtype, str):
        if dtype in TORCH_DTYPES or dtype.startswith("F8"):
            return dtype
        raise UnsupportedTensorError(f"unknown dtype name {dtype!r}")
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPE_NAMES:
            return DTYPE_NAMES[dtype]
        raise UnsupportedTensorError(f"unsupported torch dtype {dtype}")
    np_dtype = np.dtype(dtype)
    probe = torch.from_numpy(np.zeros(1, dtype=np_dtype)).dtype
    return DTYPE_NAMES[probe]


def of_tensor(value: object) -> str:
    """The safetensors dtype name of a torch tensor or numpy array."""
    return dtype_name(value.dtype)  # type: ignore[attr-defined]
