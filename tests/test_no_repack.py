"""A llama.cpp server that dies of SIGILL at its first completion (repacked CPU kernels the machine cannot run,
seen on a 2-core Xeon listing AMX) is started again with weight repacking off, with a WARNING; any other failure at
the first completion is an ``LLMError`` with the server's log. The fallback's logic runs against a fake server
process (fault injection); the real launcher (``ray_llm_search.llm.no_repack``) serves the real SmolLM2 GGUF."""

from __future__ import annotations

import json
import logging
import sys
import textwrap

import pytest

from ray_llm_search.llm import LLMError, smollm2_gguf
from ray_llm_search.llm.server import LlamaServer

# Lists its model; on a completion it dies of the signal given as argv[1] (0: answers instead).
FAKE = textwrap.dedent("""
    import json, os, signal, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    die, port, alias = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a): pass
        def _send(self, body):
            data = json.dumps(body).encode()
            self.send_response(200); self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
        def do_GET(self):
            self._send({"data": [{"id": alias}]})
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            if die:
                os.kill(os.getpid(), die)
            self._send({"choices": [{"text": "ok"}]})
    print("serving", flush=True)
    HTTPServer(("127.0.0.1", port), H).serve_forever()
""")


class FakeServer(LlamaServer):
    """Dies of ``crash`` at a completion while repacking is on, and of ``crash_off`` with it off."""

    crash, crash_off = 4, 0

    def command(self) -> list[str]:
        die = self.crash if self.repack else self.crash_off
        return [sys.executable, "-c", FAKE, str(die), str(self.port), self.alias]


@pytest.fixture
def gguf(tmp_path):
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"GGUF")
    return str(path)


def test_sigill_at_the_first_completion_restarts_with_repacking_off(gguf, caplog):
    server = FakeServer(gguf, start_timeout_s=30)
    with caplog.at_level(logging.WARNING, logger="ray_llm_search.llm.server"):
        server.start()
    try:
        assert server.repack is False and server.proc.poll() is None
        assert "illegal instruction (SIGILL)" in caplog.text and "repacking off" in caplog.text
        assert "ray_llm_search.llm.no_repack" in " ".join(LlamaServer(gguf, repack=False, port=1).command())
    finally:
        server.stop()


def test_a_server_that_answers_is_not_restarted(gguf, caplog):
    server = FakeServer(gguf, start_timeout_s=30)
    server.crash = 0
    with caplog.at_level(logging.WARNING, logger="ray_llm_search.llm.server"):
        server.start()
    try:
        assert server.repack is True and "SIGILL" not in caplog.text
    finally:
        server.stop()


@pytest.mark.parametrize("crash, crash_off, repack", [(11, 0, True), (4, 4, True), (0, 4, False)],
                         ids=["segfault: no fallback", "fallback crashes too", "asked for no repack: no fallback"])
def test_other_failures_at_the_first_completion_say_why(gguf, crash, crash_off, repack):
    server = FakeServer(gguf, start_timeout_s=30, repack=repack)
    server.crash, server.crash_off = crash, crash_off
    with pytest.raises(LLMError, match="failed its first completion"):
        server.start()
    assert server.proc is None


@pytest.mark.slow
def test_the_no_repack_launcher_serves_the_real_model(tmp_path):
    with LlamaServer(smollm2_gguf(), repack=False, log_path=str(tmp_path / "server.log")) as server:
        reply = server.chat(temperature=0.0, max_tokens=8).propose("Name a colour.", 1)
        assert server.repack is False and reply and isinstance(reply[0], str)
    assert json.dumps(reply)
