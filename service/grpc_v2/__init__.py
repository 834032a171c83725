"""The Open Inference Protocol v2 over gRPC (`inference.GRPCInferenceService`), beside the HTTP API.

proto/inference.proto  the protocol (field numbers of the published KServe/Triton protocol)
inference_pb2*.py      generated from it by scripts/generate_grpc_stubs.py (committed; a test keeps them current)
tensors.py             ModelInferRequest -> the V2 document + binary tail the HTTP path decodes; outputs -> proto
servicer.py            the RPCs: translate, call the same handler and data plane as HTTP, map errors to codes
server.py              the grpc.aio server, and `serve`: HTTP and gRPC in one process and event loop
"""
