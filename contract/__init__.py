"""The model repository contract, shared by its writer (bnfold.models), its reader (bnfold.service) and the
folding engine: torch-free, onnx-free (numpy, pydantic and the standard library only).

    bnfold.contract.agreement    the agreement rule of two outputs, with its one non-finite policy
    bnfold.contract.layout       the format string, entry names, file and variant names
    bnfold.contract.datatypes    the Open Inference Protocol (V2) datatype ↔ numpy dtype map
    bnfold.contract.manifest     the pydantic schema of model.json
    bnfold.contract.hashing      streamed SHA-256 of the entry's files
    bnfold.contract.external_data  the external data files an ONNX file loads, and the rules they obey
    bnfold.contract.calibration  reading calibration.npz (no pickles) against the declared inputs
    bnfold.contract.npz_limits   the size limits of a calibration archive, read from its .npy headers
    bnfold.contract.entry_files  an entry's files: plain names, regular files only, opened without blocking
    bnfold.contract.op_count     counting BatchNormalization nodes of an ONNX model (duck-typed, no onnx import)

Every refusal is a `ContractError` (a ValueError) whose message names the problem; callers wrap it in their
own error type. Specification: docs/repository-format.md.
"""
