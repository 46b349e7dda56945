"""trainables.peft_prompt: PEFT prompt tuning under the searcher's contract, on MiniLM (sequence
classification with a trained head) and SmolLM2-135M (causal LM scored through verbalizer tokens), offline;
once through real ``tune.run`` with ``LLMSearch``, and the exported adapter loaded back by PEFT itself."""

from __future__ import annotations

import math

import pytest
import torch

peft = pytest.importorskip("peft")

from ray_llm_search import LLMSearch  # noqa: E402
from ray_llm_search.testing import ScriptedLLM  # noqa: E402
from trainables.data import bbc_news_spec  # noqa: E402
from trainables.peft_prompt import PeftPrompt, build_peft_prompt, export_adapter, train_peft_prompt  # noqa: E402
from trainables.phase import run_phase  # noqa: E402
from trainables.text_prompt import dataset_for, resolve_model  # noqa: E402

TEXT = "the topic of this news article is"
CASES = [("seq_cls", None), ("causal_lm", "smollm2")]


def config(task_type: str, model, **kw) -> dict:
    return {"data": bbc_news_spec(shots=2, val_shots=2, test_size=10, seed=0), "steps": 2, "eval_every": 1,
            "batch_size": 4, "max_length": 48, "prompt_length": 4, "prompt_init": TEXT, "task_type": task_type,
            "model": model, "lr": 0.05, **kw}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_text_start_is_peft_own_text_initialisation():
    """SmolLM2's tokenizer adds no special tokens, so PEFT's PromptTuningInit.TEXT gives the same vectors."""
    from transformers import AutoModelForCausalLM

    path = resolve_model("smollm2")
    cfg = peft.PromptTuningConfig(task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=6,
                                  prompt_tuning_init=peft.PromptTuningInit.TEXT, prompt_tuning_init_text=TEXT,
                                  tokenizer_name_or_path=path)
    theirs = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(path), cfg)
    ours = PeftPrompt("smollm2", ["business", "sport"], "causal_lm", prompt_length=6)
    expected = theirs.prompt_encoder["default"].embedding.weight.detach()
    assert torch.equal(ours.init_vectors(TEXT), expected)
    assert ours.project(expected) == "the topic of this news article"


@pytest.mark.parametrize("task_type, model", CASES)
def test_a_phase_trains_the_prompt_and_any_head_and_resumes_exactly(task_type, model, tmp_path):
    cfg = config(task_type, model, vector_dir=str(tmp_path), trial_id="first")
    data = dataset_for(cfg)
    prompt_model = build_peft_prompt(cfg, data)
    head_before = prompt_model.extra_state()
    rows = []
    out = run_phase(cfg, prompt_model, data.train, data.val, report=lambda r, c: rows.append(r))
    assert [r["step"] for r in rows] == [0, 1, 2] and all(math.isfinite(r["loss"]) for r in rows)
    # the gradient reached PEFT's prompt embedding: what the last evaluation used is not the start any more
    assert not torch.allclose(prompt_model._prompt.weight.detach(), prompt_model.init_vectors(TEXT))
    if task_type == "seq_cls":  # the head was trained with the prompt ...
        assert head_before and any(not torch.equal(head_before[k], v) for k, v in prompt_model.extra_state().items())
    else:  # ... and a causal LM trains nothing but the prompt
        assert head_before == {} and prompt_model.extra_parameters() == []
    # a new phase in the same worker starts from the fresh head, not the last phase's
    again = build_peft_prompt(cfg, data)
    assert all(torch.equal(head_before[k], v) for k, v in again.extra_state().items())
    # resuming from the vectors file restores prompt and head: the start scores what the best scored
    resumed = []
    run_phase({**cfg, "trial_id": "second", "resume_from": out["vectors_path"], "steps": 0}, again, data.train,
              data.val, report=lambda r, c: resumed.append(r))
    assert resumed[0]["val_acc"] == out["val_acc"] and resumed[0]["loss"] == pytest.approx(out["loss"], rel=1e-5)


@pytest.mark.parametrize("task_type, model", CASES)
def test_the_exported_adapter_loads_in_peft_and_scores_the_same(task_type, model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cfg = config(task_type, model, vector_dir=str(tmp_path), trial_id="t")
    data = dataset_for(cfg)
    out = run_phase(cfg, build_peft_prompt(cfg, data), data.train, data.val, report=lambda r, c: None)
    folder = export_adapter(cfg, out["vectors_path"], str(tmp_path / "adapter"))
    path = resolve_model(model)
    if task_type == "seq_cls":
        base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(data.label_names))
    else:
        base = AutoModelForCausalLM.from_pretrained(path)
    loaded = peft.PeftModel.from_pretrained(base, folder).eval()
    ours = build_peft_prompt(cfg, data)
    saved = torch.load(out["vectors_path"], weights_only=True)
    ours.load_extra_state(saved["extra"])
    batch = data.val[:4]
    with torch.no_grad():
        mine = ours.logits(saved["prompt"], batch)
        enc = ours.tokenizer([e.text for e in batch], truncation=True, max_length=48 - 4, padding=True,
                             return_tensors="pt")
        theirs = loaded(**enc).logits
        theirs = theirs if task_type == "seq_cls" else theirs[:, -1, ours.verbalizer]
    assert torch.allclose(mine, theirs, atol=1e-4)


def test_class_names_that_share_a_first_token_are_refused():
    with pytest.raises(ValueError, match="must start with distinct tokens"):
        PeftPrompt("smollm2", ["sport news", "sport results"], "causal_lm", prompt_length=4)
    with pytest.raises(ValueError, match="task_type must be one of"):
        PeftPrompt(None, ["a", "b"], "seq2seq")


def Fixed() -> ScriptedLLM:
    return ScriptedLLM(then=["news about the topic of", "what this article reports"], style="completion")


@pytest.mark.slow
@pytest.mark.parametrize("task_type, model", CASES)
def test_real_tune_run_with_llm_search(task_type, model, tmp_path):
    ray = pytest.importorskip("ray")
    from ray import tune

    search = LLMSearch(Fixed(), "Classify BBC news by topic.", [TEXT, "news category:"], metric="val_acc",
                       mode="max", population=2, generations=2, elites=1, log_dir=str(tmp_path / "log"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        base = config(task_type, model)
        base.pop("prompt_init")
        analysis = tune.run(train_peft_prompt, config=base, search_alg=search, num_samples=search.total_trials,
                            resources_per_trial={"cpu": 1}, storage_path=str(tmp_path), name="peft", verbose=0,
                            reuse_actors=True)
    finally:
        ray.shutdown()
    assert [t.status for t in analysis.trials] == ["TERMINATED"] * 4
    assert [r["generation"] for r in search.records] == [0, 1]
    elite = next(t for t in search.trajectories if t.origin == "elite")
    parent = next(t for t in search.trajectories if t.vectors_path == elite.resume_from)
    best = parent.best("max")
    # the elite resumed from its parent's exact vectors (and head): its start scores what the parent's best did
    assert elite.evaluations[0].metric == best.metric
    assert elite.evaluations[0].loss == pytest.approx(best.loss, rel=1e-4)
    assert {t.origin for t in search.trajectories if t.generation == 1} == {"elite", "llm"}
    assert isinstance(search.best()["prompt_text"], str)

