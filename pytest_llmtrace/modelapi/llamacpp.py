"""A backend that answers with a real model: llama.cpp running in-process (xllamacpp), read from an Ollama Modelfile.

Machines without Docker or an ``ollama`` binary can still run the live suite: the Modelfile that defines the
production model (``ollama create qwen-sql-prod -f fixtures/Modelfile``) is interpreted here the way Ollama would, so
the same file drives both. What Ollama does and this backend copies:

- the model is the GGUF named by ``FROM``;
- ``SYSTEM`` is put first unless the request's own first message is a system message (Ollama's ChatHandler rule);
  ``MESSAGE`` lines come before the request's messages;
- options layer as Ollama's defaults < ``PARAMETER`` lines < the request's ``options``;
- counters and durations (ns) come from llama.cpp's own timings, not from estimates.

What differs: ``TEMPLATE`` is not executed (it is a Go template); llama.cpp renders the chat template stored in the
GGUF, which for the models this project uses (ChatML) is the same text. ``num_ctx`` is a load-time setting: a request
asking for another context size does not reload the model as Ollama would.

Determinism: llama.cpp reuses the KV cache of the previous prompt unless told not to, and that changes the logits
slightly; every request therefore carries ``"cache_prompt": false``, which makes temperature 0 repeatable across
requests, processes and thread counts (the text still differs between llama.cpp builds: pin xllamacpp).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_llmtrace.core.errors import LLMTraceError, first_line
from pytest_llmtrace.modelapi.backend import BackendError, ChatRequest, ChatResult, ModelInfo, normalize_model_name
from pytest_llmtrace.modelapi.modelfile import Modelfile
from pytest_llmtrace.trace.views import Message

INSTALL_HINT = "pip install xllamacpp"
DEFAULT_NUM_CTX = 4096  # Ollama's default context length

# Ollama's api.DefaultOptions() for the sampling settings llama.cpp also has. llama.cpp's own defaults differ
# (top_p 0.95, min_p 0.05, repeat_penalty 1.0), so without these an unconfigured request would sample differently.
OLLAMA_DEFAULT_OPTIONS: Mapping[str, Any] = {
    "num_predict": -1,
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.9,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_last_n": 64,
    "repeat_penalty": 1.1,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "seed": -1,
}

DEFAULT_THREADS = 2

# Ollama option -> llama.cpp request field. Options not listed (num_thread, num_gpu, use_mmap, ...) are about how
# Ollama runs the model, not what it says; they are ignored, as is num_ctx (fixed at load time).
_OPTION_FIELDS = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "seed": "seed",
    "stop": "stop",
    "num_predict": "max_tokens",
    "repeat_last_n": "repeat_last_n",
    "repeat_penalty": "repeat_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "mirostat": "mirostat",
    "mirostat_tau": "mirostat_tau",
    "mirostat_eta": "mirostat_eta",
    "num_keep": "n_keep",
}


class LlamaCppError(LLMTraceError):
    """The embedded model cannot be served; ``fix`` says what to do, for ``ServiceStartError`` to show."""

    def __init__(self, message: str, fix: str) -> None:
        self.fix = fix
        super().__init__(message)


def ollama_to_llamacpp(options: Mapping[str, Any]) -> dict[str, Any]:
    """Ollama request options as fields of a llama.cpp /v1/chat/completions body.

    ``num_predict`` -2 ("fill the context") has no llama.cpp spelling; -1 (until EOS or the context is full) is the
    closest. A single ``stop`` string is accepted as Ollama's JSON decoder accepts it.
    """
    body: dict[str, Any] = {}
    for key, value in options.items():
        target = _OPTION_FIELDS.get(key)
        if target is None or value is None:
            continue
        if key == "num_predict" and isinstance(value, (int, float)) and value < 0:
            value = -1
        if key == "stop" and isinstance(value, str):
            value = [value]
        body[target] = value
    return body


_FAMILIES = (  # file-name fragment -> the architecture name Ollama reports (general.architecture)
    ("qwen3", "qwen3"),
    ("qwen2", "qwen2"),
    ("qwen", "qwen2"),
    ("smollm", "llama"),
    ("llama", "llama"),
    ("mistral", "llama"),
    ("gemma3", "gemma3"),
    ("gemma2", "gemma2"),
    ("gemma", "gemma"),
    ("phi3", "phi3"),
    ("phi-3", "phi3"),
    ("phi", "phi2"),
)


def guess_model_details(file_name: str) -> tuple[str, str, str]:
    """(family, parameter size, quantization) from a GGUF file name, for /api/tags and /api/show to display.

    Ollama reads these from the GGUF header; a name like ``qwen2.5-coder-1.5b-instruct-q4_k_m.gguf`` carries the same
    facts, and nothing routes on them. Unknown parts stay empty.
    """
    name = file_name.lower()
    family = next((fam for fragment, fam in _FAMILIES if fragment in name), "")
    size = re.search(r"(?:^|[-_.])(\d+(?:\.\d+)?)([bm])(?=$|[-_.])", name)
    quant = re.search(r"(?:^|[-_.])(iq\d\w*|q\d(?:_[a-z0-9]+)*|bf16|f16|f32)(?=\.gguf$|$|[-.])", name)
    parameter_size = f"{size.group(1)}{size.group(2).upper()}" if size else ""
    return family, parameter_size, quant.group(1).upper() if quant else ""


def _format_parameters(options: Mapping[str, Any]) -> str:
    """The ``parameters`` text of /api/show, laid out as Ollama lays it out (name padded to 30, strings quoted)."""
    lines: list[str] = []
    for key, value in options.items():
        for item in value if isinstance(value, list) else [value]:
            shown = f'"{item}"' if isinstance(item, str) else str(item)
            lines.append(f"{key:<30} {shown}")
    return "\n".join(lines)


class LlamaCppBackend:
    """The model a Modelfile defines, served by llama.cpp in this process under ``model_name``.

    Loading is explicit (``load()``) so a service can fail at start-up with a clear message rather than on the first
    request; ``chat()`` loads on demand too. The first answer after a load reports the load time as
    ``load_duration`` (and includes it in ``total_duration``), as a cold Ollama does.
    """

    def __init__(
        self,
        modelfile: Modelfile,
        model_name: str = "qwen-sql-prod",
        n_ctx: int | None = None,
        threads: int | None = None,
    ) -> None:
        self.modelfile = modelfile
        self.model_name = model_name
        # Ollama's own knob for it: PARAMETER num_thread in the Modelfile. llama.cpp's threads spin while they wait
        # for each other, so on a machine whose cores are busy one thread can be faster than two.
        num_thread = modelfile.options().get("num_thread")
        self.threads = threads or (num_thread if isinstance(num_thread, int) and num_thread > 0 else DEFAULT_THREADS)
        num_ctx = modelfile.options().get("num_ctx")
        self.n_ctx = n_ctx or (num_ctx if isinstance(num_ctx, int) else DEFAULT_NUM_CTX)
        # One lock for load, generation and close: llama.cpp's server runs one slot here, and serial calls keep
        # its timings (which become the reported durations) free of other requests' work.
        self._lock = threading.RLock()
        self._server: Any = None
        self._pending_load_ns = 0
        self._info: ModelInfo | None = None

    # -- the model file ---------------------------------------------------------------------------------------------

    def gguf_path(self) -> Path:
        """The GGUF to load; a ``LlamaCppError`` naming the Modelfile and the path when it cannot be."""
        path = self.modelfile.from_path
        where = f"{self.modelfile.path}: FROM {self.modelfile.source}"
        if path is None:
            raise LlamaCppError(
                f"{where} names an Ollama model, not a GGUF file; the embedded llama.cpp backend can only load a "
                "local .gguf file",
                fix="point FROM at a .gguf file, or use an Ollama server (--llmtrace-ollama=docker, binary or a URL)",
            )
        if not path.is_file():
            raise LlamaCppError(
                f"{where}: the GGUF file {path} does not exist",
                fix=f"download the GGUF to {path} (see the comments in {self.modelfile.path}), change the FROM line, "
                "or use an Ollama server that has the model (--llmtrace-ollama=docker, binary or a URL)",
            )
        return path

    def models(self) -> Sequence[ModelInfo]:
        if self._info is None:
            path = self.modelfile.from_path
            family, parameter_size, quantization = guess_model_details(path.name if path else self.modelfile.source)
            try:
                size = path.stat().st_size if path else 0
            except OSError:
                size = 0
            try:
                text = self.modelfile.path.read_text(encoding="utf-8")
            except OSError:
                text = ""
            self._info = ModelInfo(
                name=self.model_name,
                family=family,
                parameter_size=parameter_size,
                quantization_level=quantization,
                size=size,
                modelfile=text,
                template=self.modelfile.template or "",
                parameters=_format_parameters(self.modelfile.options()),
                system=self.modelfile.system or "",
                context_length=self.n_ctx,
            )
        return (self._info,)

    # -- lifecycle --------------------------------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._server is not None

    def load(self) -> None:
        """Load the GGUF (about 0.5 s for a 100 MB model); a no-op when it is already loaded."""
        with self._lock:
            if self._server is not None:
                return
            path = self.gguf_path()
            try:
                import xllamacpp  # optional and heavy (llama.cpp's native library): only when a model is loaded
            except ImportError:
                raise LlamaCppError(
                    "the embedded Ollama backend needs xllamacpp (llama.cpp for Python), which is not installed",
                    fix=f"{INSTALL_HINT}, or use an Ollama server (--llmtrace-ollama=docker, binary or a URL)",
                ) from None
            params = xllamacpp.CommonParams()
            params.model.path = str(path)
            params.n_ctx = self.n_ctx
            params.cpuparams.n_threads = params.cpuparams_batch.n_threads = self.threads
            params.cache_prompt = False
            params.verbosity = 1  # errors only: llama.cpp's info lines would flood the test output
            started = time.perf_counter_ns()
            try:
                self._server = xllamacpp.Server(params)
            except Exception as exc:  # RuntimeError("Failed to init server ..."); the reason went to stderr
                raise LlamaCppError(
                    f"{self.modelfile.path}: llama.cpp could not load {path}: {first_line(exc)} "
                    "(its own messages are on stderr)",
                    fix="check that the file is a complete GGUF model (re-download it) and that n_ctx fits in memory",
                ) from exc
            self._pending_load_ns = time.perf_counter_ns() - started

    def close(self) -> None:
        """Free the model (its memory and llama.cpp's threads); a later ``chat()`` loads it again."""
        with self._lock:
            self._server = None  # the last reference: xllamacpp stops its loop and frees the model

    # -- answering --------------------------------------------------------------------------------------------------

    def messages_for(self, request: ChatRequest) -> list[Message]:
        """The conversation the model sees, with the Modelfile's SYSTEM and MESSAGE lines placed as Ollama does.

        /api/chat: MESSAGE lines, then the request's messages; SYSTEM first unless the request's first message is a
        system message. /api/generate: the request's system (or else SYSTEM), then MESSAGE lines, then the prompt.
        """
        fixed = [Message(role, content) for role, content in self.modelfile.messages]
        system = self.modelfile.system
        given = list(request.messages)
        if request.route == "/api/generate":
            if given and given[0].role == "system":
                head, rest = given[:1], given[1:]
            else:
                head, rest = ([Message("system", system)] if system else []), given
            return [*head, *fixed, *rest]
        out = [*fixed, *given]
        if system and not (given and given[0].role == "system"):
            out.insert(0, Message("system", system))
        return out

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The llama.cpp request: options layered Ollama defaults < PARAMETER lines < request options."""
        options = {**OLLAMA_DEFAULT_OPTIONS, **self.modelfile.options(), **dict(request.options)}
        return {
            "messages": [{"role": m.role, "content": m.content} for m in self.messages_for(request)],
            **ollama_to_llamacpp(options),
            "stream": False,
            "cache_prompt": False,  # see the module docstring: without it temperature 0 is not repeatable
        }

    def chat(self, request: ChatRequest) -> ChatResult:
        return self._complete(request, None)

    def chat_stream(self, request: ChatRequest, emit: Callable[[str], None]) -> ChatResult:
        """Generate with llama.cpp streaming: ``emit`` gets each piece of content the moment it is generated (the
        front sends it on and times it), then the counters come back as for ``chat``."""
        return self._complete(request, emit)

    def _complete(self, request: ChatRequest, emit: Callable[[str], None] | None) -> ChatResult:
        if normalize_model_name(request.model) != normalize_model_name(self.model_name):
            # the same words as the HTTP front (ollama_routes.find_model), which checks names before a backend is asked
            raise BackendError(404, f'model "{request.model}" not found, try pulling it first')
        body = self.request_body(request)
        chunks: list[dict[str, Any]] = []
        if emit is not None:
            body.update(stream=True, stream_options={"include_usage": True})

        def on_chunk(chunk: Any) -> None:
            if not isinstance(chunk, dict):
                return
            chunks.append(chunk)
            for choice in chunk.get("choices") or ():
                piece = (choice.get("delta") or {}).get("content")
                if piece and emit is not None:
                    emit(str(piece))

        with self._lock:
            started = time.perf_counter_ns()
            loaded_here = self._server is None
            try:
                self.load()
            except LlamaCppError as exc:
                raise BackendError(500, f"{exc}; fix: {exc.fix}") from exc
            load_ns, self._pending_load_ns = self._pending_load_ns, 0
            try:
                if emit is None:
                    response = self._server.handle_chat_completions(body)
                else:
                    self._server.handle_chat_completions(body, on_chunk)
                    response = _joined(chunks)
            except Exception as exc:
                raise BackendError(500, f"llama.cpp: {type(exc).__name__}: {exc}") from exc
            elapsed = time.perf_counter_ns() - started
        if not isinstance(response, dict):
            raise BackendError(500, f"llama.cpp returned {type(response).__name__}, expected a JSON object")
        if "error" in response:
            error = response["error"]
            if isinstance(error, dict):
                status = error.get("code")
                raise BackendError(status if isinstance(status, int) else 500, str(error.get("message", error)))
            raise BackendError(500, str(error))
        choice = response["choices"][0]
        usage = response.get("usage") or {}
        timings = response.get("timings") or {}
        return ChatResult(
            text=str((choice.get("message") or {}).get("content") or ""),
            prompt_eval_count=int(usage.get("prompt_tokens", timings.get("prompt_n", 0))),
            eval_count=int(usage.get("completion_tokens", timings.get("predicted_n", 0))),
            total_duration=elapsed if loaded_here else elapsed + load_ns,
            load_duration=load_ns,
            prompt_eval_duration=round(float(timings.get("prompt_ms", 0.0)) * 1_000_000),
            eval_duration=round(float(timings.get("predicted_ms", 0.0)) * 1_000_000),
            done_reason="length" if choice.get("finish_reason") == "length" else "stop",
        )


def _joined(chunks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A streamed completion's chunks as the one response ``chat`` reads: the content joined, the last finish
    reason, the usage and timings of the final chunk; an error chunk as the error."""
    for chunk in chunks:
        if "error" in chunk:
            return {"error": chunk["error"]}
    text, finish = [], None
    usage: Any = {}
    timings: Any = {}
    for chunk in chunks:
        for choice in chunk.get("choices") or ():
            text.append(str((choice.get("delta") or {}).get("content") or ""))
            finish = choice.get("finish_reason") or finish
        usage = chunk.get("usage") or usage
        timings = chunk.get("timings") or timings
    message = {"role": "assistant", "content": "".join(text)}
    return {"choices": [{"message": message, "finish_reason": finish}], "usage": usage, "timings": timings}
