"""Open Inference Protocol v2 datatype names and their numpy dtypes (little-endian, as on the wire)."""

from __future__ import annotations

import numpy as np

from bnfold.service.errors import BadRequestError

# V2 name -> numpy dtype. BYTES is not served: bnfold models take numeric tensors only.
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}

NUMPY_TO_V2: dict[np.dtype, str] = {dtype: name for name, dtype in V2_TO_NUMPY.items()}

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


def v2_name(dtype: np.dtype) -> str:
    """The V2 datatype name of a numpy dtype (byte order ignored)."""
    return NUMPY_TO_V2[np.dtype(dtype)]
