"""The ``flowrt`` command. It knows nothing of protocols: it calls the library and renders."""

# The package re-exports nothing (importing it stays cheap): its modules are its public face.
__all__: list[str] = []
