"""The reference client of the ecosystem (tritonclient.http, sync), unmodified: binary by default, no
Content-Type header. Health, metadata and inference against the real server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.service.builders import Weights
from tests.service.oracle import run_directly
from tests.service.server import RunningServer


@pytest.fixture
def client(server: RunningServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.address)


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "unfolded")
    assert not client.is_model_ready("tampered")
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data", "model_repository", "statistics"]
    metadata = client.get_model_metadata("digits")
    assert metadata["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("version", ["", "unfolded"], ids=["default", "unfolded"])
def test_infer(
    client: triton.InferenceServerClient,
    mixed_repository: tuple[Path, dict[str, Weights]],
    rng: np.random.Generator,
    binary: bool,
    version: str,
) -> None:
    x = rng.uniform(-1, 1, (4, 1, 8, 8)).astype(np.float32)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = None if binary else [triton.InferRequestedOutput("logits", binary_data=False)]
    result = client.infer("digits", [tensor], model_version=version, outputs=outputs, request_id="tc-1")
    expected = run_directly(mixed_repository[0] / "digits", version or "folded", x)
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-6)
    response = result.get_response()
    assert response["id"] == "tc-1" and response["model_version"] == (version or "folded")


def test_errors_reach_the_client_readably(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("input", [1, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(InferenceServerException, match="model 'tampered' is not ready: folded and unfolded"):
        client.infer("tampered", [tensor])
    with pytest.raises(InferenceServerException, match="unknown model 'nope'; available models: bad_json, "):
        client.infer("nope", [tensor])
    assert client.is_server_live()  # the connection survives the errors


def test_aio_client_with_octet_stream_content_type(
    server: RunningServer, mixed_repository: tuple[Path, dict[str, Weights]], rng: np.random.Generator
) -> None:
    """The aio client sends Content-Type: application/octet-stream even for JSON; both must work."""
    import asyncio

    import tritonclient.http.aio as triton_aio

    x = rng.uniform(-1, 1, (3, 1, 8, 8)).astype(np.float32)

    async def run() -> tuple[np.ndarray, np.ndarray]:
        client = triton_aio.InferenceServerClient(server.address)
        try:
            results = []
            for binary in (True, False):
                tensor = triton_aio.InferInput("input", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x, binary_data=binary)
                outputs = [triton_aio.InferRequestedOutput("logits", binary_data=binary)]
                result = await client.infer("digits", [tensor], model_version="unfolded", outputs=outputs)
                results.append(result.as_numpy("logits"))
            return results[0], results[1]
        finally:
            await client.close()

    binary_logits, json_logits = asyncio.run(run())
    expected = run_directly(mixed_repository[0] / "digits", "unfolded", x)
    np.testing.assert_allclose(binary_logits, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(json_logits, expected, rtol=1e-5, atol=1e-6)
