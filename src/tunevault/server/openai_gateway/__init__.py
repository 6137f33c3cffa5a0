"""The OpenAI-compatible HTTP front door: OpenAI's request shapes in, the gRPC service underneath."""
