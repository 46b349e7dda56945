"""Speed of one CoOp training step: CoOp's own against this project's, on one device, in one run.

(a) CoOp's step, as its reference code does it: the frozen image encoder runs on a batch of augmented images
    at the model's resolution (224 px for ViT-B/16) every step, and the text encoder reads every class's
    prompt at the full 77-token context through ``nn.MultiheadAttention`` with a float causal mask; fp32, or
    fp16 autocast with a gradient scaler (CoOp's ``amp``).
(b) Ours (``trainables.clip.ClipPromptModel``): cached image features (one of ``views`` augmented
    views per image), the context cut to the longest prompt, bf16 autocast, fused causal attention
    (``scaled_dot_product_attention``), the loop ``run_phase`` runs (including its per-step ``float(loss)``).

Both use the same random-init weights (the speed does not depend on them), ``shots`` images per class,
batch 32 and 16 context tokens. CoOp's images are random tensors already on the device: its data loading
(JPEG decoding and augmentation on the CPU) is not counted, which flatters CoOp.

Printed per class count: steps/s, images/s, the ratio, peak memory, and the text encoder's achieved TFLOP/s
(forward + input-gradient backward, counted analytically) as a share of the device's dense bf16 peak. Then:
- concurrent trials: 1, 2, 4, 8 *processes* (what Tune runs for fractional-GPU trials), each a full phase
  loop of (b) on the same GPU, started together; aggregate steps/s over a fixed window;
- batched prompts: P trials' contexts through the text encoder in one forward (``text_features_many``),
  each with its own image batch and loss; aggregate trial-steps/s.

    python examples/bench_coop_speed.py                              # GPU: ViT-B-16, 100 and 1000 classes
    python examples/bench_coop_speed.py --compile reduce-overhead    # also ours under torch.compile
    python examples/bench_coop_speed.py --device cpu --tiny          # a smoke test, about a minute on CPU
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Dense bf16 tensor-core peaks (TFLOP/s, without sparsity), matched against torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = [
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H800", 989.0), ("GH200", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
    ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.0), ("RTX 6000 Ada", 364.0), ("A6000", 155.0),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--model", default="ViT-B-16", help="open_clip architecture, random init")
    p.add_argument("--tiny", action="store_true", help="tiny CLIP, few classes, short runs: a CPU smoke test")
    p.add_argument("--classes", type=int, nargs="+", default=None, help="default 100 1000 (tiny: 10 20)")
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--n-ctx", type=int, default=16)
    p.add_argument("--views", type=int, default=8, help="cached augmented views per image (ours)")
    p.add_argument("--coop-precision", choices=["amp", "fp32"], default="amp", help="CoOp's step: fp16 AMP or fp32")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 50; tiny 4)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10; tiny 1)")
    p.add_argument("--concurrency", type=int, nargs="*", default=None, help="processes (default 1 2 4 8; tiny 1 2)")
    p.add_argument("--concurrency-classes", type=int, nargs="*", default=None,
                   help="class counts for the concurrency runs (default: the first of --classes)")
    p.add_argument("--seconds", type=float, default=None, help="concurrency window (default 10; tiny 1)")
    p.add_argument("--prompts", type=int, nargs="*", default=None, help="batched prompts (default 1 2 4 8; tiny 1 2)")
    p.add_argument("--compile", choices=["none", "default", "reduce-overhead", "max-autotune"], default="none",
                   help="also time ours with the text encoder under torch.compile in this mode")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (default: table)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (tiny default: 1)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    tiny = args.tiny
    args.classes = args.classes or ([10, 20] if tiny else [100, 1000])
    args.steps = args.steps or (4 if tiny else 50)
    args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 10)
    args.concurrency = args.concurrency if args.concurrency is not None else ([1, 2] if tiny else [1, 2, 4, 8])
    args.concurrency_classes = args.concurrency_classes or args.classes[:1]
    args.seconds = args.seconds or (1.0 if tiny else 10.0)
    args.prompts = args.prompts if args.prompts is not None else ([1, 2] if tiny else [1, 2, 4, 8])
    if tiny:
        args.threads = args.threads or 1  # tiny tensors: more threads only wait on each other
        args.shots = min(args.shots, 2)
        args.n_ctx = min(args.n_ctx, 4)
        args.views = min(args.views, 2)
    return args


# -- setup ----------------------------------------------------------------------------------------------------


def _device(args):
    import torch

    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _backbone(args, device, image_tower: bool = True):
    from trainables import clip as cp

    if args.tiny:
        return cp.load_clip("coop-tiny", None, cp.TINY_MODEL_CONFIG, 0, device, image_tower)
    return cp.load_clip(args.model, None, None, 0, device, image_tower)


def class_names(tokenizer, count: int, seed: int = 0) -> list[str]:
    """``count`` distinct made-up class names of 1-3 common words (ImageNet's are mostly 1-3 words), the
    first one long (5 words), as the longest class name sets the cut context."""
    rng = random.Random(seed)
    words = sorted(w[:-4] for w in tokenizer.simple.encoder if w.endswith("</w>") and w[:-4].isalpha()
                   and 3 <= len(w) - 4 <= 9)
    names, seen = [], set()
    while len(names) < count:
        k = 5 if not names else rng.choices([1, 2, 3], weights=[50, 35, 15])[0]
        name = " ".join(rng.choice(words) for _ in range(k))
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_memory(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _time(step, steps: int, warmup: int, device) -> float:
    """Seconds per step."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def text_flops(classes: int, length: int, layers: int, width: int, embed: int) -> float:
    """FLOPs of the text encoder's forward plus its input-gradient backward (the weights are frozen, so no
    weight gradients): per layer and sequence, forward 24·T·D² (qkv, out, MLP) + 4·T²·D (scores and mix,
    full square); backward 24·T·D² + 8·T²·D; plus the end-of-text projection."""
    per_layer = 48 * length * width**2 + 12 * length**2 * width
    return classes * (layers * per_layer + 4 * width * embed)


# -- (a) CoOp's step ------------------------------------------------------------------------------------------


class CoOpReference:
    """CoOp's PromptLearner + TextEncoder + CustomCLIP forward on an open_clip model: [prefix, ctx, suffix]
    at the full context, the model's own transformer (float mask), the image encoder every step."""

    def __init__(self, backbone, names: list[str], n_ctx: int, precision: str, device):
        import torch

        self.model = backbone.model
        self.device = device
        tok = backbone.tokenizer.simple
        text = [" ".join(["X"] * n_ctx) + " " + n + "." for n in names]
        self.tokens = tok(text).to(device)  # [C, 77]
        with torch.no_grad():
            emb = self.model.token_embedding(self.tokens)
        self.prefix, self.suffix = emb[:, :1], emb[:, 1 + n_ctx:]
        self.ctx = torch.nn.Parameter(torch.randn(n_ctx, emb.shape[-1], device=device) * 0.02)
        self.optimizer = torch.optim.SGD([self.ctx], lr=0.002, momentum=0.9, weight_decay=5e-4)
        self.amp = precision == "amp" and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None

    def text_features(self):
        import torch

        m = self.model
        c = self.prefix.shape[0]
        x = torch.cat([self.prefix, self.ctx.unsqueeze(0).expand(c, -1, -1), self.suffix], dim=1)
        x = x + m.positional_embedding
        x = m.transformer(x, attn_mask=m.attn_mask)
        x = m.ln_final(x)
        x = x[torch.arange(c, device=x.device), self.tokens.argmax(-1)] @ m.text_projection
        return x

    def step(self, images, labels) -> float:
        import torch
        import torch.nn.functional as F

        ctx = torch.autocast("cuda", dtype=torch.float16) if self.amp else _null()
        with ctx:
            image_features = F.normalize(self.model.encode_image(images), dim=-1)
            text = F.normalize(self.text_features(), dim=-1)
            logits = self.model.logit_scale.exp() * image_features @ text.T
            loss = F.cross_entropy(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return float(loss.detach())


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def measure_coop(args, backbone, names, device) -> dict:
    import torch

    ref = CoOpReference(backbone, names, args.n_ctx, args.coop_precision, device)
    size = backbone.preprocess.size
    g = torch.Generator(device="cpu").manual_seed(0)
    pool = [(torch.randn(args.batch, 3, size, size, generator=g).to(device),
             torch.randint(len(names), (args.batch,), generator=g).to(device)) for _ in range(4)]
    it = [0]

    def step():
        images, labels = pool[it[0] % len(pool)]
        it[0] += 1
        ref.step(images, labels)

    _reset_memory(device)
    sec = _time(step, args.steps, args.warmup, device)
    peak = _peak_mib(device)
    text_sec = _time_text(lambda: ref.text_features(), [ref.ctx], args, device,
                          torch.autocast("cuda", dtype=torch.float16) if ref.amp else None)
    return {"steps_per_s": 1 / sec, "images_per_s": args.batch / sec, "peak_mib": peak, "context": 77,
            "text_s": text_sec, "precision": args.coop_precision if device.type == "cuda" else "fp32"}


# -- (b) ours -------------------------------------------------------------------------------------------------


def synthetic_features(names: list[str], shots: int, views: int, embed: int, seed: int = 0):
    import numpy as np

    from trainables.clip import FeatureSet, SplitFeatures

    rng = np.random.default_rng(seed)
    n = len(names) * shots
    feats = rng.standard_normal((views, n, embed)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=-1, keepdims=True)
    labels = np.repeat(np.arange(len(names)), shots)
    train = SplitFeatures(feats.astype(np.float16), labels, [f"synthetic-{v}" for v in range(views)])
    return FeatureSet({"train": train}, list(names))


def build_ours(args, backbone, names, compile_mode: str = "none"):
    import torch

    from trainables.clip import ClipPromptModel

    model = ClipPromptModel(backbone, names, n_ctx=args.n_ctx)
    embed = int(backbone.model.text_projection.shape[1])
    model.attach_features(synthetic_features(names, args.shots, args.views, embed))
    if compile_mode != "none":
        model._encode = torch.compile(model._encode, mode=None if compile_mode == "default" else compile_mode)
    return model


def phase_loop(model, args, seed: int = 0):
    """The step ``run_phase`` takes (``trainables.phase.Phase.step``: a batch, loss, backward, the CoOp
    schedule's learning rate, SGD step, ``float(loss)``), on a phase prepared from ``a photo of a``."""
    import itertools

    from trainables.phase import Phase

    train = model.examples("train")
    config = {"prompt_init": "a photo of a", "phase_seed": seed, "steps": 1, "eval_every": 1, "batch_size": args.batch,
              "lr": 0.002, "optimizer": "sgd", "weight_decay": 5e-4}
    phase = Phase(config, model, train, train[:1])
    phase.prepare()  # the start, evaluated on one example
    steps = itertools.count(1)
    return (lambda: phase.step(next(steps))), phase.prompt


def _time_text(forward, params, args, device, autocast=None) -> float:
    """Seconds per text-encoder forward + backward to the context."""
    import torch

    def step():
        with autocast if autocast is not None else _null():
            feats = forward()
        (feats.float() * weight[: feats.shape[-1]]).sum().backward()
        for p in params:
            p.grad = None

    weight = torch.linspace(-1, 1, 4096, device=device)
    return _time(step, args.steps, args.warmup, device)


def measure_ours(args, backbone, names, device, compile_mode: str = "none") -> dict:
    model = build_ours(args, backbone, names, compile_mode)
    step, prompt = phase_loop(model, args)
    _reset_memory(device)
    sec = _time(step, args.steps, args.warmup + (5 if compile_mode != "none" else 0), device)
    peak = _peak_mib(device)
    text_sec = _time_text(lambda: model.text_features(prompt), [prompt], args, device)
    return {"steps_per_s": 1 / sec, "images_per_s": args.batch / sec, "peak_mib": peak, "context": model.length,
            "text_s": text_sec, "precision": "bf16" if device.type == "cuda" else "fp32",
            "attention": "sdpa" if model.use_sdpa else "open_clip", "compile": compile_mode}


def measure_batched(args, backbone, names, device, prompts: int) -> dict:
    """P trials' prompts through the text encoder in one forward, each with its own batch and loss."""
    import torch
    import torch.nn.functional as F

    model = build_ours(args, backbone, names)
    feats, labels = model._features["train"], model._labels["train"]
    n = feats.shape[1]
    init = model.init_vectors("a photo of a").to(device)
    ctx = torch.nn.Parameter(init.unsqueeze(0).repeat(prompts, 1, 1))
    optimizer = torch.optim.SGD([ctx], lr=0.002, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator(device=device).manual_seed(0)

    def step():
        index = torch.randint(n, (prompts, args.batch), device=device, generator=gen)
        view = torch.randint(feats.shape[0], (prompts, args.batch), device=device, generator=gen)
        images = feats[view, index].float()  # [P, B, E]
        text = model.text_features_many(ctx)  # [P, C, E]
        logits = model.logit_scale * torch.bmm(images, text.transpose(1, 2))
        loss = F.cross_entropy(logits.flatten(0, 1), labels[index].flatten(), reduction="sum") / args.batch
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        float(loss.detach())

    _reset_memory(device)
    sec = _time(step, args.steps, args.warmup, device)
    return {"prompts": prompts, "forwards_per_s": 1 / sec, "aggregate_steps_per_s": prompts / sec,
            "peak_mib": _peak_mib(device)}


# -- concurrent trials (processes) ----------------------------------------------------------------------------


def _worker(rank: int, args, commands, results) -> None:
    """One trial process: builds its model per class count once, then runs timed windows on command."""
    import traceback

    try:
        import torch

        torch.set_num_threads(args.threads or 1)  # the processes share the host's cores
        device = _device(args)
        backbone = _backbone(args, device, image_tower=False)  # as a Tune trial given cached features
        steps_for: dict = {}
        while True:
            command = commands.get()
            if command[0] == "stop":
                return
            if command[0] == "prepare":
                classes = command[1]
                if classes not in steps_for:
                    model = build_ours(args, backbone, class_names(backbone.tokenizer, classes))
                    steps_for[classes] = phase_loop(model, args, seed=rank)[0]
                for _ in range(max(1, args.warmup)):
                    steps_for[classes]()
                _sync(device)
                results.put(("ready", rank))
            elif command[0] == "run":
                _, classes, start_at, seconds = command
                step = steps_for[classes]
                time.sleep(max(0.0, start_at - time.time()))
                start, steps = time.perf_counter(), 0
                while time.perf_counter() - start < seconds:
                    step()
                    steps += 1
                _sync(device)
                results.put(("done", rank, steps, time.perf_counter() - start))
    except Exception:
        results.put(("error", rank, traceback.format_exc()))


class TrialProcesses:
    """``n`` worker processes (spawned once, reused for every level), each a trial's phase loop on the device."""

    def __init__(self, args, n: int) -> None:
        ctx = mp.get_context("spawn")
        self.results = ctx.Queue()
        self.commands = [ctx.Queue() for _ in range(n)]
        self.procs = [ctx.Process(target=_worker, args=(r, args, self.commands[r], self.results), daemon=True)
                      for r in range(n)]
        for p in self.procs:
            p.start()

    def _collect(self, n: int, kind: str) -> list:
        out = []
        while len(out) < n:
            message = self.results.get(timeout=900)
            if message[0] == "error":
                raise RuntimeError(f"trial process {message[1]} failed:\n{message[2]}")
            if message[0] == kind:
                out.append(message[1:])
        return out

    def measure(self, classes: int, trials: int, seconds: float) -> dict:
        for q in self.commands[:trials]:
            q.put(("prepare", classes))
        self._collect(trials, "ready")
        start_at = time.time() + 0.5  # all start together, after the slowest finished warming up
        for q in self.commands[:trials]:
            q.put(("run", classes, start_at, seconds))
        rows = self._collect(trials, "done")
        per_trial = [steps / sec for _, steps, sec in sorted(rows)]
        return {"classes": classes, "trials": trials, "aggregate_steps_per_s": sum(per_trial), "per_trial": per_trial}

    def close(self) -> None:
        for q in self.commands:
            q.put(("stop",))
        for p in self.procs:
            p.join(timeout=60)


# -- main -----------------------------------------------------------------------------------------------------


def peak_tflops(args, device) -> tuple[float | None, str]:
    import torch

    if args.peak_tflops:
        return args.peak_tflops, "--peak-tflops"
    if device.type != "cuda":
        return None, "no bf16 peak for a CPU (pass --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value, f"table entry {key!r}"
    return None, f"{name!r} is not in the table (pass --peak-tflops)"


def _fmt(x, spec=".1f", none="n/a") -> str:
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args)
    backbone = _backbone(args, device)
    text = backbone.model.transformer
    layers, width = len(text.resblocks), text.width
    embed = int(backbone.model.text_projection.shape[1])
    peak, peak_source = peak_tflops(args, device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {device_name} | dense bf16 peak: {_fmt(peak, '.0f')} TFLOP/s ({peak_source})")
    print(f"model: {'tiny CLIP' if args.tiny else args.model} (random init), text {layers} layers x {width} | "
          f"{args.shots} shots, batch {args.batch}, {args.n_ctx} context tokens, {args.views} cached views")
    result = {"device": device_name, "peak_tflops": peak, "model": "tiny" if args.tiny else args.model,
              "args": {k: v for k, v in vars(args).items()}, "speed": [], "concurrency": [], "batched_prompts": []}

    print(f"\n{'classes':>7}  {'variant':<56} {'steps/s':>8} {'images/s':>9} {'peak MiB':>9} {'text TFLOP/s':>13} {'of peak':>8}")
    for classes in args.classes:
        names = class_names(backbone.tokenizer, classes)
        coop = measure_coop(args, backbone, names, device)
        variants = [("ours", measure_ours(args, backbone, names, device))]
        if args.compile != "none":
            try:
                variants.append((f"ours+compile({args.compile})",
                                 measure_ours(args, backbone, names, device, args.compile)))
            except Exception as e:  # a compiler failure is a result too
                print(f"{classes:>7}  torch.compile({args.compile}) failed: {type(e).__name__}: {str(e)[:200]}")
        row = {"classes": classes, "coop": coop}
        for label, r in [("coop", coop), *variants]:
            r["text_tflops"] = text_flops(classes, r["context"], layers, width, embed) / r["text_s"] / 1e12
            r["text_share"] = r["text_tflops"] / peak if peak else None
            what = (f"CoOp ({r['precision']}, image encoder, ctx 77, MHA)" if label == "coop" else
                    f"{label} (cached, ctx {r['context']}, {r['precision']}, {r['attention']})")
            share = _fmt(100 * r["text_share"], ".1f") + "%" if r["text_share"] is not None else "n/a"
            print(f"{classes:>7}  {what:<56} {r['steps_per_s']:>8.1f} {r['images_per_s']:>9.0f} "
                  f"{_fmt(r['peak_mib'], '.0f'):>9} {r['text_tflops']:>13.3g} {share:>8}")
            if label != "coop":
                row[label] = r
        row["ratio"] = row["ours"]["steps_per_s"] / coop["steps_per_s"]
        print(f"{classes:>7}  ratio ours / CoOp: {row['ratio']:.2f}x steps/s")
        result["speed"].append(row)

    if args.prompts:
        print("\nbatched prompts: P trials' contexts in one text-encoder forward (each its own batch and loss)")
        for classes in args.classes:
            names = class_names(backbone.tokenizer, classes)
            base = None
            for p in args.prompts:
                try:
                    r = measure_batched(args, backbone, names, device, p)
                except torch.OutOfMemoryError:
                    print(f"{classes:>7}  P={p}: out of memory")
                    break
                base = base or r["aggregate_steps_per_s"] / p
                r["classes"], r["speedup"] = classes, r["aggregate_steps_per_s"] / base
                print(f"{classes:>7}  P={p:<2} {r['forwards_per_s']:8.1f} forwards/s  {r['aggregate_steps_per_s']:8.1f} "
                      f"trial-steps/s  {r['speedup']:5.2f}x of P=1  peak {_fmt(r['peak_mib'], '.0f')} MiB")
                result["batched_prompts"].append(r)

    if args.concurrency:
        print(f"\nconcurrent trials: separate processes on one {device.type} device, {args.seconds:.0f} s window")
        workers = TrialProcesses(args, max(args.concurrency))
        try:
            for classes in args.concurrency_classes:
                one = None
                for n in args.concurrency:
                    r = workers.measure(classes, n, args.seconds)
                    one = one or r["aggregate_steps_per_s"] / n
                    r["speedup"] = r["aggregate_steps_per_s"] / one
                    print(f"{classes:>7}  {n} trial(s): {r['aggregate_steps_per_s']:8.1f} steps/s aggregate "
                          f"({r['speedup']:.2f}x one trial; per trial {', '.join(f'{x:.1f}' for x in r['per_trial'])})")
                    result["concurrency"].append(r)
        finally:
            workers.close()

    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)
        print(f"\nresults: {args.json}")
    return result


if __name__ == "__main__":
    main()
