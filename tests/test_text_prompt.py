"""Soft prompts on the real (offline) MiniLM with a tiny data set: logits, one gradient phase, resuming from
saved vectors, determinism and evaluate_prompt."""

from __future__ import annotations

import logging
import math
import re

import pytest
import torch

from trainables.data import Example
from trainables.phase import TIMING_KEYS, load_vectors, run_phase, save_vectors
from trainables.text_prompt import SoftPromptClassifier, build_classifier, dataset_for, evaluate_prompt

WORDS = {
    "sports": ["football", "tennis", "goal", "match", "team", "score"],
    "food": ["pizza", "bread", "soup", "cheese", "apple", "rice"],
    "weather": ["rain", "snow", "sunny", "storm", "cloud", "wind"],
}
PROMPT = "the topic is"
LENGTH = 4  # PROMPT is 3 tokens, so its vectors read "the topic is the"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def data_spec(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("text") / "tiny.csv"
    rows = [f"we talked about the {w} today,{label}" for label, ws in WORDS.items() for w in ws]
    path.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return {"path": str(path), "shots": 2, "val_shots": 2, "seed": 0}


def _config(data_spec: dict, **overrides) -> dict:
    return {"data": data_spec, "prompt_init": PROMPT, "prompt_length": LENGTH, "max_length": 32, "batch_size": 4,
            "steps": 4, "eval_every": 2, "lr": 0.05, "phase_seed": 3, "device": "cpu", **overrides}


def _phase(config: dict, model=None) -> tuple[list[dict], dict, object]:
    data = dataset_for(config)
    model = model or build_classifier(config, data)
    reports: list[dict] = []

    def report(metrics, checkpoint_dir):
        assert checkpoint_dir is None  # outside Tune there is no checkpoint
        reports.append(dict(metrics))

    best = run_phase(config, model, data.train, data.val, report=report)
    return reports, best, model


def _spy_on_evaluate(model) -> list[tuple[torch.Tensor, dict]]:
    """Record the vectors (and head state) each evaluation sees."""
    seen: list[tuple[torch.Tensor, dict]] = []
    original = model.evaluate_each  # what a phase calls (evaluate is its first two results)

    def evaluate_each(vectors, examples, *args, **kwargs):
        seen.append((vectors.detach().cpu().clone(), {k: v.clone() for k, v in model.extra_state().items()}))
        return original(vectors, examples, *args, **kwargs)

    model.evaluate_each = evaluate_each
    return seen


# -- the classifier ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["label_names", "linear"])
def test_logits_shape_and_gradients(data_spec, head):
    config = _config(data_spec, head=head)
    data = dataset_for(config)
    assert data.label_names == ["food", "sports", "weather"]
    model = build_classifier(config, data)
    vectors = model.init_vectors(PROMPT)
    assert vectors.shape == (LENGTH, 384)
    assert model.project(vectors) == "the topic is the"
    vectors.requires_grad_(True)
    logits = model.logits(vectors, data.train[:4])
    assert logits.shape == (4, 3)
    assert torch.isfinite(logits).all()
    model.loss(vectors, data.train[:4]).backward()
    assert vectors.grad is not None and vectors.grad.abs().sum() > 0
    assert len(model.extra_parameters()) == (2 if head == "linear" else 0)
    assert not any(p.requires_grad for p in model.backbone.parameters())  # the backbone stays frozen
    loss, acc = model.evaluate(vectors.detach(), data.val)
    assert math.isfinite(loss) and 0.0 <= acc <= 1.0


def test_label_name_head_is_zero_shot_and_prompt_matters(data_spec):
    config = _config(data_spec)
    data = dataset_for(config)
    model = build_classifier(config, data)
    everything = data.train + data.val + data.test
    _, acc = model.evaluate(model.init_vectors(PROMPT), everything)
    assert acc >= 0.8  # "football" -> sports, "soup" -> food: MiniLM knows this without training
    a = model.logits(model.init_vectors(PROMPT), everything[:3])
    b = model.logits(model.init_vectors("zebra crossing"), everything[:3])
    assert not torch.allclose(a, b)


