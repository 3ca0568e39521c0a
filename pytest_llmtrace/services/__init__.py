"""The real servers a trace test talks to (Postgres, Ollama, Phoenix), and Postgres's sandbox.

The module map is in docs/architecture.md. In short: ``base`` (the ``Endpoint`` every backend hands back,
``ServiceStartError``), ``choice`` (which backend serves each service), ``backends`` (the registry and the built-in
backends), ``manager`` (the ``ServiceManager``), ``service_settings``, ``run_records`` and ``user_folder`` (what a
run leaves on disk, and reaping what a killed run left), ``process``, one module per service (``postgres``,
``ollama`` with ``ollama_models``, ``phoenix``), ``docker`` and ``docker_sweep`` for the Docker backends, and the
sandbox: ``pg_databases``, ``pg_roles``, ``pg_lockdown``, ``pg_session``, ``pg_guard``, ``pg_deadline``,
``pg_objects``, ``pg_leftovers`` and ``case_bounds``. The pytest glue for them is ``pytest/service_session.py``.
"""
