"""A stand-in `ollama serve` for machines without Ollama: the scripted Ollama front on OLLAMA_HOST, serving the models
named in FAKE_OLLAMA_HAS. Tests install it on a PATH of their own as an executable called `ollama`."""

import os
import pathlib
import sys
import time

from pytest_llmtrace.modelapi import ModelInfo, OllamaAPIServer
from pytest_llmtrace.modelapi.scripted import ScriptedBackend

assert sys.argv[1:] == ["serve"], sys.argv
pathlib.Path(os.environ["OLLAMA_MODELS"], "seen-by-fake-ollama").write_text(os.environ["OLLAMA_HOST"])
host, port = os.environ["OLLAMA_HOST"].rsplit(":", 1)
names = [n for n in os.environ.get("FAKE_OLLAMA_HAS", "").split(",") if n]
OllamaAPIServer(ScriptedBackend({"hi": "hello"}, [ModelInfo(n) for n in names]), host, int(port)).start()
print("Listening on " + os.environ["OLLAMA_HOST"], flush=True)
while True:
    time.sleep(1)
