"""MIME: mail bytes -> exchange (read, sealed), exchange -> mail (compose, content, wire),
S/MIME."""

# The package re-exports nothing (importing it stays cheap): its modules are its public face.
__all__: list[str] = []
