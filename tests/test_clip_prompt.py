"""CoOp on open_clip, offline on CPU with a tiny random-init CLIP (``TINY_MODEL_CONFIG``) and generated
images: prompt layout and shapes, equality with open_clip's own text encoder, the cut context, projection
through CLIP's token embedding, the feature cache (hit, miss, invalidation, corruption), the learning-rate
schedule, errors before any model work, one phase, and ``tune.run`` with ``LLMSearch``."""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from trainables import clip as cp
from trainables.clip import backbone as clip_backbone
from trainables.clip import features as clip_features
from trainables.clip import trainable as clip_trial
from trainables.phase import load_vectors, save_vectors
from trainables.projection import project_to_tokens

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = {"golden_retriever": 6, "tabby_cat": 6, "001.Red_fox": 6}
NAMES = ["golden retriever", "tabby cat", "Red fox"]  # folder order: golden_retriever, tabby_cat, 001.Red_fox
SOT, EOT = 49406, 49407


def write_image(path, seed: int = 0, size=(40, 48)) -> str:
    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(size[0], size[1], 3, generator=g) * 255).to(torch.uint8).numpy()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path)
    return str(path)


def make_tree(root, classes: dict[str, int]) -> str:
    for c, (name, count) in enumerate(classes.items()):
        for i in range(count):
            write_image(os.path.join(root, name, f"img{i}.png"), seed=100 * c + i)
    return str(root)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> str:
    return make_tree(tmp_path_factory.mktemp("images") / "animals", CLASSES)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


def _config(root: str, cache: str, **overrides) -> dict:
    return {"model": "coop-tiny", "pretrained": None, "model_config": cp.TINY_MODEL_CONFIG,
            "data": {"root": root, "shots": 2, "val_shots": 2, "seed": 0}, "n_ctx": 4, "views": 2,
            "cache_dir": cache, "device": "cpu", "prompt_init": "a photo of a", "steps": 4, "eval_every": 2,
            "batch_size": 4, "lr": 0.002, "phase_seed": 1, **overrides}


@pytest.fixture(scope="module")
def config(image_root, cache_dir) -> dict:
    return _config(image_root, cache_dir)


@pytest.fixture(scope="module")
def backbone(config):
    return cp.load_clip("coop-tiny", None, cp.TINY_MODEL_CONFIG, device="cpu")


def _model(backbone, **kwargs) -> cp.ClipPromptModel:
    return cp.ClipPromptModel(backbone, NAMES, **{"n_ctx": 4, **kwargs})


# -- the prompt model -------------------------------------------------------------------------------------


def test_tokenizer_special_tokens(backbone):
    tok = backbone.tokenizer
    assert (tok.sot_token_id, tok.eot_token_id) == (SOT, EOT) and tok.all_special_ids == [SOT, EOT]
    assert tok("a photo of a")["input_ids"] == [320, 1125, 539, 320]
    assert tok.decode([SOT, 320, 1125, 539, 320, 1929, 269, EOT]) == "a photo of a dog."


@pytest.mark.parametrize("position", cp.POSITIONS)
def test_prompt_layout(backbone, position):
    model = _model(backbone, n_ctx=4, class_token_position=position)
    tok = backbone.tokenizer
    name = tok.encode("golden retriever")
    x, dot = tok.encode("X")[0], tok.encode(".")
    expected = {"end": [SOT, x, x, x, x, *name, *dot, EOT],
                "middle": [SOT, x, x, *name, x, x, *dot, EOT],
                "front": [SOT, *name, x, x, x, x, *dot, EOT]}[position]
    row = model.token_ids[0].tolist()
    assert row[: len(expected)] == expected and int(model.eot[0]) == len(expected) - 1
    slots = model.ctx_slot[0].tolist()
    assert [s for s in slots if s >= 0] == [0, 1, 2, 3]
    assert model.length == int(model.eot.max()) + 1 < 77  # the cut context
    assert all(t == 0 for t in model.token_ids[0, len(expected):].tolist())


