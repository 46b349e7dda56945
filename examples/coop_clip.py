"""CoOp prompt learning on CLIP with an LLM mentor: ``tune.run`` + ``LLMSearch`` on your image data set.

Each Tune trial is one CoOp gradient phase (16 learnable context vectors on a frozen open_clip model); the
image features are computed once (cached on disk, shared with trials through the Ray object store); trials
ask for a fraction of a GPU so several run on one card. Tune's per-trial curves and the searcher's
generation summaries go to TensorBoard under the experiment folder.

    # one folder of images per class (split here: shots / val_shots / rest for test)
    python examples/coop_clip.py --root ~/data/oxford_pets/images --pretrained openai

    # CoOp's own splits (https://github.com/KaiyangZhou/CoOp, DATASETS.md): paths relative to --root
    python examples/coop_clip.py --root ~/data/oxford_pets/images \\
        --split-file ~/data/oxford_pets/split_zhou_OxfordPets.json --shots 16

    # weights from a local file (offline), 8 trials per GPU, an OpenAI-compatible mentor
    python examples/coop_clip.py --root ... --pretrained ~/weights/ViT-B-16.pt --gpus-per-trial 0.125 \\
        --llm openai --llm-model gpt-4o-mini

    # a CPU smoke run: generated images, a tiny random-init CLIP (learns nothing real), the offline mentor
    python examples/coop_clip.py --demo
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ray_llm_search.flags import add_llm_flags, add_search_flags, llm_from_flags  # noqa: E402

SEEDS = ["a photo of a", "a photo of the", "a close-up photo of a", "itap of a"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--root", help="folder of class folders, or the image folder of --split-file")
    data.add_argument("--split-file", default=None, help="CoOp split JSON (train/val/test of [path, label, name])")
    data.add_argument("--shots", type=int, default=16, help="training images per class")
    data.add_argument("--val-shots", type=int, default=None, help="validation images per class (min(shots, 4))")
    data.add_argument("--test-size", type=int, default=None, help="at most this many test images")
    data.add_argument("--task", default=None, help="what the LLM is told the prompt is for")
    model = p.add_argument_group("model")
    model.add_argument("--model", default="ViT-B-16", help="open_clip architecture")
    model.add_argument("--pretrained", default="openai", help="open_clip tag, a local weights file, or 'none'")
    model.add_argument("--n-ctx", type=int, default=16)
    model.add_argument("--class-token-position", choices=["end", "middle", "front"], default="end")
    model.add_argument("--csc", action="store_true", help="class-specific context")
    model.add_argument("--views", type=int, default=8, help="cached augmented views per training image")
    model.add_argument("--cache-dir", default=None, help="feature cache (default ~/.cache/ray_llm_search/clip_features)")
    search = p.add_argument_group("search")
    add_search_flags(search, steps=200, eval_every=50)
    search.add_argument("--lr", type=float, default=0.002)
    search.add_argument("--batch-size", type=int, default=32)
    add_llm_flags(search)
    run = p.add_argument_group("run")
    run.add_argument("--gpus-per-trial", type=float, default=None, help="default 0.25 with GPUs (4 trials a card)")
    run.add_argument("--cpus-per-trial", type=float, default=1)
    run.add_argument("--storage", default=os.path.expanduser("~/ray_results"))
    run.add_argument("--name", default=None)
    run.add_argument("--demo", action="store_true", help="generated images + tiny random-init CLIP on CPU")
    args = p.parse_args(argv)
    if not args.demo and not args.root:
        p.error("--root is required (or --demo)")
    return args


def demo_dataset(folder: str) -> str:
    """Three classes of noisy, differently tinted 48 px images: enough for the pipeline to run end to end."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(["red_apple", "green_leaf", "blue_sky"]):
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        for i in range(8):
            pixels = rng.integers(0, 120, (48, 48, 3))
            pixels[..., c] += 120
            Image.fromarray(pixels.astype("uint8")).save(os.path.join(folder, name, f"{i}.png"))
    return folder


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import ray
    from ray import tune

    from ray_llm_search import LLMSearch
    from trainables.clip import (
        TINY_MODEL_CONFIG,
        clip_config,
        clip_trainable,
        dataset_for,
        evaluate_clip_prompt,
    )

    data = {"root": args.root, "shots": args.shots}
    for key, value in (("split_file", args.split_file), ("val_shots", args.val_shots), ("test_size", args.test_size)):
        if value is not None:
            data[key] = value
    base = {
        "model": args.model,
        "pretrained": None if str(args.pretrained).lower() == "none" else args.pretrained,
        "data": data,
        "n_ctx": args.n_ctx,
        "class_token_position": args.class_token_position,
        "csc": args.csc,
        "views": args.views,
        "cache_dir": args.cache_dir,
        "steps": args.steps,
        "eval_every": args.eval_every,
        "lr": args.lr,
        "batch_size": args.batch_size,
    }
    if args.demo:
        data.update(root=demo_dataset(tempfile.mkdtemp(prefix="coop_demo_")), shots=2, val_shots=2)
        base.update(model="coop-tiny", pretrained=None, model_config=TINY_MODEL_CONFIG, n_ctx=4, views=2,
                    steps=6, eval_every=3, batch_size=4, device="cpu",
                    cache_dir=args.cache_dir or os.path.join(tempfile.gettempdir(), "coop_demo_cache"))
        args.population, args.generations = min(args.population, 2), min(args.generations, 2)
    clip_config(base)  # bad paths, names and values fail here, before Ray starts or a model loads
    classnames = dataset_for(base["data"]).classnames
    task = args.task or ("Write the words placed before a class name in a prompt to CLIP, so that CLIP classifies "
                         f"a photo into one of {len(classnames)} classes: {', '.join(classnames[:12])}"
                         f"{', ...' if len(classnames) > 12 else ''}.")

    name = args.name or "coop_" + datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    storage = os.path.abspath(os.path.expanduser(args.storage))
    experiment = os.path.join(storage, name)
    llm = llm_from_flags(args)
    search = LLMSearch(llm, task, SEEDS, metric="val_acc", mode="max", population=args.population,
                       generations=args.generations, elites=args.elites, max_prompt_words=max(4, args.n_ctx),
                       seed=args.seed, log_dir=experiment)

    ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    gpus = ray.cluster_resources().get("GPU", 0)
    resources = {"cpu": args.cpus_per_trial}
    if gpus and not args.demo:
        resources["gpu"] = args.gpus_per_trial if args.gpus_per_trial is not None else 0.25
    started = time.time()
    trainable = clip_trainable(base, resources=resources)  # encodes the images once (a GPU task if there is one)
    print(f"image features ready in {time.time() - started:.1f}s; trials ask for {resources}")
    tune.run(trainable, name=name, storage_path=storage, config=base, search_alg=search,
             num_samples=search.total_trials, metric="val_acc", mode="max", reuse_actors=True, verbose=1)

    print("\n=== generations ===")
    print(f"{'gen':>3} | {'best val_acc':>12} | best prompt (projected)")
    for record in search.records:
        print(f"{record['generation']:>3} | {record['best_metric']:>12.3f} | {record['best_prompt']}")
    best = search.best()
    seed_test = evaluate_clip_prompt(base, text=SEEDS[0])
    best_test = evaluate_clip_prompt(base, vectors_path=best["vectors_path"])
    print("\n=== test accuracy (never seen by any phase) ===")
    print(f"seed prompt as initialised  {seed_test['acc']:.3f}  \"{seed_test['prompt_text']}\"")
    print(f"final best (gen {best['generation']}, {best['origin']}) {best_test['acc']:.3f}  \"{best_test['prompt_text']}\"")
    print(f"\nresults: {experiment}\nwatch it: tensorboard --logdir {experiment}")
    return {"best": best, "seed_test": seed_test, "best_test": best_test, "experiment": experiment}


if __name__ == "__main__":
    main()
