"""The command-line flags every script of this project shares, one meaning per name.

- LLM flags (``add_llm_flags``, read by ``llm_from_flags``): ``--llm`` (``local``: SmolLM2-135M offline in this
  process, ``openai``: any OpenAI-compatible endpoint, or ``llama-cpp``: a llama.cpp server this script starts
  and stops, on Qwen2.5-Coder-1.5B offline by default), ``--llm-model`` (the API model, or a GGUF file or named
  offline model), ``--llm-threads`` (the llama.cpp server's threads),
  ``--base-url``, ``--api-key-env`` (the *name* of the variable holding the key; the key is never a flag) and
  ``--llm-dtype`` (the local model's precision, ``LocalLLM(dtype=...)``).
- Search flags (``add_search_flags``): ``--population``, ``--generations``, ``--elites``, ``--steps``,
  ``--eval-every`` and ``--seed``, with each script's own defaults.

``--model`` is never the LLM: where a script has a backbone (the comparison's text model, CoOp's CLIP
architecture), ``--model`` names it; a script without one refuses ``--model`` and says to use ``--llm-model``.

Example:
    >>> p = argparse.ArgumentParser()
    >>> add_llm_flags(p); add_search_flags(p, steps=12, eval_every=4)
    >>> args = p.parse_args(["--llm", "openai", "--llm-model", "gpt-4o-mini"])
    >>> llm = llm_from_flags(args)
"""

from __future__ import annotations

import argparse


def add_llm_flags(parser, choices: tuple[str, ...] = ("local", "openai", "llama-cpp"), default: str = "local",
                  dtype: str = "auto") -> None:
    """``--llm``, ``--llm-model``, ``--base-url``, ``--api-key-env``, ``--llm-dtype`` (default ``dtype``)
    (``parser`` may be an argument group)."""
    parser.add_argument("--llm", choices=list(choices), default=default,
                        help="the mentor: local (SmolLM2-135M, offline, in this process), openai (any OpenAI-compatible "
                             "endpoint) or llama-cpp (a llama.cpp server started for this run; default model "
                             "qwen2.5-coder-1.5b, installed by: python -m ray_llm_search.llm.weights install)")
    parser.add_argument("--llm-model", default=None,
                        help="the LLM: an API model name (openai), a local GGUF file (local; default SmolLM2-135M), "
                             "or a GGUF file or named offline model (llama-cpp; default qwen2.5-coder-1.5b)")
    parser.add_argument("--llm-threads", type=int, default=1,
                        help="llama-cpp: the server's threads (default 1: the trials keep the other cores)")
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp)")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY",
                        help="name of the variable holding the API key (the value is never printed)")
    parser.add_argument("--llm-dtype", choices=["auto", "float32", "bfloat16"], default=dtype,
                        help="local LLM precision: auto is bfloat16 where the CPU/GPU computes it natively, else "
                             f"float32 (default {dtype})")


def refuse_model_flag(parser) -> None:
    """A hidden ``--model`` that fails with a clear message, for a script whose only model is the LLM."""
    parser.add_argument("--model", action=_UseLLMModel, default=None, help=argparse.SUPPRESS)


class _UseLLMModel(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"--model {values}: this script has no backbone flag; the LLM is --llm-model {values}")


def add_search_flags(parser, *, population: int = 4, generations: int = 3, elites: int | None = 1, steps: int,
                     eval_every: int, seed: int | None = 0) -> None:
    """``--population``, ``--generations``, ``--elites`` (``None``: the design's own), ``--steps``,
    ``--eval-every`` and, unless ``seed`` is None (a script that takes ``--seeds``), ``--seed``."""
    parser.add_argument("--population", type=int, default=population, help="phases per generation")
    parser.add_argument("--generations", type=int, default=generations, help="generations, including generation 0")
    parser.add_argument("--elites", type=int, default=elites,
                        help="phases carried on from their vectors" + (" (default: the design's own)" if elites is None else ""))
    parser.add_argument("--steps", type=int, default=steps, help="gradient steps per phase (trial)")
    parser.add_argument("--eval-every", type=int, default=eval_every, help="gradient steps between evaluations")
    if seed is not None:
        parser.add_argument("--seed", type=int, default=seed, help="seeds the search, its phases and the data split")


def llm_label(args) -> str:
    """The mentor the LLM flags name, as results record it: ``local:smollm2-135m``,
    ``llama-cpp:qwen2.5-coder-1.5b``, ``openai:gpt-4o-mini`` (a model file by its name)."""
    import os

    model = os.path.basename(args.llm_model).removesuffix(".gguf") if args.llm_model else None
    default = {"local": "smollm2-135m", "llama-cpp": "qwen2.5-coder-1.5b", "openai": "gpt-4o-mini"}.get(args.llm)
    return f"{args.llm}:{model or default or 'default'}"


def llm_from_flags(args, seed: int | None = None, **kwargs):
    """The LLM the flags of ``add_llm_flags`` name (``ray_llm_search.llm.make_llm``); ``seed`` defaults to
    ``args.seed``; ``kwargs`` go to the client (e.g. ``max_new_tokens``)."""
    from ray_llm_search.llm import make_llm

    if args.llm == "llama-cpp":
        kwargs = {"threads": getattr(args, "llm_threads", 1), **kwargs}
    if args.llm == "local" and getattr(args, "llm_dtype", None):
        kwargs = {"dtype": args.llm_dtype, **kwargs}
    return make_llm(args.llm, args.llm_model, base_url=args.base_url, api_key_env=args.api_key_env,
                    seed=getattr(args, "seed", 0) if seed is None else seed, **kwargs)
