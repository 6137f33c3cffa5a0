"""grpc.health.v1 check for probes and `helm test`: exit 0 only when the service is SERVING."""
import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

parser = argparse.ArgumentParser(prog="health_check")
parser.add_argument("address", help="host:port of the tunevault gRPC server")
parser.add_argument("service", nargs="?", default="", help="service name; empty means the whole server")
parser.add_argument("--ca", help="PEM CA bundle that signed the server certificate (TLS)")
parser.add_argument("--cert", help="PEM client certificate, when the server requires one")
parser.add_argument("--key", help="PEM client key, when the server requires one")
parser.add_argument("--server-name", help="name to verify the server certificate against (TLS)")
parser.add_argument("--timeout", type=float, default=4.0)
args = parser.parse_args()


def read(path):
    if not path:
        return None
    with open(path, "rb") as handle:
        return handle.read()


if args.server_name or args.ca or args.cert:
    credentials = grpc.ssl_channel_credentials(read(args.ca), read(args.key), read(args.cert))
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    channel = grpc.secure_channel(args.address, credentials, options)
else:
    channel = grpc.insecure_channel(args.address)

try:
    request = health_pb2.HealthCheckRequest(service=args.service)
    response = health_pb2_grpc.HealthStub(channel).Check(request, timeout=args.timeout)
except grpc.RpcError as error:
    print(f"{args.address} {args.service!r}: {error.code().name} {error.details()}", file=sys.stderr)
    sys.exit(1)
finally:
    channel.close()

status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
print(f"{args.address} {args.service!r}: {status}")
sys.exit(0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1)
