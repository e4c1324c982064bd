"""DSL specs of the mail adapter's blocks (``sender mail``, ``receiver mail``) and the
connection settings they share. No protocol library is imported here, so validating a flow
stays light."""

# The package re-exports nothing (importing it stays cheap): its modules are its public face.
__all__: list[str] = []
