"""Adapters turn wire data into an exchange (senders) and an exchange into wire data
(receivers). Each adapter keeps its DSL spec in its own ``*_spec`` module, free of protocol
imports, so that validating a flow never loads a protocol library."""
