"""The session's Ollama behind a timing proxy, when the plugin does not answer for the model itself.

The embedded backend (llama.cpp) and replay answer through the plugin's own Ollama-API front, which times each
answer. ``ollama serve`` (binary), the Docker image and a user's URL answer the app directly; for them the session's
``OLLAMA_HOST`` points at a ``TimingProxy`` on loopback instead, which forwards every request to the real server and
logs the same TTFT, tokens/s and chunk times (``modelapi.timing_proxy``). The endpoint keeps the real server's URL in
``extra["upstream"]``.
"""

from __future__ import annotations

import dataclasses

from pytest_llmtrace.modelapi.timing_proxy import TimingProxy
from pytest_llmtrace.services.base import Endpoint

TIMED_BACKENDS = frozenset({"binary", "docker", "url"})


class TimedOllama:
    """A ``TimingProxy`` in front of a ready Ollama ``Endpoint``; ``start`` returns the endpoint the app should use."""

    def __init__(self, upstream: Endpoint) -> None:
        self.upstream = upstream
        self._proxy = TimingProxy(upstream.url)

    def start(self) -> Endpoint:
        self._proxy.start()
        url = self._proxy.url
        extra = {**self.upstream.extra, "upstream": self.upstream.url}
        port = int(url.rsplit(":", 1)[1])
        return dataclasses.replace(self.upstream, url=url, host="127.0.0.1", port=port, extra=extra)

    def stop(self) -> None:
        self._proxy.stop()
