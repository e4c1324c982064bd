"""SMTP: the receiver, its sessions, pool and mail transactions, the one module that maps
SMTP failures into the exception tree, and ``flowrt test smtp``."""

# The package re-exports nothing (importing it stays cheap): its modules are its public face.
__all__: list[str] = []
