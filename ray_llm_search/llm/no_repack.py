"""EXPERIMENTAL: llama.cpp's server with weight repacking off, for CPUs whose repacked kernels crash.

On some machines llama.cpp's CPU backend repacks the weights for instructions the process may not execute
(seen here: a 2-core Xeon that lists AMX in ``/proc/cpuinfo``, on which ggml's AMX kernels raise an illegal
instruction, SIGILL, at the first completion, after the model has loaded and ``/models`` answers). llama.cpp's own
``llama-server`` has ``--no-repack`` for this; llama-cpp-python's server (0.3.x) has no such setting, so this
launcher turns off ``use_extra_bufts`` in the model's default parameters, an undocumented use of
llama-cpp-python's ctypes bindings, then runs its server's documented entry point with the same arguments:

    python -m ray_llm_search.llm.no_repack --model FILE.gguf --port 8000 ...

``LlamaServer`` starts it only after the normal server died of SIGILL on its first completion, with a WARNING
(``LlamaServer(repack=False)`` asks for it from the start). Tested with llama-cpp-python 0.3.36; another version
gets a WARNING, and a version without the field fails with a clear error.
"""

from __future__ import annotations

import logging
import sys

TESTED = ("0.3.36",)

logger = logging.getLogger(__name__)


def patch() -> None:
    """Make every model load without extra buffer types (no weight repacking)."""
    import llama_cpp
    import llama_cpp.llama_cpp as lib

    if llama_cpp.__version__ not in TESTED:
        logger.warning("ray_llm_search.llm.no_repack was tested with llama-cpp-python %s, not %s",
                       ", ".join(TESTED), llama_cpp.__version__)
    names = {name for name, _ in lib.llama_model_params._fields_}
    if "use_extra_bufts" not in names:
        raise RuntimeError(f"llama-cpp-python {llama_cpp.__version__} has no use_extra_bufts model parameter: "
                           "ray_llm_search.llm.no_repack cannot turn weight repacking off")
    defaults = lib.llama_model_default_params

    def no_repack():
        params = defaults()
        params.use_extra_bufts = False
        return params

    lib.llama_model_default_params = no_repack


def main() -> None:
    patch()
    from llama_cpp.server.__main__ import main as serve

    serve()


if __name__ == "__main__":
    sys.argv[0] = "llama_cpp.server"
    main()