def test_sentence_pairs(data_spec):
    model = build_classifier(_config(data_spec, head="linear"))
    vectors = model.init_vectors(PROMPT).requires_grad_(True)
    pairs = [Example("a man is playing a guitar", 0, "a person plays music"),
             Example("the cat sleeps", 1, "a dog is barking loudly at the mailman"),
             Example("it is raining", 2, None)]  # a missing second sentence in a mixed batch
    logits = model.logits(vectors, pairs)
    assert logits.shape == (3, 3)
    model.loss(vectors, pairs).backward()
    assert vectors.grad is not None
    singles = [Example(e.text, e.label) for e in pairs]
    assert not torch.allclose(model.logits(vectors, singles)[:2], logits[:2])  # the second sentence is used
    long = [Example("word " * 100, 0, "other " * 100)]
    assert model.logits(vectors, long).shape == (1, 3)  # truncated to max_length with the prompt


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"head": "mlp"}, "'mlp'"),
        ({"prompt_length": 0}, "prompt_length"),
        ({"pooling": "max"}, "'max'"),
        ({"projection": "dot"}, "'dot'"),
        ({"max_length": 6, "prompt_length": 4}, "max_length"),
        ({"label_names": ["only"]}, "2 classes"),
    ],
)
def test_constructor_validates_before_loading(kwargs, match):
    args = {"model": "no/such-model", "label_names": ["a", "b"], **kwargs}
    with pytest.raises(ValueError, match=match):
        SoftPromptClassifier(**args)


# -- one phase ----------------------------------------------------------------------------------------------


def test_run_phase_reports_contract_keys_and_saves_vectors(data_spec, tmp_path):
    config = _config(data_spec, vector_dir=str(tmp_path / "vectors"), trial_id="t1", generation=2, origin="llm")
    reports, best, model = _phase(config)
    assert [r["step"] for r in reports] == [0, 2, 4]
    for r in reports:
        assert {"val_acc", "loss", "prompt_text", "step", "train_loss", "best_val_acc", "generation", "origin",
                "vectors_path"} <= set(r)
        assert 0.0 <= r["val_acc"] <= 1.0 and math.isfinite(r["loss"]) and isinstance(r["prompt_text"], str)
        assert r["generation"] == 2 and r["origin"] == "llm"
        assert r["best_val_acc"] == max(x["val_acc"] for x in reports[: reports.index(r) + 1])
    assert reports[0]["prompt_text"] == "the topic is the"
    assert math.isnan(reports[0]["train_loss"]) and all(math.isfinite(r["train_loss"]) for r in reports[1:])

    path = reports[0]["vectors_path"]
    assert path == str(tmp_path / "vectors" / "t1.pt") == best["vectors_path"]
    saved = load_vectors(path, model.identity())
    assert saved["prompt"].shape == (LENGTH, 384)
    assert saved["step"] == best["step"] and saved["val_acc"] == best["val_acc"]
    assert saved["text"] == best["prompt_text"] and saved["prompt_init"] == PROMPT
    assert best["val_acc"] == max(r["val_acc"] for r in reports)
    # the file holds the best evaluation's vectors: evaluating them on val gives its loss and accuracy back
    val = evaluate_prompt(config, vectors_path=path, split="val")
    assert val["acc"] == best["val_acc"] and val["loss"] == pytest.approx(best["loss"], rel=1e-4, abs=1e-6)
    assert val["prompt_text"] == best["prompt_text"] and val["n"] == 6


def test_run_phase_without_vector_dir_saves_nothing(data_spec):
    reports, best, _ = _phase(_config(data_spec, steps=2))
    assert [r["step"] for r in reports] == [0, 2]
    assert "vectors_path" not in reports[0] and best["vectors_path"] is None


@pytest.mark.parametrize("head", ["label_names", "linear"])
def test_resume_starts_at_exactly_the_saved_vectors(data_spec, tmp_path, head):
    config = _config(data_spec, head=head, steps=2)
    model = build_classifier(config)
    gen = torch.Generator().manual_seed(5)
    vectors = torch.randn(LENGTH, 384, generator=gen) * 0.05  # nowhere near any text's embedding
    extra = {k: torch.randn(v.shape, generator=gen) for k, v in model.extra_state().items()}
    path = str(tmp_path / "elite.pt")
    save_vectors(path, vectors, extra, model.identity(), text="whatever")

    seen = _spy_on_evaluate(model)
    reports, _, _ = _phase({**config, "prompt_init": "zebra crossing", "resume_from": path}, model)
    first_vectors, first_extra = seen[0]
    assert torch.equal(first_vectors, vectors)
    assert first_extra.keys() == extra.keys() and all(torch.equal(first_extra[k], extra[k]) for k in extra)
    assert reports[0]["prompt_text"] == model.project(vectors)
    assert not torch.equal(seen[-1][0], vectors)  # and then it trains


