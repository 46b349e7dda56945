"""What a quickstart-sized phase's vectors cost on object storage: bytes per file, and the seconds of its saves
and of an elite's load, on moto's S3-compatible server on loopback (tests/scripts/storage_phase.py; needs
``moto[server]``), against the same phase with a local ``vector_dir``.

One real phase of the quickstart (MiniLM, ``prompt_length`` 8, the label-name head, BBC News 16 shots, 12 steps
evaluated every 4, ``keep_lowest_loss`` as the default design sets it) runs twice with the same seed: once with
``vector_dir`` an ``s3://`` URI, once a local folder; every ``save_vectors`` call is timed, then the best file is
loaded as an elite would (``load_vectors``), ``--loads`` times. Loopback only: a real store adds its network
round trip (tens of ms per request within a region) to each save and load.

    python examples/bench_storage.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "scripts"))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loads", type=int, default=10)
    args = p.parse_args(argv)

    import storage_phase
    import torch

    from trainables import phase as phase_module
    from trainables.benchmark_data import BENCHMARKS
    from trainables.text_prompt import build_classifier, dataset_for

    torch.set_num_threads(1)
    config = {"data": BENCHMARKS["bbc"].data_spec(shots=16, val_shots=8, test_size=50, seed=0), "steps": 12,
              "eval_every": 4, "lr": 0.05, "batch_size": 16, "prompt_length": 8, "max_length": 64,
              "prompt_init": BENCHMARKS["bbc"].seed_prompts[0], "keep_lowest_loss": True, "phase_seed": 1}
    data = dataset_for(config)
    saves: list[tuple[str, float]] = []
    original = phase_module.save_vectors

    def timed(path, *a, **kw):
        t = time.perf_counter()
        original(path, *a, **kw)
        saves.append((path, time.perf_counter() - t))

    phase_module.save_vectors = timed
    out = {}
    with tempfile.TemporaryDirectory() as tmp, storage_phase.s3_server(tmp) as s3:
        for where, vector_dir in (("s3", s3.uri("bench/vectors")), ("local", os.path.join(tmp, "vectors"))):
            saves.clear()
            model = build_classifier(config, data)
            t = time.perf_counter()
            best = phase_module.run_phase({**config, "vector_dir": vector_dir, "trial_id": "bench"}, model,
                                          data.train, data.val, report=lambda m, c: None)
            phase_s = time.perf_counter() - t
            path = best["vectors_path"]
            loads = []
            for _ in range(args.loads):
                t = time.perf_counter()
                phase_module.load_vectors(path, model.identity())
                loads.append(time.perf_counter() - t)
            if where == "s3":
                fs = s3.filesystem()
                sizes = {k: fs.get_file_info(k).size for k in s3.keys("bench/vectors")}
            else:
                sizes = {n: os.path.getsize(os.path.join(vector_dir, n)) for n in os.listdir(vector_dir)}
            out[where] = {"phase_s": round(phase_s, 2), "saves": len(saves),
                          "save_s_total": round(sum(s for _, s in saves), 4),
                          "save_ms_median": round(1000 * statistics.median(s for _, s in saves), 1),
                          "load_ms_median": round(1000 * statistics.median(loads), 1), "bytes": sizes}
            print(where, out[where], flush=True)
            saved = phase_module.load_vectors(path, model.identity())
    out["prompt_bytes"] = saved["prompt"].numel() * saved["prompt"].element_size()
    out["head_tensors"] = sorted(saved["extra"])
    print(f"prompt tensor {tuple(saved['prompt'].shape)}: {out['prompt_bytes']} bytes of floats; head state: "
          f"{out['head_tensors'] or 'none (label-name head)'}")
    return out


if __name__ == "__main__":
    main()