def test_shapes_and_gradients(backbone, config):
    model = _model(backbone)
    features = cp.prepare_features(config)
    model.attach_features(features)
    vectors = model.init_vectors("a photo of a")
    assert vectors.shape == (4, 64) and model.vector_shape == (4, 64)
    assert model.text_features(vectors).shape == (3, 32)
    train = model.examples("train")
    assert len(train) == 6 and {e.label for e in train} == {0, 1, 2}
    assert features.splits["train"].features.shape == (2, 6, 32)  # [views, images, embed]
    assert features.splits["val"].features.shape == (1, 6, 32)
    logits = model.logits(vectors, train[:4])
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    vectors.requires_grad_(True)
    model.loss(vectors, train[:4]).backward()
    assert vectors.grad is not None and vectors.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in backbone.model.parameters())
    loss, acc = model.evaluate(vectors.detach(), model.examples("val"))
    assert math.isfinite(loss) and 0.0 <= acc <= 1.0
    csc = _model(backbone, csc=True)
    v = csc.init_vectors("a photo of a")
    assert v.shape == (3, 4, 64) and torch.equal(v[0], v[2])
    assert csc.text_features(v).shape == (3, 32)
    with pytest.raises(ValueError, match=r"\(3, 4, 64\)"):
        csc.text_features(vectors.detach())


def test_features_equal_open_clips_own_text_encoder(backbone):
    """With the context set to the embeddings of real words, the prompted features are exactly what
    open_clip's encode_text gives for the written prompt."""
    prompts = [f"a photo of a {n}." for n in NAMES]
    expected = F.normalize(backbone.model.encode_text(backbone.tokenizer.simple(prompts)), dim=-1)
    for attention in ("open_clip", "sdpa"):
        for cut in (False, True):
            model = _model(backbone, attention=attention, cut_context=cut)
            got = model.text_features(model.init_vectors("a photo of a"))
            assert (got - expected).abs().max() < 1e-5, (attention, cut)


@pytest.mark.parametrize("position", cp.POSITIONS)
@pytest.mark.parametrize("csc", [False, True])
def test_cut_context_equals_full_context(backbone, position, csc):
    full = _model(backbone, n_ctx=6, class_token_position=position, csc=csc, cut_context=False, attention="open_clip")
    cut = _model(backbone, n_ctx=6, class_token_position=position, csc=csc, cut_context=True, attention="auto")
    assert cut.use_sdpa and cut.length < full.length == 77
    torch.manual_seed(0)
    vectors = full.init_vectors("a photo of a") + 0.05 * torch.randn(full.vector_shape)
    assert (cut.text_features(vectors) - full.text_features(vectors)).abs().max() < 1e-4
    # and the gradients that train the context agree too
    grads = []
    for model in (full, cut):
        v = vectors.clone().requires_grad_(True)
        (model.text_features(v) * torch.linspace(-1, 1, 32)).sum().backward()
        grads.append(v.grad)
    assert (grads[0] - grads[1]).abs().max() < 1e-4


def test_many_prompts_in_one_forward(backbone):
    model = _model(backbone, class_token_position="middle")
    torch.manual_seed(1)
    ctx = torch.stack([model.init_vectors(t) for t in ("a photo of a", "a blurry photo", "itap of my")])
    ctx = ctx + 0.01 * torch.randn_like(ctx)
    many = model.text_features_many(ctx)
    assert many.shape == (3, 3, 32)
    for p in range(3):
        assert (many[p] - model.text_features(ctx[p])).abs().max() < 1e-5


def test_long_class_name_is_cut_to_fit(backbone, caplog):
    long_name = " ".join(["very"] * 80)
    with caplog.at_level(logging.WARNING, logger="trainables.clip"):
        model = cp.ClipPromptModel(backbone, ["cat", long_name], n_ctx=16)
    assert model.length == 77 and int(model.eot[1]) == 76
    assert any("cut" in r.getMessage() for r in caplog.records)
    assert model.text_features(model.init_vectors("a photo of a")).shape == (2, 32)


