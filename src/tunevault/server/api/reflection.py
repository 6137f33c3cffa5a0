"""Server reflection under both service names: grpc.reflection.v1 (newer grpcurl, buf curl) and v1alpha.

grpcio-reflection 1.85 ships only v1alpha. The v1 reflection.proto is the v1alpha file with
another package name: the same messages, field numbers and types, so the same bytes on the
wire. The v1 file descriptor is therefore built from the v1alpha one by renaming its package,
added to the descriptor pool (so reflection can describe itself under v1 too), and the v1
service name is routed to grpcio's own v1alpha servicer.
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha

V1_PACKAGE = "grpc.reflection.v1"
V1_FILE = "grpc/reflection/v1/reflection.proto"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
METHOD = "ServerReflectionInfo"


def v1_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The v1 reflection.proto: v1alpha's messages and service under the v1 package."""
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha.DESCRIPTOR.CopyToProto(proto)
    old_prefix = f".{proto.package}."
    proto.name, proto.package = V1_FILE, V1_PACKAGE
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old_prefix):
                field.type_name = f".{V1_PACKAGE}." + field.type_name.removeprefix(old_prefix)
    for service in proto.service:
        for method in service.method:
            method.input_type = f".{V1_PACKAGE}." + method.input_type.removeprefix(old_prefix)
            method.output_type = f".{V1_PACKAGE}." + method.output_type.removeprefix(old_prefix)
    proto.ClearField("options")  # v1alpha's Java/C# package options name v1alpha
    return proto


def _register_v1_descriptor() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(V1_FILE)
    except KeyError:
        pool.Add(v1_file_descriptor())


def enable(service_names: tuple[str, ...], server: grpc.Server) -> None:
    """Serves reflection for `service_names` (plus both reflection services) under v1 and v1alpha."""
    _register_v1_descriptor()
    names = (*service_names, reflection.SERVICE_NAME, V1_SERVICE_NAME)
    servicer = reflection.ReflectionServicer(names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=v1alpha.ServerReflectionRequest.FromString,
        response_serializer=v1alpha.ServerReflectionResponse.SerializeToString,
    )
    for service in (reflection.SERVICE_NAME, V1_SERVICE_NAME):
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {METHOD: handler}),))
