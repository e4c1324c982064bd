"""The runtime: deployed flows, the runtime process, its status, locks and idempotency."""