# -- projection ---------------------------------------------------------------------------------------------


def test_projection_round_trip(backbone):
    model = _model(backbone, n_ctx=4)
    assert model.project(model.init_vectors("a photo of a")) == "a photo of a"
    assert _model(backbone, n_ctx=6).project(_model(backbone, n_ctx=6).init_vectors("a photo of a")) == \
        "a photo of a a photo"  # shorter text is cycled to n_ctx words, as PEFT does
    embedding = backbone.model.token_embedding.weight
    ids = torch.tensor([1929, 2368, 3878, 28394])  # dog, cat, golden, retriever
    noisy = embedding[ids] + 0.001 * torch.randn(4, embedding.shape[1])
    assert model.project(noisy) == backbone.tokenizer.decode(ids.tolist())
    l2 = _model(backbone, projection="l2")
    assert l2.project(embedding[ids]) == backbone.tokenizer.decode(ids.tolist())
    specials = embedding[[SOT, EOT, SOT, EOT]]
    projected = project_to_tokens(specials, embedding, "cosine", model.excluded)
    assert not set(projected.tolist()) & {SOT, EOT}  # never a special token, even from its own vector
    csc = _model(backbone, csc=True)
    assert csc.project(csc.init_vectors("a photo of a")) == "a photo of a"


def test_random_init_for_empty_text(backbone):
    model = _model(backbone)
    torch.manual_seed(0)
    v = model.init_vectors("")
    assert v.shape == (4, 64) and 0.005 < v.std() < 0.05  # CoOp's N(0, 0.02)
    assert isinstance(model.project(v), str)


# -- the feature cache through prepare_features -------------------------------------------------------------


@pytest.fixture
def counted(monkeypatch) -> list:
    """Calls of the image encoder (``encode_images``): (split, views) per call."""
    calls: list = []
    original = clip_features.encode_images

    def encode(backbone, dataset, split, views, *args, **kwargs):
        calls.append((split, list(views)))
        return original(backbone, dataset, split, views, *args, **kwargs)

    monkeypatch.setattr(clip_features, "encode_images", encode)
    return calls


def test_cache_miss_hit_and_invalidation(tmp_path, counted):
    root = make_tree(tmp_path / "data", CLASSES)
    config = _config(root, str(tmp_path / "cache"))
    first = cp.prepare_features(config)
    assert counted == [("train", [0, 1]), ("val", [None])]  # miss: the encoder ran once per split
    assert len([f for f in os.listdir(tmp_path / "cache") if f.endswith(".pt")]) == 3  # 2 views + val
    second = cp.prepare_features(config)
    assert len(counted) == 2  # hit: no encoder
    for split in ("train", "val"):
        assert (second.splits[split].features == first.splits[split].features).all()
        assert second.splits[split].keys == first.splits[split].keys
    views = first.splits["train"].features
    assert not (views[0] == views[1]).all()  # two different augmented views
    more = cp.prepare_features({**config, "views": 3})
    assert counted[-1] == ("train", [2])  # only the new view is encoded
    assert (more.splits["train"].features[:2] == views).all()

    # A training image changes: the train entries are rebuilt, the untouched val split is not.
    changed = cp.dataset_for(config["data"]).train[0].path
    write_image(changed, seed=1234)
    os.utime(changed, ns=(1, 10**18))
    third = cp.prepare_features(config)
    assert counted[-1] == ("train", [0, 1]) and len(counted) == 4
    assert third.splits["train"].keys != first.splits["train"].keys
    assert third.splits["val"].keys == first.splits["val"].keys
    assert not (third.splits["train"].features[:, 0] == views[:, 0]).all()
    assert (third.splits["train"].features[:, 1:] == views[:, 1:]).all()


