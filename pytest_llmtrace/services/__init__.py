"""The real servers a trace test talks to (Postgres, Ollama, Phoenix), one module per service.

Each module has one class per way of getting the service (embedded child processes, a Docker container, a URL the
user already runs); all of them hand back a ``base.Endpoint``, so tests do not care which one ran.
"""