def test_resume_from_a_phase_file_continues_its_prompt(data_spec, tmp_path):
    first = _config(data_spec, vector_dir=str(tmp_path), trial_id="a", lr=0.5)
    reports, best, model = _phase(first)
    saved = load_vectors(best["vectors_path"], model.identity())
    seen = _spy_on_evaluate(model)
    again, _, _ = _phase(_config(data_spec, steps=0, resume_from=best["vectors_path"], prompt_init="zebra"), model)
    assert torch.equal(seen[0][0], saved["prompt"])
    assert again[0]["prompt_text"] == best["prompt_text"]
    assert again[0]["val_acc"] == best["val_acc"]


def test_vectors_for_another_prompt_length_are_refused(data_spec, tmp_path):
    config = _config(data_spec, vector_dir=str(tmp_path), trial_id="four", steps=0)
    _, best, _ = _phase(config)
    path = best["vectors_path"]
    other = build_classifier(_config(data_spec, prompt_length=LENGTH + 1))
    with pytest.raises(ValueError, match=re.escape(path)) as info:
        load_vectors(path, other.identity())
    assert "prompt_length" in str(info.value)
    with pytest.raises(ValueError, match=re.escape(path)):
        evaluate_prompt(_config(data_spec, prompt_length=LENGTH + 1), vectors_path=path)
    linear = build_classifier(_config(data_spec, head="linear"))
    with pytest.raises(ValueError, match="head"):
        load_vectors(path, linear.identity())


def test_unreadable_vectors_files_are_refused(tmp_path):
    missing = str(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=re.escape(missing)):
        load_vectors(missing, {})
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="garbage.pt"):
        load_vectors(str(garbage), {})
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="foreign.pt"):
        load_vectors(str(foreign), {})


@pytest.mark.parametrize("bad", ["missing", "mismatch"])
def test_unusable_resume_from_falls_back_to_the_text(data_spec, tmp_path, caplog, bad):
    config = _config(data_spec, steps=0)
    if bad == "missing":
        path = str(tmp_path / "gone" / "elite.pt")
    else:
        _, best, _ = _phase({**config, "prompt_length": LENGTH + 2, "vector_dir": str(tmp_path), "trial_id": "six"})
        path = best["vectors_path"]
    with caplog.at_level(logging.ERROR, logger="trainables.phase"):
        reports, _, _ = _phase({**config, "resume_from": path, "prompt_init": "weather report"})
    assert reports[0]["prompt_text"] == "weather report weather report"
    assert any(path in r.getMessage() and r.levelno >= logging.ERROR for r in caplog.records)


@pytest.mark.parametrize("head", ["label_names", "linear"])
def test_same_phase_seed_same_metrics(data_spec, head):
    config = _config(data_spec, head=head)
    first, _, _ = _phase(config)
    torch.randn(7)  # whatever else ran in this worker must not matter
    second, _, _ = _phase(config)
    first, second = ([{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rs] for rs in (first, second))
    assert len(first) == 3
    assert first == second or _nan_equal(first, second)
    other, _, _ = _phase({**config, "phase_seed": 4})
    assert [r["train_loss"] for r in other[1:]] != [r["train_loss"] for r in first[1:]]


def _nan_equal(a: list[dict], b: list[dict]) -> bool:
    """Equal reports, counting the NaN train_loss at step 0 as equal."""
    def key(r):
        return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}

    return [key(r) for r in a] == [key(r) for r in b]


def test_run_phase_validates_its_arguments(data_spec):
    config = _config(data_spec)
    data = dataset_for(config)
    model = build_classifier(config, data)
    with pytest.raises(ValueError, match="eval_every"):
        run_phase({**config, "eval_every": 0}, model, data.train, data.val)
    with pytest.raises(ValueError, match="validation"):
        run_phase(config, model, data.train, [])
    with pytest.raises(ValueError, match="'rmsprop'"):
        run_phase({**config, "optimizer": "rmsprop"}, model, data.train, data.val)


# -- evaluate_prompt ----------------------------------------------------------------------------------------


def test_evaluate_prompt_on_text(data_spec):
    config = _config(data_spec)
    data = dataset_for(config)
    result = evaluate_prompt(config, text=PROMPT)
    assert result["n"] == len(data.test) == 6 and 0.0 <= result["acc"] <= 1.0 and math.isfinite(result["loss"])
    assert result["prompt_text"] == "the topic is the"
    model = build_classifier(config, data)
    loss, acc = model.evaluate(model.init_vectors(PROMPT), data.val)
    val = evaluate_prompt(config, text=PROMPT, split="val")
    assert (val["loss"], val["acc"], val["n"]) == (pytest.approx(loss), acc, 6)
    with pytest.raises(ValueError, match="text or vectors_path"):
        evaluate_prompt(config)


