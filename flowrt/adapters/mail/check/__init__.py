"""What the connectivity tests of the three protocols share (stages, TLS, chain fetch)
and the parsed ``flowrt test`` target."""

# The package re-exports nothing (importing it stays cheap): its modules are its public face.
__all__: list[str] = []
