"""Open Inference Protocol v2 datatypes on the wire: the contract's V2 ↔ numpy map, onnxruntime's type names,
and lookups that refuse with a BadRequestError."""

from __future__ import annotations

import numpy as np

from bnfold.contract.datatypes import NUMPY_TO_V2, V2_TO_NUMPY
from bnfold.contract.datatypes import v2_name as v2_name
from bnfold.service.errors import BadRequestError

__all__ = ["NUMPY_TO_V2", "ORT_TO_V2", "V2_TO_NUMPY", "numpy_dtype", "v2_name"]

# onnxruntime's type strings ("tensor(float)") -> V2 name.
ORT_TO_V2: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}


def numpy_dtype(v2_name: str) -> np.dtype:
    """The numpy dtype of a V2 datatype name; BadRequestError for names bnfold does not serve."""
    try:
        return V2_TO_NUMPY[v2_name]
    except (KeyError, TypeError):
        raise BadRequestError(f"unsupported datatype {v2_name!r}; use one of {', '.join(V2_TO_NUMPY)}") from None