def test_evaluate_prompt_on_vectors_with_a_linear_head(data_spec, tmp_path):
    config = _config(data_spec, head="linear", lr=0.3, steps=4, vector_dir=str(tmp_path), trial_id="lin")
    _, best, model = _phase(config)
    saved = load_vectors(best["vectors_path"], model.identity())
    assert set(saved["extra"]) == {"weight", "bias"}
    val = evaluate_prompt(config, vectors_path=best["vectors_path"], split="val")
    assert val["acc"] == best["val_acc"] and val["loss"] == pytest.approx(best["loss"], rel=1e-4, abs=1e-6)
    test = evaluate_prompt(config, vectors_path=best["vectors_path"])
    assert test["n"] == 6 and test["prompt_text"] == best["prompt_text"]


def test_time_units_counts_the_steps_and_evaluations_it_times_and_leaves_the_threads(data_spec, monkeypatch):
    """The in-process cost of a step and of an evaluation that the quickstart's ideal is made of: it times exactly
    ``steps`` steps and ``evaluations`` evaluations (after one warm-up of each), with the threads asked for."""
    import time as _time

    from trainables import phase as phase_module
    from trainables.phase import time_units

    config = _config(data_spec, resume_from="/nowhere.pt", prompt_candidates=["a candidate"])
    data = dataset_for(config)
    model = build_classifier(config, data)
    calls = {"loss": 0, "evaluate": 0, "threads": []}
    loss, each = model.loss, model.evaluate_each

    def slow_loss(*args, **kwargs):
        calls["loss"] += 1
        calls["threads"].append(torch.get_num_threads())
        _time.sleep(0.02)
        return loss(*args, **kwargs)

    def slow_each(*args, **kwargs):
        calls["evaluate"] += 1
        _time.sleep(0.05)
        return each(*args, **kwargs)

    monkeypatch.setattr(model, "loss", slow_loss)
    monkeypatch.setattr(model, "evaluate_each", slow_each)
    threads = torch.get_num_threads()
    units = time_units(config, model, data.train, data.val, threads=threads + 1, steps=5, evaluations=3)
    assert torch.get_num_threads() == threads  # restored
    assert calls["threads"] and set(calls["threads"]) == {threads + 1}
    assert calls["loss"] == 1 + 5  # the warm-up step, then the timed ones; no screening, no resumed file
    assert calls["evaluate"] == 1 + 3  # the start's evaluation, then the timed ones
    assert 0.02 <= units["step_s"] < 1.0 and 0.05 <= units["eval_s"] < 1.0
    with pytest.raises(ValueError, match="steps and evaluations must be >= 1"):
        phase_module.time_units(config, model, data.train, data.val, steps=0)


def test_a_phase_reports_the_seconds_of_its_own_steps_and_evaluations(data_spec, monkeypatch):
    """``compute_s``: every step and every evaluation (screened candidates too) timed where it runs, and
    nothing else (the setup, the reports, the saves)."""
    import time as _time

    config = _config(data_spec, steps=3, eval_every=3, prompt_candidates=["a candidate", "another one"])
    data = dataset_for(config)
    model = build_classifier(config, data)
    loss, each = model.loss, model.evaluate_each
    monkeypatch.setattr(model, "loss", lambda *a, **k: (_time.sleep(0.1), loss(*a, **k))[1])
    monkeypatch.setattr(model, "evaluate_each", lambda *a, **k: (_time.sleep(0.2), each(*a, **k))[1])
    reports = []

    def slow_report(metrics, checkpoint):
        reports.append(metrics)
        _time.sleep(0.3)

    run_phase(config, model, data.train, data.val, report=slow_report)
    last = reports[-1]
    # 3 steps of 0.1 s and 4 evaluations of 0.2 s (the start, 2 candidates, the end); not the 0.3 s reports
    assert last["evaluations"] == 4
    # the elapsed time holds every report's sleep but the last one's (it comes after its own result)
    assert 1.1 <= last["compute_s"] <= last["elapsed_s"] - 0.3 * (len(reports) - 1)
    assert [r["compute_s"] for r in reports] == sorted(r["compute_s"] for r in reports)


def test_the_default_backbone_loads_through_transformers_frozen_and_once_per_process(monkeypatch):
    """The offline MiniLM loads with transformers' AutoModel and its fast tokenizer (no copy of either), frozen,
    not causal, cached per process, leaving the caller's random state; its tokenizer's special tokens are there
    for the prompt's insertion."""
    from transformers import BertModel, PreTrainedTokenizerBase

    from trainables import text_prompt
    from trainables.text_prompt import load_backbone

    monkeypatch.setattr(text_prompt, "_BACKBONES", {})  # loaded here, not by an earlier test
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    tokenizer, model, is_causal = load_backbone(None, torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected)
    assert isinstance(model, BertModel) and not is_causal
    assert isinstance(tokenizer, PreTrainedTokenizerBase) and tokenizer.is_fast
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    assert tokenizer.cls_token_id is not None and tokenizer.pad_token_id is not None
    assert load_backbone(None, torch.device("cpu"))[1] is model


