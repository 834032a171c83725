"""bnfold's .proto speaks the published protocol: every message, field, enum value and method it declares has
the name, number and type of Triton's compiled protocol (tritonclient.grpc's descriptors, what the ecosystem's
clients are built from); and the committed Python modules are what the generator makes of the .proto."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from tritonclient.grpc import model_config_pb2, service_pb2

from bnfold.service.grpc_v2 import inference_pb2

ROOT = Path(__file__).resolve().parents[2]
TRITON = descriptor_pool.Default()  # tritonclient registers its protocol in protobuf's default pool
assert service_pb2.DESCRIPTOR.package == model_config_pb2.DESCRIPTOR.package == "inference"


def messages(descriptor: Descriptor) -> Iterator[Descriptor]:
    yield descriptor
    for nested in descriptor.nested_types:
        yield from messages(nested)


OURS = [m for top in inference_pb2.DESCRIPTOR.message_types_by_name.values() for m in messages(top)]


def signature(field: FieldDescriptor) -> tuple[object, ...]:
    kind = field.message_type or field.enum_type
    return field.number, field.type, field.is_repeated, kind.full_name if kind else None


def test_bnfold_messages_live_outside_the_default_pool() -> None:
    """Both protocols load in one process (a server that also runs tritonclient, like these tests)."""
    assert inference_pb2.DESCRIPTOR.pool is not TRITON


@pytest.mark.parametrize("message", OURS, ids=[m.full_name for m in OURS])
def test_every_field_matches_the_published_protocol(message: Descriptor) -> None:
    published = TRITON.FindMessageTypeByName(message.full_name)
    for field in message.fields:
        assert field.name in published.fields_by_name, f"{message.full_name}.{field.name} is not in the protocol"
        assert signature(field) == signature(published.fields_by_name[field.name]), f"{message.full_name}.{field.name}"


def test_enums_and_methods_match_the_published_protocol() -> None:
    ours = inference_pb2.DESCRIPTOR.enum_types_by_name["DataType"]
    published = TRITON.FindEnumTypeByName("inference.DataType")
    assert {v.name: v.number for v in ours.values} == {v.name: v.number for v in published.values}
    service = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    triton_service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in service.methods:
        theirs = triton_service.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            theirs.input_type.full_name,
            theirs.output_type.full_name,
        )
        assert (method.client_streaming, method.server_streaming) == (theirs.client_streaming, theirs.server_streaming)
    streamed = service.methods_by_name["ModelStreamInfer"]
    assert (streamed.client_streaming, streamed.server_streaming) == (True, True)


def test_the_committed_modules_are_current() -> None:
    script = ROOT / "scripts" / "generate_grpc_stubs.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr) == (0, "")