def test_other_weights_other_cache_entries(tmp_path, counted):
    root = make_tree(tmp_path / "data", CLASSES)
    config = _config(root, str(tmp_path / "cache"))
    a = cp.prepare_features(config)
    b = cp.prepare_features({**config, "init_seed": 1})  # other random weights
    assert len(counted) == 4 and a.splits["val"].keys != b.splits["val"].keys
    assert not (a.splits["val"].features == b.splits["val"].features).all()


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
def test_corrupt_cache_file_is_rebuilt(tmp_path, counted, caplog, damage):
    root = make_tree(tmp_path / "data", CLASSES)
    config = _config(root, str(tmp_path / "cache"))
    good = cp.prepare_features(config)
    path = os.path.join(str(tmp_path / "cache"), good.splits["val"].keys[0] + ".pt")
    if damage == "truncate":
        with open(path, "rb") as f:
            blob = f.read()
        with open(path, "wb") as f:
            f.write(blob[: len(blob) - 200])
    else:
        saved = torch.load(path, weights_only=True)
        saved["features"] = saved["features"].flip(0)  # a plausible tensor, but not the one checksummed
        torch.save(saved, path)
    with caplog.at_level(logging.WARNING, logger="trainables.clip"):
        again = cp.prepare_features(config)
    assert counted[-1] == ("val", [None]) and len(counted) == 3
    assert any(path in r.getMessage() for r in caplog.records)
    assert (again.splits["val"].features == good.splits["val"].features).all()


# -- bad input: clear errors before any model work ----------------------------------------------------------


@pytest.fixture
def no_model_work(monkeypatch):
    """Fail the test if anything creates a model or runs an encoder."""
    import open_clip

    def forbidden(*args, **kwargs):
        raise AssertionError("model work before the input was validated")

    monkeypatch.setattr(clip_backbone, "_BACKBONES", {})
    monkeypatch.setattr(open_clip, "create_model", forbidden)
    monkeypatch.setattr(clip_features, "encode_images", forbidden)
    monkeypatch.setattr(clip_trial, "_DATASETS", {})


def _bad_input_cases(tmp_path) -> list[tuple[dict, str]]:
    good = make_tree(tmp_path / "good", {"cat": 4, "dog": 4})
    empty = make_tree(tmp_path / "empty", {"cat": 4, "dog": 4})
    os.makedirs(os.path.join(empty, "zebra"))
    unreadable = make_tree(tmp_path / "unreadable", {"cat": 5, "dog": 4})  # + the bad one: all 5 are used
    bad_image = os.path.join(unreadable, "dog", "img9.jpg")
    with open(bad_image, "w") as f:
        f.write("not an image")
    weights = str(tmp_path / "missing" / "weights.pt")
    return [
        ({"data": {"root": str(tmp_path / "nowhere"), "shots": 1}}, re.escape(str(tmp_path / "nowhere"))),
        ({"data": {"root": empty, "shots": 1}}, re.escape(os.path.join(empty, "zebra"))),
        ({"data": {"root": unreadable, "shots": 4, "val_shots": 1}}, re.escape(bad_image)),
        ({"data": {"root": good, "shots": 5}}, re.escape(os.path.join(good, "cat")) + ".*shots=5"),
        ({"data": {"root": good, "shots": 1}, "model": "ViT-Q-99", "model_config": None}, "'ViT-Q-99'"),
        ({"data": {"root": good, "shots": 1}, "model": "ViT-B-16", "model_config": None, "pretrained": "opnai"},
         "'opnai'.*'openai'"),
        ({"data": {"root": good, "shots": 1}, "model": "ViT-B-16", "model_config": None, "pretrained": weights},
         re.escape(weights)),
        ({"data": {"root": good, "shots": 1}, "n_ctx": 0}, "n_ctx"),
        ({"data": {"root": good, "shots": 1}, "class_token_position": "left"}, "'left'"),
        ({"data": {"root": good, "shots": 1}, "views": 0}, "views"),
        ({"data": {"root": good, "shots": 1}, "attention": "flash"}, "'flash'"),
        ({"data": {"root": good, "shots": 1}, "schedule": "step"}, "'step'"),
        ({"data": {"root": good, "shots": 1}, "batch_size": 0}, "batch_size"),  # the phase keys, checked early
    ]


