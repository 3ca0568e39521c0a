"""The services' settings: which backend serves each service, and what the backends are given.

Each layer declares its own knobs next to the code that reads them (``check_settings.CHECK_SETTINGS``,
``replay_config.REPLAY_SETTINGS``, ...); ``settings`` only resolves them. The Docker images' defaults are the pins in
``services.docker``.
"""

from __future__ import annotations

from pytest_llmtrace.core.settings import SettingSpec, declare
from pytest_llmtrace.services.docker import GPU_SETTINGS, IMAGES

SERVICE_SETTINGS: tuple[SettingSpec, ...] = declare(
    # The three backends take no fixed choices here: the names come from the backend registry (built-in ones and
    # those given to register_backend), and services.choice.check_setting checks them once the run is configured.
    SettingSpec(
        "postgres",
        "Postgres backend: auto, docker, embedded, a name given to register_backend, or a postgresql:// URL of a "
        "server to use.",
        "auto",
        allow_url=("postgresql", "postgres"),
    ),
    SettingSpec(
        "ollama",
        "Ollama backend: auto, docker, binary (`ollama` on PATH), embedded (llama.cpp in-process), a name given to "
        "register_backend, or an http:// URL.",
        "auto",
        allow_url=("http", "https"),
    ),
    SettingSpec(
        "phoenix",
        "Phoenix backend: auto, docker, embedded (`phoenix serve`), a name given to register_backend, or an http:// "
        "URL of a running Phoenix.",
        "auto",
        allow_url=("http", "https"),
    ),
    SettingSpec(
        "use_app_env",
        "yes: let `auto` use the app's own DB_URI / OLLAMA_HOST / PHOENIX_COLLECTOR_ENDPOINT (often production!).",
        "no",
        choices=("yes", "no"),
    ),
    SettingSpec("ollama_model", "Model name the app asks Ollama for.", "qwen-sql-prod"),
    SettingSpec(
        "ollama_models",
        "Folder the Ollama backends we run (binary, docker) keep models in between runs, so a GGUF is imported once "
        "per machine; empty: ~/.cache/pytest-llmtrace/ollama/models (under $XDG_CACHE_HOME when set).",
        "",
    ),
    SettingSpec(
        "ollama_modelfile",
        "Modelfile that defines the model (relative to the rootdir).",
        "fixtures/Modelfile",
    ),
    SettingSpec(
        "sql_fixtures",
        "SQL files or globs (relative to the rootdir) loaded in order into the template database.",
        "fixtures/**/*.sql",
        env=False,
        ini_type="linelist",
    ),
    SettingSpec(
        "postgres_cache",
        "Folder of initdb'd clusters (with the fixtures' template) the embedded Postgres starts from, so a session "
        "skips initdb and the template; off: none; empty: ~/.cache/pytest-llmtrace/postgres (under $XDG_CACHE_HOME "
        "when set).",
        "",
    ),
    SettingSpec(
        "postgres_image",
        "Image of the docker Postgres backend: your production server's version, an extension image "
        "(pgvector/pgvector:pg17), or a registry mirror's copy.",
        IMAGES["postgres"],
    ),
    SettingSpec(
        "phoenix_image", "Image of the docker Phoenix backend (a version or a registry mirror).", IMAGES["phoenix"]
    ),
    SettingSpec(
        "ollama_image", "Image of the docker Ollama backend (a version or a registry mirror).", IMAGES["ollama"]
    ),
    SettingSpec(
        "ollama_gpu",
        "GPUs for the docker Ollama backend: auto (all, when nvidia-smi is on PATH), all, or none.",
        "auto",
        choices=GPU_SETTINGS,
    ),
)
