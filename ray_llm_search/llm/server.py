"""llama.cpp's OpenAI-compatible server for a GGUF mentor, started and stopped by this process.

The mentor is then reached through ``OpenAIChat(base_url=...)``: the same code path as a user's vLLM, Ollama
or OpenAI endpoint. ``LlamaServer`` runs ``python -m llama_cpp.server`` (``llama-cpp-python[server]``, the
``server`` extra) on 127.0.0.1 at a free port, waits until it lists its model, and stops it by PID (terminate,
then kill) on ``stop()``, on leaving a ``with`` block, or at interpreter exit; on Linux the kernel also ends it
when the process that started it from its main thread dies (``PR_SET_PDEATHSIG``), so a killed driver leaves
no server behind.

Threads: the server computes with ``threads`` threads (default 1) and its OpenMP threads sleep while they
wait (``OMP_WAIT_POLICY=PASSIVE``): spinning threads that share cores with the trials collapse both (measured on
2 cores: 3.1 s a token against 77 ms). Leave the trials the other cores.

A CPU build can crash at its first completion: llama.cpp repacks the weights for the CPU's widest kernels, and
on a machine that lists AMX but does not let the process run it, the server dies of an illegal instruction
(SIGILL) once a request comes, after ``/models`` has answered. ``start`` therefore asks for one token before it
returns; if the server died of SIGILL it says so in a WARNING and starts it again with repacking off
(``ray_llm_search.llm.no_repack``, EXPERIMENTAL: llama-cpp-python's server has no setting for it).

Example:
    >>> from ray_llm_search.llm.weights import gguf_path
    >>> with LlamaServer(gguf_path("qwen2.5-coder-1.5b")) as server:
    ...     llm = server.chat(temperature=0.8)
    ...     llm.propose("Write 3 prompts ...", n=3)
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from ray_llm_search.llm.base import LLMError
from ray_llm_search.llm.openai_chat import OpenAIChat

__all__ = ["LlamaCppChat", "LlamaServer"]

logger = logging.getLogger(__name__)


class LlamaServer:
    """One llama.cpp server process serving ``model_path`` as ``alias``.

    Args:
        model_path: a GGUF file (``ray_llm_search.llm.weights.gguf_path`` resolves the named offline ones).
        alias: the model name clients ask for (default: the file name without ``.gguf``).
        threads: computation threads for decoding and prompt processing.
        n_ctx: context length in tokens.
        port: ``None`` picks a free port on ``host``.
        start_timeout_s: how long ``start`` waits for the server to list its model.
        log_path: the server's output (default: a temporary file, kept for errors).
        extra_args: further ``llama_cpp.server`` arguments, e.g. ``["--n_gpu_layers", "-1"]``.
        repack: ``True`` (default): llama.cpp as it is, falling back to ``False`` with a WARNING where the server
            dies of SIGILL at its first completion; ``False``: weight repacking off from the start
            (``ray_llm_search.llm.no_repack``, experimental).
    """

    def __init__(self, model_path: str, alias: str | None = None, threads: int = 1, n_ctx: int = 4096,
                 host: str = "127.0.0.1", port: int | None = None, start_timeout_s: float = 300.0,
                 log_path: str | None = None, extra_args: tuple[str, ...] | list[str] = (), repack: bool = True) -> None:
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"GGUF file not found: {model_path!r}")
        if threads < 1 or n_ctx < 256 or start_timeout_s <= 0:
            raise ValueError(f"need threads >= 1, n_ctx >= 256, start_timeout_s > 0; got {threads}, {n_ctx}, "
                             f"{start_timeout_s}")
        self.model_path = os.path.abspath(model_path)
        self.alias = alias or os.path.basename(model_path).removesuffix(".gguf")
        self.threads, self.n_ctx, self.host, self.port = threads, n_ctx, host, port
        self.start_timeout_s, self.log_path, self.extra_args = start_timeout_s, log_path, list(extra_args)
        self.repack = bool(repack)
        self.proc: subprocess.Popen | None = None
        self.start_s: float | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server has not been started")
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        module = "llama_cpp.server" if self.repack else "ray_llm_search.llm.no_repack"
        return [sys.executable, "-m", module, "--model", self.model_path, "--model_alias", self.alias,
                "--host", self.host, "--port", str(self.port), "--n_ctx", str(self.n_ctx),
                "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads), *self.extra_args]

    def start(self) -> LlamaServer:
        """Start the process and wait until it serves and answers a first completion (``_first_completion``);
        raises ``LLMError("server", ...)`` with its log's tail. A server that dies of SIGILL at that completion is
        started again with weight repacking off, with a WARNING (see the module's doc)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self._launch()
        if self._first_completion():
            return self
        code = self._exit_code()
        if self.repack and code == -signal.SIGILL:
            logger.warning("llama.cpp's server died of an illegal instruction (SIGILL) at its first completion: this "
                           "build's repacked CPU kernels cannot run here (the CPU lists AMX: %s). Starting it again "
                           "with weight repacking off (ray_llm_search.llm.no_repack, experimental); a llama-cpp-python "
                           "built with CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON' "
                           "avoids it", _cpu_has_amx())
            self.proc, self.repack = None, False
            self._launch()
            if self._first_completion():
                return self
            code = self._exit_code()
        self.stop()
        raise LLMError("server", f"llama.cpp server failed its first completion (exit code {code}, repacking "
                                 f"{'on' if self.repack else 'off'}): {self.log_tail()}")

    def _exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def _first_completion(self) -> bool:
        """Two tokens asked of the server after a prompt of some 60 tokens (one token of prompt ran where 40 crashed:
        the repacked kernels serve batches of tokens): whether it answered (a crash shows in the exit code)."""
        prompt = " ".join(f"{i}," for i in range(30))
        body = json.dumps({"model": self.alias, "prompt": prompt, "max_tokens": 2}).encode()
        request = urllib.request.Request(f"{self.base_url}/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.start_timeout_s) as r:
                r.read()
            return True
        except (OSError, ValueError):
            if self.proc is not None:
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            return False

    def _launch(self) -> None:
        """Start the process and wait until it lists its model."""
        try:
            import llama_cpp.server  # noqa: F401  (checked here, run in its own process)
        except ImportError as e:
            raise LLMError("config", "llama.cpp's server is not installed: pip install -e '.[server]' "
                           f"(llama-cpp-python[server], compiles llama.cpp) ({e})") from e
        if self.port is None:
            self.port = _free_port(self.host)
        if self.log_path is None:
            fd, self.log_path = tempfile.mkstemp(prefix="llama_server_", suffix=".log")
            os.close(fd)
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(self.threads))
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent() if _in_main_thread() else None)
        atexit.register(self.stop)
        deadline = started + self.start_timeout_s
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise LLMError("server", f"llama.cpp server exited with {code}: {self.log_tail()}")
            if self.alias in self.models():
                break
            if time.monotonic() > deadline:
                self.stop()
                raise LLMError("server", f"llama.cpp server not serving after {self.start_timeout_s:.0f}s: "
                                         f"{self.log_tail()}")
            time.sleep(0.25)
        self.start_s = time.monotonic() - started

    def models(self) -> list[str]:
        """The model ids the server lists (empty while it is not answering)."""
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=5) as r:
                return [m.get("id") for m in json.loads(r.read().decode()).get("data", [])]
        except (OSError, ValueError):
            return []

    def chat(self, **kwargs):
        """An ``OpenAIChat`` client for this server (``kwargs``: temperature, max_tokens, style, ...)."""
        return OpenAIChat(self.alias, base_url=self.base_url, api_key_env=None, **kwargs)

    def stop(self) -> None:
        """Terminate the process (kill after 15 s); safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-chars:]
        except (OSError, TypeError):
            return "(no log)"

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __getstate__(self) -> dict:  # a process handle does not travel
        return {**self.__dict__, "proc": None}

    @classmethod
    def shared(cls, model_path: str, **options) -> LlamaServer:
        """The running server of this process for ``model_path`` and ``options``, started if there is none: the
        clients of consecutive searches (a comparison's runs) share one process instead of loading the model each."""
        key = (os.path.abspath(model_path), json.dumps(options, sort_keys=True, default=str))
        server = _SHARED.get(key)
        if server is None or server.proc is None or server.proc.poll() is not None:
            server = _SHARED[key] = cls(model_path, **options).start()
        return server


_SHARED: dict[tuple, LlamaServer] = {}


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _die_with_parent():
    """A ``preexec_fn`` that, on Linux, asks the kernel to end the child when the process that started it dies (a
    killed driver runs no ``atexit``); ``None`` elsewhere (``stop`` and ``atexit`` remain). The kernel ties this to
    the starting *thread*, so it is asked only for a server started from the main thread. ``prctl`` is looked up
    here, in the parent: the child between fork and exec only calls it (no dynamic loading there)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import signal

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    kill = int(signal.SIGKILL)
    return lambda: prctl(1, kill)  # PR_SET_PDEATHSIG


def _cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return " amx_tile" in f.read()
    except OSError:
        return False


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LlamaCppChat(OpenAIChat):
    """The mentor behind a llama.cpp server that this client starts itself: ``OpenAIChat`` whose endpoint is a
    ``LlamaServer`` on ``model`` (a GGUF path or a named offline model of ``ray_llm_search.llm.weights``),
    started on ``load()`` (or the first request: also after a restore, the process does not travel) and
    stopped on ``close()`` or at exit. Clients of the same file and settings in one process share one server
    (``LlamaServer.shared``); ``close()`` stops it for all of them.

    Defaults suit a small instruct model: ``style="chat"``, ``temperature=0.8`` (greedy decoding copies the
    prompts it is shown), one server thread.
    """

    def __init__(self, model: str = "qwen2.5-coder-1.5b", threads: int = 1, n_ctx: int = 4096,
                 server_args: tuple[str, ...] | list[str] = (), temperature: float = 0.8, max_tokens: int = 256,
                 timeout_s: float = 300.0, style: str = "chat", **chat_kwargs) -> None:
        super().__init__(os.path.basename(model).removesuffix(".gguf"), base_url=None, api_key_env=None,
                         temperature=temperature, max_tokens=max_tokens, timeout_s=timeout_s, style=style,
                         **chat_kwargs)
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.source, self.threads, self.n_ctx, self.server_args = model, threads, n_ctx, list(server_args)
        self._server: LlamaServer | None = None

    def _transient(self) -> tuple[str, ...]:
        return (*super()._transient(), "_server")

    def load(self) -> LlamaCppChat:
        """Resolve the GGUF file (joining a named model's parts once) and start the server."""
        if self._server is None or self._server.proc is None or self._server.proc.poll() is not None:
            from ray_llm_search.llm.weights import gguf_path

            self._server = LlamaServer.shared(gguf_path(self.source), alias=self.model, threads=self.threads,
                                              n_ctx=self.n_ctx, extra_args=tuple(self.server_args))
            self.base_url, self._client = self._server.base_url, None
        return self

    def cache_settings(self) -> dict:
        """For ``CachedLLM``'s keys: the model file, not the port this run's server happened to get."""
        return {"base_url": None, "gguf": os.path.basename(self.source), "n_ctx": self.n_ctx}

    @property
    def server(self) -> LlamaServer | None:
        return self._server

    def _get_client(self):
        self.load()
        return super()._get_client()

    def close(self) -> None:
        """Stop the server (a later request starts it again)."""
        if self._server is not None:
            self._server.stop()
        self._client = None