def test_bad_input_raises_before_model_work(tmp_path, no_model_work):
    for overrides, match in _bad_input_cases(tmp_path):
        config = {**_config("unused", str(tmp_path / "cache")), **overrides}
        for entry in (cp.prepare_features, cp.train_clip_prompt):
            with pytest.raises(ValueError, match=match):
                entry(config)
                pytest.fail(f"{entry.__name__} accepted {overrides}")
    with pytest.raises(ValueError, match="data"):
        cp.train_clip_prompt({"model": "ViT-B-16"})


def test_unloadable_weights_name_the_model(tmp_path, monkeypatch):
    weights = tmp_path / "not_weights.pt"
    weights.write_bytes(b"garbage")
    monkeypatch.setattr(clip_backbone, "_BACKBONES", {})
    with pytest.raises(ValueError, match="'coop-tiny'.*not_weights.pt"):
        cp.load_clip("coop-tiny", str(weights), cp.TINY_MODEL_CONFIG, device="cpu")


# -- the schedule -------------------------------------------------------------------------------------------


def test_coop_schedule_values():
    s = cp.CoOpSchedule(steps=10, warmup_steps=2, warmup_lr=1e-5)
    lrs = [s.lr(0.002, step) for step in range(1, 11)]
    assert lrs[:2] == [1e-5, 1e-5] and lrs[2] == pytest.approx(0.002)
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:], strict=False)) and 0 < lrs[-1] < 0.0002
    assert cp.CoOpSchedule(steps=10, kind="constant").lr(0.002, 5) == 0.002


