"""The client commands of `tunevault`, grouped by what they act on; each talks to a server over gRPC only."""