def test_a_phase_steps_with_torch_optim(data_spec):
    """The phases' optimizers are torch.optim's (AdamW by default, SGD with momentum 0.9 by name): a step hook
    registered on torch.optim sees every one of the phase's steps."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from trainables.phase import make_optimizer

    seen: list[str] = []
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: seen.append(type(opt).__name__))
    try:
        config = _config(data_spec, steps=3, eval_every=3)
        data = dataset_for(config)
        run_phase(config, build_classifier(config, data), data.train, data.val)
    finally:
        handle.remove()
    assert seen == ["AdamW"] * 3
    sgd = make_optimizer("sgd", [torch.nn.Parameter(torch.zeros(2))], 0.1, 0.0)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9


# -- restarts from a Tune checkpoint: the trial's own (a fault) or another's (a PBT exploit) ---------------------


def _checkpoints_of(config: dict, monkeypatch, restored=None) -> tuple[list[dict], list[dict], object]:
    """Run a phase as inside Tune (``restored``: the checkpoint ``tune.get_checkpoint()`` would give it); its
    reports and the checkpoints it wrote, as Tune would store them."""
    import os

    from trainables import phase as phase_mod

    monkeypatch.setattr(phase_mod, "_in_tune", lambda: True)
    monkeypatch.setattr(phase_mod, "_restart_state", lambda: restored)
    monkeypatch.setattr(phase_mod, "_tune_storage_folder", lambda: None)  # Tune's storage: the local disk
    reports, checkpoints = [], []

    def report(metrics, checkpoint_dir):
        reports.append(dict(metrics))
        if checkpoint_dir:
            checkpoints.append(torch.load(os.path.join(checkpoint_dir, "phase.pt"), weights_only=False))

    data = dataset_for(config)
    model = build_classifier(config, data)
    run_phase(config, model, data.train, data.val, report=report)
    return reports, checkpoints, model


def test_an_exploit_takes_the_donors_vectors_evaluates_them_and_uses_its_own_learning_rate(data_spec, tmp_path,
                                                                                       monkeypatch):
    from torch.optim.optimizer import register_optimizer_step_post_hook

    donor_cfg = _config(data_spec, steps=4, eval_every=2, trial_id="donor", vector_dir=str(tmp_path / "v"),
                        keep_all_vectors=True)
    donor_reports, donor_checkpoints, _ = _checkpoints_of(donor_cfg, monkeypatch)
    at_2 = next(c for c in donor_checkpoints if c["step"] == 2)
    assert at_2["trial_id"] == "donor"
    # the exploited trial: its own id, the donor's config with the rate PBT explored, the donor's checkpoint
    seen_lr: list[float] = []
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: seen_lr.append(opt.param_groups[0]["lr"]))
    try:
        reports, _, _ = _checkpoints_of({**donor_cfg, "trial_id": "taker", "lr": 0.06}, monkeypatch, restored=at_2)
    finally:
        handle.remove()
    first = reports[0]
    assert first["start"] == "exploit" and first["exploited_from"] == "donor" and first["step"] == 2
    donor_at_2 = next(r for r in donor_reports if r["step"] == 2)
    assert (first["val_acc"], first["loss"]) == (donor_at_2["val_acc"], donor_at_2["loss"])  # the donor's vectors
    assert first["evaluations"] == donor_at_2["evaluations"] + 1
    assert [r["step"] for r in reports] == [2, 4] and seen_lr == [0.06, 0.06]  # steps 3 and 4, at its own rate
    # the start's vectors, kept beside (not over) the taker's own step-2 file
    assert first["step_vectors_path"].endswith("taker.step2.exploit.pt") and first["vectors_path"].endswith("taker.pt")
    saved = load_vectors(first["step_vectors_path"], build_classifier(donor_cfg).identity())
    assert torch.equal(saved["prompt"], at_2["prompt"])
    # its own checkpoint: a restart continues silently (no evaluation), at the rate of its config
    own = {**at_2, "trial_id": "taker"}
    again, _, _ = _checkpoints_of({**donor_cfg, "trial_id": "taker", "lr": 0.06}, monkeypatch, restored=own)
    assert [r["step"] for r in again] == [4] and "start" not in again[0]
