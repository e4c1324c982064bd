"""Connectivity tests: try a mail server the way a flow would, stage by stage.

Each check prints its stages as they happen (connect, TLS with the server's chain and
whether the keystore trusts it, greeting and capabilities, authentication, mailbox checks)
and ends in one verdict. Failures are MessagingException chains with hints, the same a
deployed flow would record.
"""

from flowrt.connectivity.report import ConnectivityReport, Stage
from flowrt.connectivity.target import CheckOptions

__all__ = ["CheckOptions", "ConnectivityReport", "Stage"]
