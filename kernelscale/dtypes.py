"""Dtype names as safetensors spells them, their sizes, and their torch and numpy counterparts."""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

from kernelscale.errors import UnsupportedTensorError

DTYPE_ITEMSIZE: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
}
"""Bytes per element of every dtype name kernelscale reads, as safetensors spells them."""

TORCH_ATTR: dict[str, str] = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8",
    "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu",
}

TORCH_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, attr) for name, attr in TORCH_ATTR.items() if hasattr(torch, attr)}
"""The torch dtype of each name this torch build has."""

DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in TORCH_DTYPES.items()}

# Dtypes kernelscale resizes: computed in float32 (float64 for F64) and rounded once.
RESIZABLE = ("F64", "F32", "F16", "BF16")


def dtype_name(dtype: Union[str, torch.dtype, np.dtype]) -> str:
    """The safetensors name ("F16", "BF16", …) of a torch or numpy dtype, or a name itself.

    Raises UnsupportedTensorError for a dtype safetensors has no name for.
    """
    if isinstance(dtype, str):
        if dtype in DTYPE_ITEMSIZE:
            return dtype
        raise UnsupportedTensorError(f"unknown dtype name {dtype!r}")
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPE_NAMES:
            return DTYPE_NAMES[dtype]
        raise UnsupportedTensorError(f"torch dtype {dtype} has no safetensors name")
    try:
        probe = torch.from_numpy(np.zeros(1, dtype=np.dtype(dtype))).dtype
    except TypeError:
        raise UnsupportedTensorError(f"numpy dtype {dtype} has no safetensors name") from None
    return dtype_name(probe)
