"""tunevault.server.admin: the commands that run on the appliance itself (serve, audit, models import).

The `tunevault` command finds them through tunevault.client.server_commands; see cli.py.
"""
