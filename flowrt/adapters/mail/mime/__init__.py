"""MIME: mail bytes -> exchange (read), exchange -> mail (compose), S/MIME."""

# The package re-exports nothing (importing it stays cheap): its modules are its public face.
__all__: list[str] = []
