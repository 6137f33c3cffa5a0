"""Encryption at rest: the key store, sealed files and folders, and the job workspace they are opened into."""
