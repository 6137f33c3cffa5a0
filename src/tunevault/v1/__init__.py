"""tunevault.v1: generated protobuf messages and gRPC stubs (see proto/generate.py)."""
