"""SMTP: the receiver, its sessions, pool and mail transactions, the one module that maps
SMTP failures into the exception tree, and ``flowrt test smtp``."""
