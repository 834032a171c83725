"""Open Inference Protocol (V2) datatype names and their numpy dtypes (little-endian, as on the wire).

The one map used by the writer (model.json `datatype`), the reader and the service's wire format. BYTES is
not part of it: bnfold models take and return numeric tensors only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bnfold.contract.errors import ContractError

V2_TO_NUMPY: dict[str, np.dtype[Any]] = {
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

NUMPY_TO_V2: dict[np.dtype[Any], str] = {dtype: name for name, dtype in V2_TO_NUMPY.items()}


def numpy_dtype(v2_name: str) -> np.dtype[Any]:
    """The numpy dtype of a V2 datatype name; ContractError for a name outside the map."""
    try:
        return V2_TO_NUMPY[v2_name]
    except (KeyError, TypeError):
        raise ContractError(f"unsupported datatype {v2_name!r}; use one of {', '.join(V2_TO_NUMPY)}") from None


def v2_name(dtype: Any) -> str:
    """The V2 datatype name of a numpy dtype (byte order ignored); ContractError for other dtypes."""
    if isinstance(dtype, np.dtype):
        known = NUMPY_TO_V2.get(dtype)  # a native-order dtype: one lookup (on every response's outputs)
        if known is not None:
            return known
    try:
        dtype = np.dtype(dtype)
        return NUMPY_TO_V2[dtype.newbyteorder("<")]
    except (KeyError, TypeError):
        raise ContractError(
            f"dtype {dtype} has no Open Inference Protocol datatype; use one of "
            f"{', '.join(str(dtype) for dtype in NUMPY_TO_V2)}"
        ) from None
