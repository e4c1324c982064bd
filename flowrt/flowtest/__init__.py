"""Flow tests: a TOML file beside a flow states input mails and what must come out; they
run on the simulation runtime (:mod:`flowrt.runtime.simulation`), with no network.

``spec.py`` reads a test file (every problem with file:line:col), ``mails.py`` builds the
input mails, ``run.py`` runs the cases and compares, ``junit.py`` writes JUnit XML.
"""

__all__: list[str] = []
