"""tunevault.client: the thin Python client and the `tunevault` CLI (grpcio + protobuf + tqdm)."""

from tunevault.client.client import Client

__all__ = ["Client"]
