"""DSL specs of the mail adapter's blocks (``sender mail``, ``receiver mail``) and the
connection settings they share. No protocol library is imported here, so validating a flow
stays light."""
