"""k3snoded: a daemon that forms and keeps a highly available k3s cluster on bare metal."""

__version__ = "0.1.0"
