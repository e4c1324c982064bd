"""Adapters turn wire data into an exchange (senders) and an exchange into wire data
(receivers). Each registers in one place, read by :mod:`flowrt.adapters.registry` (the seam):
its DSL block specs, free of protocol imports, and its factories, imported only when a flow
runs, so that validating a flow never loads a protocol library."""
