"""tunevault.server: the appliance (gRPC API, SQLite store, scheduler, training workers).

The gRPC process imports nothing that imports torch; training and inference run in child
processes (tunevault.server.worker.train, tunevault.server.inference.process).
"""
