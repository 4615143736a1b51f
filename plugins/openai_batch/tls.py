"""The TLS trust every API client of a process uses: the SDKs' own default, built once per process.

Both SDKs (``openai`` and ``anthropic``) send their calls through ``httpx2``, whose client builds a
new :class:`ssl.SSLContext` for each client it makes, and loading the CA certificates into it costs
about 45 ms (0.40 s for 9 clients, profiled). A task that makes several clients (a run under
``dag.test()``, the triggerer's clients, the lean status poller) would pay that each time.
:func:`client_ssl_context` builds the context the SDKs would build, with ``httpx2``'s own function
and the same environment (``SSL_CERT_FILE``, then ``SSL_CERT_DIR``, else the system's store), once
per process and per value of those two variables, so every client, the poller included, verifies
servers against the same certificates.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl

__all__ = ["client_ssl_context"]

_LOCK = threading.Lock()
_CONTEXTS: dict[tuple[str, str], ssl.SSLContext] = {}


def client_ssl_context() -> ssl.SSLContext:
    """Return the SDKs' default TLS context (server certificates verified), shared within the process.

    The first call per ``SSL_CERT_FILE``/``SSL_CERT_DIR`` pair reads the certificates (it blocks:
    call it from a worker thread in an event loop); the later ones return the same object.
    """
    key = (os.environ.get("SSL_CERT_FILE", ""), os.environ.get("SSL_CERT_DIR", ""))
    with _LOCK:
        context = _CONTEXTS.get(key)
        if context is None:
            import httpx2

            # verify=True and trust_env=True: what httpx2.Client() does when the SDK makes it.
            context = httpx2.create_ssl_context(verify=True, trust_env=True)
            _CONTEXTS[key] = context
        return context
