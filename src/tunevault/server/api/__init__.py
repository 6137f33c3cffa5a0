"""gRPC servicers and interceptors: validate each request, then hand it to the store."""