def test_schedule_drives_run_phases_optimizer_and_survives_a_restart(backbone, config):
    from torch.optim.optimizer import register_optimizer_step_post_hook

    seen: list[float] = []

    def watched(opt, args, kwargs):  # the rate each optimizer step of the phase ran at
        seen.append(opt.param_groups[0]["lr"])

    handle = register_optimizer_step_post_hook(watched)
    try:
        cp.run_clip_phase({**config, "steps": 10, "eval_every": 10, "batch_size": 2, "lr": 0.002})
    finally:
        handle.remove()
    # 6 training images at batch 2: a 3-step epoch of warm-up, capped at a fifth of the 10 steps
    schedule = cp.CoOpSchedule(10, 2, 1e-5)
    assert seen == pytest.approx([schedule.lr(0.002, s) for s in range(1, 11)])

    # A trial restarted from its step-4 checkpoint continues the schedule at step 5 (run_phase's restart path,
    # with the checkpoint a first run wrote).
    from trainables import phase as phase_mod

    checkpoints: list[dict] = []

    def keep(metrics, ckpt):
        if ckpt:
            checkpoints.append(torch.load(os.path.join(ckpt, "phase.pt"), weights_only=False))

    cfg = {**config, "steps": 10, "eval_every": 4, "batch_size": 2, "lr": 0.002, "trial_id": "t-restart"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(phase_mod, "_in_tune", lambda: True)
        mp.setattr(phase_mod, "_restart_state", lambda: None)
        cp.run_clip_phase(cfg, report=keep)
        at_step_4 = next(c for c in checkpoints if c["step"] == 4)
        mp.setattr(phase_mod, "_restart_state", lambda: at_step_4)
        seen.clear()
        handle = register_optimizer_step_post_hook(watched)
        try:
            cp.run_clip_phase(cfg, report=lambda m, c: None)
        finally:
            handle.remove()
    assert seen == pytest.approx([schedule.lr(0.002, s) for s in range(5, 11)])


# -- one phase ----------------------------------------------------------------------------------------------


def test_phase_reports_contract_keys_saves_and_resumes(config, tmp_path):
    reports: list[dict] = []
    cfg = {**config, "vector_dir": str(tmp_path / "vectors"), "trial_id": "t1", "generation": 1, "origin": "llm"}
    best = cp.run_clip_phase(cfg, report=lambda m, c: reports.append(dict(m)))
    assert [r["step"] for r in reports] == [0, 2, 4]
    for r in reports:
        assert {"val_acc", "loss", "prompt_text", "step", "vectors_path"} <= set(r)
        assert 0 <= r["val_acc"] <= 1 and math.isfinite(r["loss"]) and isinstance(r["prompt_text"], str)
    assert reports[0]["prompt_text"] == "a photo of a"
    assert best["vectors_path"] == str(tmp_path / "vectors" / "t1.pt")

    backbone = cp.load_clip("coop-tiny", None, cp.TINY_MODEL_CONFIG, device="cpu")
    model = cp.build_model(cp.clip_config(config), backbone, cp.dataset_for(config["data"]))
    saved = load_vectors(best["vectors_path"], model.identity())
    assert saved["prompt"].shape == (4, 64) and saved["val_acc"] == best["val_acc"]

    elite = torch.randn(4, 64) * 0.05
    path = str(tmp_path / "elite.pt")
    save_vectors(path, elite, {}, model.identity(), text="x")
    resumed: list[dict] = []
    cp.run_clip_phase({**config, "resume_from": path, "prompt_init": "zebra", "steps": 0},
                      report=lambda m, c: resumed.append(dict(m)))
    assert resumed[0]["prompt_text"] == model.project(elite)
    val = cp.evaluate_clip_prompt(config, vectors_path=path, split="val")
    assert val["acc"] == resumed[0]["val_acc"] and val["loss"] == pytest.approx(resumed[0]["loss"], rel=1e-5)
    test = cp.evaluate_clip_prompt(config, text="a photo of a")
    assert test["n"] == 6 and 0 <= test["acc"] <= 1 and test["prompt_text"] == "a photo of a"
    other = cp.build_model(cp.clip_config({**config, "n_ctx": 5}), backbone, cp.dataset_for(config["data"]))
    with pytest.raises(ValueError, match="n_ctx"):
        load_vectors(path, other.identity())


def test_a_clip_phase_screens_with_the_paired_test_and_scores_its_projection(config):
    """The default design (chains-paired) needs per-example results; mentor_scores="text" a projection."""
    reports: list[dict] = []
    cp.run_clip_phase({**config, "prompt_candidates": ["a photo of a", "zebra zebra"], "screen_test": "paired",
                       "project_best": True}, report=lambda m, c: reports.append(dict(m)))
    screens = [r for r in reports if r.get("screen") and not r.get("projection")]
    start = next(r for r in reports if r["step"] == 0 and not r.get("screen"))
    assert len(screens) + str(start["start"]).startswith("candidate") == 2
    projection = reports[-2]
    assert projection["projection"] and reports[-1]["step"] == config["steps"] and not reports[-1].get("screen")
    backbone = cp.load_clip("coop-tiny", None, cp.TINY_MODEL_CONFIG, device="cpu")
    model = cp.build_model(cp.clip_config(config), backbone, cp.dataset_for(config["data"]))
    model.attach_features(cp.prepare_features(config))
    val = model.examples("val")
    loss, acc, right = model.evaluate_each(model.init_vectors("a photo of a"), val)
    assert (loss, acc) == pytest.approx(model.evaluate(model.init_vectors("a photo of a"), val))
    assert len(right) == len(val) and sum(right) == round(acc * len(val))


def test_same_phase_seed_same_phase(config):
    runs = []
    for _ in range(2):
        reports: list[dict] = []
        cp.run_clip_phase(config, report=lambda m, c, out=reports: out.append(m))
        runs.append([(r["step"], r["val_acc"], r["loss"], r["prompt_text"]) for r in reports])
    assert runs[0] == runs[1]


def test_features_from_another_config_are_refused(config):
    features = cp.prepare_features(config)
    with pytest.raises(ValueError, match="another model, data, files or number of views"):
        cp.run_clip_phase({**config, "views": 3}, features)
    with pytest.raises(ValueError, match="another model"):
        cp.run_clip_phase({**config, "init_seed": 5}, features)
    best = cp.run_clip_phase(config, features)  # the right ones are used as they are
    assert 0 <= best["val_acc"] <= 1


# -- the benchmark's CPU smoke mode -------------------------------------------------------------------------


@pytest.mark.slow
def test_benchmark_runs_on_cpu_in_tiny_mode(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "bench_coop_speed.py"), "--device", "cpu", "--tiny",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "steps/s" in proc.stdout and "ratio" in proc.stdout
    import json

    result = json.loads(out.read_text())
    for row in result["speed"]:
        assert row["coop"]["steps_per_s"] > 0 and row["ours"]["steps_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["ours"]["steps_per_s"] / row["coop"]["steps_per_s"], rel=1e-6)
    assert [c["trials"] for c in result["concurrency"]] == [1, 2]
    assert all(c["aggregate_steps_per_s"] > 0 for c in result["concurrency"])
    assert [m["prompts"] for m in result["batched_prompts"]][:2] == [1, 2]


# -- Ray Tune end to end ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tune_run_two_generations_with_llm_search(image_root, tmp_path):
    ray = pytest.importorskip("ray")
    from ray import tune

    from ray_llm_search import LLMSearch
    from ray_llm_search.llm import LLM

    class InstantLLM(LLM):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def propose(self, meta_prompt: str, n: int) -> list[str]:
            self.calls += 1
            return ["\n".join(f"{i + 1}. a close photo of the {w}" for i, w in enumerate(["animal", "pet"][:n]))]

    cache = str(tmp_path / "cache")
    config = _config(image_root, cache, steps=2, eval_every=1)
    config.pop("prompt_init")
    config.pop("phase_seed")
    llm = InstantLLM()
    search = LLMSearch(llm, "Classify a photo of an animal.", ["a photo of a", "a picture of the"],
                       metric="val_acc", mode="max", population=2, generations=2, elites=1,
                       log_dir=str(tmp_path / "exp"))
    # A logical GPU (there is no real one here): the features are built in a one-GPU Ray task and trials ask
    # for a quarter of the card each, the paths a GPU cluster takes; torch still runs on the CPU.
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        trainable = cp.clip_trainable(config)
        shutil.rmtree(cache)  # trials must use the features in the object store, not rebuild a cache
        analysis = tune.run(trainable, config=config, search_alg=search, num_samples=search.total_trials,
                            storage_path=str(tmp_path), name="exp", verbose=0, reuse_actors=True)
    finally:
        ray.shutdown()
    assert len(analysis.trials) == 4
    for trial in analysis.trials:
        assert trial.status == "TERMINATED", trial.error_file
        assert trial.placement_group_factory.required_resources == {"CPU": 1.0, "GPU": 0.25}
        assert {"val_acc", "loss", "prompt_text", "step"} <= set(trial.last_result)
        assert trial.last_result["step"] == 2
    assert not os.path.exists(cache)
    assert [r["generation"] for r in search.records] == [0, 1] and llm.calls == 1
    gen1 = [t for t in search.trajectories if t.generation == 1]
    elites = [t for t in gen1 if t.origin == "elite"]
    assert len(elites) == 1 and os.path.isfile(elites[0].resume_from)
    assert any(t.origin == "llm" and t.prompt_init.startswith("a close photo") for t in gen1)
    best = search.best()
    assert best is not None and os.path.isfile(best["vectors_path"])
