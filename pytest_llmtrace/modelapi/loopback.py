"""Who may ask the Ollama-API front: a ``Host`` naming the loopback interface (a page whose name was rebound to
127.0.0.1 still sends its own name), and an ``Origin``, when a browser sends one, of a page served from loopback.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable


def _host_name(value: str) -> str | None:
    """The name in a Host header without its port; ``None`` unless the header is ``name[:port]`` or ``[v6][:port]``."""
    if value.startswith("["):
        end = value.find("]")
        name, rest = value[1:end], value[end + 1 :]
        if end < 0 or (rest and not re.fullmatch(r":[0-9]{1,5}", rest)):
            return None
        return name
    name, colon, port = value.partition(":")
    if colon and not re.fullmatch(r"[0-9]{1,5}", port):
        return None
    return name


def is_loopback_host(value: str, allowed: Iterable[str] = ()) -> bool:
    """Whether a Host header names this machine's loopback interface (or one of ``allowed``), port or not."""
    name = _host_name(value.strip())
    if name is None:
        return False
    name = name.lower()
    if name == "localhost" or name in {a.lower() for a in allowed}:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_loopback_origin(value: str, allowed: Iterable[str] = ()) -> bool:
    """Whether an Origin header names a page served from loopback (or from one of ``allowed``): ``http(s)://`` and
    a host ``is_loopback_host`` accepts, nothing else (``null``, ``file://`` and paths included)."""
    scheme, sep, rest = value.strip().partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest or "/" in rest or "@" in rest:
        return False
    return is_loopback_host(rest, allowed)
