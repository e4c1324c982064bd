"""The operations surface: a read-only web monitor, its JSON API, Prometheus metrics and the
health endpoints, served by ``flowrt run --http ADDR`` or standalone by ``flowrt monitor``.

- :mod:`flowrt.monitor.app`: the routes (HTML pages, ``/api``, ``/metrics``, health).
- :mod:`flowrt.monitor.views`: what the pages and the API show, read from the tenant.
- :mod:`flowrt.monitor.metrics`: the Prometheus collector for what the tenant's files know.
- :mod:`flowrt.monitor.auth`: the bearer token (``flowrt monitor token``).
- :mod:`flowrt.monitor.server`: the listening socket, loopback rules, TLS, uvicorn.
"""

__all__: list[str] = []
