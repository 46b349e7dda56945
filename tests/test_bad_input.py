"""Bad input: one test per row of the bad-input table in ``docs/failures.md`` ("Bad input: what each mistake raises").

Each row goes through a public entry point (``LLMSearch(...)``, ``OpenAIChat(...)``, ``LocalLLM(...)``,
``train_text_prompt(config)`` outside Tune, ``tune.run``) and asserts the exception type and a fragment of
its message. Rows that need Tune start one Ray instance for the module, only when they run.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from ray_llm_search import LLMSearch, LocalLLM, OpenAIChat
from ray_llm_search.llm import LLM

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))
import rls_helpers as helpers  # noqa: E402


class QuietLLM(LLM):
    def propose(self, meta_prompt: str, n: int) -> list[str]:
        return [f"{i + 1}. idea {i}" for i in range(n)]


def search(**kwargs) -> LLMSearch:
    args = dict(llm=QuietLLM(), task_description="Classify news.", seed_prompts=["the topic is"], metric="val_acc",
                mode="max", population=4, generations=2, elites=1, log_dir="/tmp/rls-bad-input-never-written")
    args.update(kwargs)
    return LLMSearch(**args)


# -- LLMSearch(...) ---------------------------------------------------------------------------------------------

SEARCH_ROWS = [
    ("population 0", {"population": 0}, "population must be an integer >= 1, got 0"),
    ("population not an integer", {"population": 2.5}, "population must be an integer >= 1, got 2.5"),
    ("elites > population", {"population": 4, "elites": 5},
     "elites must be an integer in [0, population] = [0, 4], got 5"),
    ("unknown schedule key", {"schedule": [{"stpes": 1}]},
     "schedule[0] must be a dict with keys among ['elites', 'eval_every', 'population', 'screen', 'steps'], got "
     "{'stpes': 1}"),
    ("schedule entry with more elites than its population", {"schedule": [{}, {"population": 2, "elites": 3}]},
     "schedule[1]: elites (3) must be at most its population (2)"),
    ("prompt_tokens 0", {"prompt_tokens": 0}, "prompt_tokens must be None or an integer >= 1, got 0"),
    ("schedule and generations disagree", {"generations": 2, "schedule": [{}, {}, {}]},
     "generations=2 but schedule has 3 entries (one per generation); pass one of them"),
    ("unknown proposals", {"proposals": "random"}, "proposals must be one of ('llm', 'perturb'), got 'random'"),
    ("negative screen margin", {"screen_margin": -1}, "screen_margin must be a number of validation examples >= 0"),
    ("elites < 0", {"elites": -1}, "got -1"),
    ("generations 0", {"generations": 0}, "generations must be an integer >= 1, got 0"),
    ("mode not min or max", {"mode": "maximize"}, "mode must be 'max' or 'min', got 'maximize'"),
    ("empty metric", {"metric": ""}, "metric must be a non-empty string, got ''"),
    ("no seed prompts", {"seed_prompts": []}, "seed_prompts must hold at least one non-empty prompt"),
    ("only blank seed prompts", {"seed_prompts": ["", "  "]}, "seed_prompts must hold at least one non-empty prompt"),
    ("seed prompts as one string", {"seed_prompts": "the topic is"},
     "seed_prompts must be a list of prompts, not one string"),
    ("top_k 0", {"top_k": 0}, "top_k must be an integer >= 1, got 0"),
    ("candidates_per_round 0", {"candidates_per_round": 0}, "candidates_per_round must be an integer >= 1, got 0"),
    ("max_prompt_words 0", {"max_prompt_words": 0}, "max_prompt_words must be an integer >= 1, got 0"),
    ("llm_timeout_s 0", {"llm_timeout_s": 0}, "llm_timeout_s must be a number of seconds > 0, got 0"),
    ("llm_reasks < 0", {"llm_reasks": -1}, "llm_reasks must be an integer >= 0, got -1"),
    ("unknown meta_prompt_style", {"meta_prompt_style": "json"},
     "meta_prompt_style must be 'chat' or 'completion', got 'json'"),
    ("overlap not a bool", {"overlap": "yes"}, "overlap must be True or False, got 'yes'"),
    ("overlap with a schedule entry that starts new chains",
     {"overlap": True, "population": 2, "elites": 2, "schedule": [{}, {"population": 3, "elites": 1}]},
     "overlap=True needs elites == population in every generation, and schedule[1] has population 3 and elites 1"),
    ("overlap with new starts", {"overlap": True},
     "overlap=True needs elites == population (every phase continues a chain; a new start waits for its round's "
     "text anyway), got elites=1, population=4"),
    ("llm without propose", {"llm": "gpt-4o-mini"}, "llm must have propose(meta_prompt, n)"),
    ("log_dir as a URI", {"log_dir": "s3://bucket/prefix"}, "log_dir must be a local filesystem path"),
]


@pytest.mark.parametrize("kwargs, fragment", [row[1:] for row in SEARCH_ROWS], ids=[row[0] for row in SEARCH_ROWS])
def test_llm_search_rejects(kwargs, fragment):
    with pytest.raises(ValueError) as info:
        search(**kwargs)
    assert fragment in str(info.value)


# -- LLM clients ------------------------------------------------------------------------------------------------

LLM_ROWS = [
    ("malformed base_url (no scheme)", lambda: OpenAIChat("m", base_url="localhost:8000/v1", api_key_env=None),
     "base_url must look like 'http://host:port/v1' or 'https://...', got 'localhost:8000/v1'"),
    ("malformed base_url (no host)", lambda: OpenAIChat("m", base_url="http://", api_key_env=None),
     "base_url must look like"),
    ("missing API-key variable", lambda: OpenAIChat("m", api_key_env="RLS_NO_SUCH_KEY_VARIABLE"),
     "environment variable 'RLS_NO_SUCH_KEY_VARIABLE' (api_key_env) is not set"),
    ("empty model name", lambda: OpenAIChat("", api_key_env=None), "model must be a non-empty string"),
    ("temperature out of range", lambda: OpenAIChat("m", api_key_env=None, temperature=3.0),
     "temperature must be in [0, 2], got 3.0"),
    ("timeout_s 0", lambda: OpenAIChat("m", api_key_env=None, timeout_s=0), "timeout_s > 0"),
    ("retries < 0", lambda: OpenAIChat("m", api_key_env=None, retries=-1), "retries >= 0"),
    ("LocalLLM: missing GGUF file", lambda: LocalLLM("/nonexistent/model.gguf"),
     "GGUF file not found: '/nonexistent/model.gguf'"),
    ("LocalLLM: unknown style", lambda: LocalLLM("x.gguf", style="json"), "style must be 'chat' or 'completion'"),
    ("LocalLLM: temperature 0", lambda: LocalLLM("x.gguf", temperature=0.0), "temperature must be in (0, 2], got 0.0"),
    ("LocalLLM: unknown dtype", lambda: LocalLLM("x.gguf", dtype="float16"),
     "dtype must be one of auto, float32, bfloat16, got 'float16'"),
]


@pytest.mark.parametrize("make, fragment", [row[1:] for row in LLM_ROWS], ids=[row[0] for row in LLM_ROWS])
def test_llm_clients_reject(make, fragment, monkeypatch):
    monkeypatch.delenv("RLS_NO_SUCH_KEY_VARIABLE", raising=False)
    with pytest.raises(ValueError) as info:
        make()
    assert fragment in str(info.value)


# -- data and model config, through the trainable ---------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_data")

    def folder(name: str, classes: dict[str, int]) -> None:
        for cls, count in classes.items():
            os.makedirs(root / name / cls, exist_ok=True)
            for i in range(count):
                (root / name / cls / f"{i}.txt").write_text(f"an article about {cls}, number {i}")

    folder("good", {"business": 6, "sport": 6})
    folder("one_class", {"business": 6})
    folder("small_class", {"business": 6, "sport": 3})
    folder("empty_class", {"business": 6, "sport": 0})
    os.makedirs(root / "no_classes")
    (root / "no_label.csv").write_text("text,topic\nfirst,business\nsecond,sport\n")
    return root


def good_data(root) -> dict:
    return {"path": str(root / "good"), "format": "folder", "shots": 2, "val_shots": 2, "seed": 0}


# (row, config changes given the data folder, fragment); every config starts from a tiny valid one.
TRAINABLE_ROWS = [
    # data: raised by load_dataset before any model is loaded
    ("dataset with one class", lambda r: {"data": {**good_data(r), "path": str(r / "one_class")}},
     "a classifier needs at least 2 classes; the data has 1: ['business']"),
    ("k larger than a class", lambda r: {"data": {**good_data(r), "path": str(r / "small_class"), "shots": 4}},
     "train: class 1 has 3 examples, fewer than the 4 asked per class (set cap_shots: true to take what there is)"),
    ("validation k larger than what is left", lambda r: {"data": {**good_data(r), "shots": 4, "val_shots": 3}},
     "validation: class 0 has 2 examples, fewer than the 3 asked per class"),
    ("missing data path", lambda r: {"data": {**good_data(r), "path": str(r / "nowhere")}}, "data path does not exist"),
    ("empty class folder", lambda r: {"data": {**good_data(r), "path": str(r / "empty_class")}},
     "/sport' is empty"),
    ("folder without class folders", lambda r: {"data": {**good_data(r), "path": str(r / "no_classes")}},
     "has no class sub-folders"),
    ("no data in the config", lambda r: {"data": None}, "config['data'] is required"),
    ("shots 0", lambda r: {"data": {**good_data(r), "shots": 0}}, "shots and val_shots must be integers >= 1, got 0"),
    ("unknown data format", lambda r: {"data": {**good_data(r), "format": "parquet"}}, "data format must be one of"),
    ("no label column", lambda r: {"data": {"path": str(r / "no_label.csv"), "shots": 1, "val_shots": 1}},
     "no column 'label'; columns are"),
    ("label_names missing a label", lambda r: {"data": {**good_data(r), "label_names": {"business": "business"}}},
     "are not in label_names"),
    # model: raised by SoftPromptClassifier before the backbone is loaded, or by the loader
    ("prompt length 0", lambda r: {"prompt_length": 0}, "prompt_length must be >= 1, got 0"),
    ("unknown head", lambda r: {"head": "mlp"}, "head must be 'label_names' or 'linear', got 'mlp'"),
    ("unknown pooling", lambda r: {"pooling": "max"}, "pooling must be 'mean', 'cls' or 'last', got 'max'"),
    ("unknown projection", lambda r: {"projection": "dot"}, "projection must be 'cosine' or 'l2', got 'dot'"),
    ("max_length too short for the prompt", lambda r: {"prompt_length": 8, "max_length": 10},
     "max_length (10) must exceed prompt_length + 2 (10)"),
    ("unknown model (a missing folder)", lambda r: {"model": str(r / "no-such-model")}, "cannot load model"),
    ("missing GGUF model file", lambda r: {"model": str(r / "missing.gguf")}, "GGUF file not found"),
    # phase: raised by run_phase (after the model is loaded, see docs/failures.md)
    ("steps < 0", lambda r: {"steps": -1}, "need steps >= 0, eval_every >= 1, batch_size >= 1; got -1, 1, 2"),
    ("eval_every 0", lambda r: {"eval_every": 0}, "got 1, 0, 2"),
    ("batch_size 0", lambda r: {"batch_size": 0}, "got 1, 1, 0"),
    ("learning rate 0", lambda r: {"lr": 0}, "need lr > 0 and weight_decay >= 0; got 0, 0.0"),
    ("unknown optimizer", lambda r: {"optimizer": "adam"}, "optimizer must be 'adamw' or 'sgd', got 'adam'"),
]


@pytest.mark.parametrize("change, fragment", [row[1:] for row in TRAINABLE_ROWS], ids=[row[0] for row in TRAINABLE_ROWS])
def test_train_text_prompt_rejects(change, fragment, data_dir):
    from trainables.text_prompt import train_text_prompt

    config = {"data": good_data(data_dir), "steps": 1, "eval_every": 1, "batch_size": 2, "max_length": 32,
              "prompt_length": 2, "prompt_init": "the topic is", "device": "cpu"}
    config.update(change(data_dir))
    if config["data"] is None:
        del config["data"]
    with pytest.raises(ValueError) as info:
        train_text_prompt(config)
    assert fragment in str(info.value)


def test_the_tiny_valid_config_the_rows_start_from_runs(data_dir):
    from trainables.text_prompt import train_text_prompt

    train_text_prompt({"data": good_data(data_dir), "steps": 1, "eval_every": 1, "batch_size": 2, "max_length": 32,
                       "prompt_length": 2, "prompt_init": "the topic is", "device": "cpu"})


# -- through Tune -----------------------------------------------------------------------------------------------


ray_session = pytest.fixture(scope="module", name="ray_session")(helpers.ray_session)


def _tune_run(tmp_path, name: str, metric=None, mode=None, search_kwargs=None, num_samples=None):
    from ray import tune

    s = search(**{"population": 2, "log_dir": str(tmp_path / "log"), **(search_kwargs or {})})
    return tune.run(helpers.trivial_phase, config={"steps": 1}, search_alg=s, num_samples=num_samples or s.total_trials,
                    metric=metric, mode=mode, storage_path=str(tmp_path), name=name, reuse_actors=True, verbose=0)


@pytest.mark.slow
def test_unknown_metric_fails_the_run_clearly(ray_session, tmp_path):
    from ray.tune.error import TuneError

    with pytest.raises(TuneError) as info:
        _tune_run(tmp_path, "unknown_metric", search_kwargs={"metric": "accuracy"})
    assert "did not include the specified metric(s) `accuracy`" in str(info.value)


TUNE_ROWS = [
    ("no metric anywhere", {"metric": None, "mode": None}, None, None, None,
     "LLMSearch needs metric and mode: pass them to LLMSearch(...) or to tune.run/TuneConfig"),
    ("metric given twice, differently", {}, "loss", "min", None,
     "LLMSearch was made with metric='val_acc', mode='max', but Tune was given metric='loss', mode='min'"),
    ("tune.run mode not min or max", {"metric": None, "mode": None}, "val_acc", "maximize", None,
     "must be one of ['min', 'max']"),
    ("num_samples below total_trials", {}, None, None, 3,
     "num_samples=3 is fewer than the 4 trials this search makes"),
]


@pytest.mark.slow
@pytest.mark.parametrize("kwargs, metric, mode, num_samples, fragment", [row[1:] for row in TUNE_ROWS],
                         ids=[row[0] for row in TUNE_ROWS])
def test_tune_run_rejects(ray_session, tmp_path, kwargs, metric, mode, num_samples, fragment):
    with pytest.raises(ValueError) as info:
        _tune_run(tmp_path, "bad", metric=metric, mode=mode, search_kwargs=kwargs, num_samples=num_samples)
    assert fragment in str(info.value)


@pytest.mark.slow
def test_a_config_every_phase_rejects_stops_the_search_after_generation_0(ray_session, tmp_path):
    from ray import tune

    s = search(population=2, generations=3, log_dir=str(tmp_path / "log"))
    config = {"data": {"path": str(tmp_path / "nowhere"), "format": "folder"}}
    analysis = tune.run(helpers.load_data_phase, config=config, search_alg=s, num_samples=s.total_trials,
                        storage_path=str(tmp_path), name="bad_data", raise_on_failed_trial=False, verbose=0)
    assert [t.status for t in analysis.trials] == ["ERROR", "ERROR"]  # 2 phases, not 3 generations of 2
    for trial in analysis.trials:
        with open(os.path.join(trial.path, "error.txt")) as f:
            assert "data path does not exist" in f.read()
    with open(tmp_path / "log" / "generations.jsonl") as f:
        (record,) = [json.loads(line) for line in f.read().splitlines()]
    assert record["stopped"] == "every phase of generation 0 failed before reporting"
    assert record["errored"] == 2
    assert not (tmp_path / "log" / "llm_rounds.jsonl").exists()  # the LLM was not asked over nothing
