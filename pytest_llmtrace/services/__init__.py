"""The real servers a trace test talks to (Postgres, Ollama, Phoenix).

- ``base``: the ``Endpoint`` every backend hands back, ``ServiceStartError``, and helpers all backends share.
- ``choice``: which backend serves each service (``auto``, a name, a URL), decided purely, for the report header.
- ``runs``: what a run leaves on disk (run records, the xdist state folder), and reaping what a killed run left.
- ``process``: server child processes and their temp folders.
- ``postgres``, ``ollama``, ``phoenix``: one class per way of getting each service, plus what is special to it.
- ``docker``: the little the Docker backends share.
- ``backends``: the backend registry (``register_backend``) and the built-in backends.
- ``manager``: the ``ServiceManager`` that starts, shares, stops.
- ``session``: the pytest glue (configure, header, unconfigure, signals, the app's environment variables).
"""
