"""``python -m ray_llm_search.compare`` on a user's own data: a task file or flags, checked before anything
runs, the run end to end on a tiny CSV through the real command line."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ray_llm_search import compare

ROOT = Path(__file__).parents[1]

ROWS = {
    "sport": ["the striker scored twice in the final", "the team won the league title", "a late goal decided the match",
              "the coach praised his defenders", "the tennis star reached the semi final", "fans cheered the winning run"],
    "food": ["simmer the sauce for ten minutes", "this bakery sells fresh bread daily", "add salt and pepper to taste",
             "the soup needs more garlic", "a new restaurant opened downtown", "whisk the eggs with sugar"],
    "weather": ["heavy rain is expected tomorrow", "the storm brought strong winds", "a sunny and warm afternoon",
                "snow will fall in the hills tonight", "temperatures drop below freezing", "fog covered the valley"],
}


def write_csv(path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "topic"])
        for topic, texts in ROWS.items():
            for text in texts:
                w.writerow([text, topic])


def write_task(folder: Path, **override) -> Path:
    write_csv(folder / "topics.csv")
    task = {"name": "topics", "task": "Classify a sentence by its topic: sport, food or weather.",
            "seed_prompts": ["the topic of this sentence is", "topic:"],
            "data": {"path": "topics.csv", "text_column": "sentence", "label_column": "topic"}, "max_length": 32}
    task.update(override)
    path = folder / "task.json"
    path.write_text(json.dumps({k: v for k, v in task.items() if v is not None}))
    return path


def test_task_file_paths_are_taken_from_its_folder_and_the_task_is_run_instead_of_a_preset(tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    path = write_task(folder)
    monkeypatch.chdir(tmp_path)  # not the task file's folder
    args = compare.parse_args(["--task-file", str(path)])
    assert args.datasets == ["topics"]
    task = args.user_tasks["topics"]
    assert task["data"]["path"] == str(folder / "topics.csv")
    assert compare.task_of(args, "topics") == (task["task"], ["the topic of this sentence is", "topic:"])
    assert compare.setting(args, "topics", "max_length") == 32  # the task file's
    assert compare.setting(compare.parse_args(["--task-file", str(path), "--max-length", "48"]), "topics",
                           "max_length") == 48  # a flag wins
    config = compare.base_config(args, "topics", seed=3)
    assert config["data"]["seed"] == 3 and config["data"]["shots"] == args.shots and config["max_length"] == 32
    both = compare.parse_args(["--task-file", str(path), "--datasets", "trec"])
    assert both.datasets == ["trec", "topics"]


def test_data_flags_describe_the_same_task_as_a_file(tmp_path, monkeypatch):
    write_csv(tmp_path / "topics.csv")
    monkeypatch.chdir(tmp_path)
    args = compare.parse_args(["--data", "topics.csv", "--text-column", "sentence", "--label-column", "topic",
                               "--task-description", "Classify a sentence by its topic.", "--seed-prompts", "topic:"])
    task = args.user_tasks["topics"]
    assert task["data"] == {"path": str(tmp_path / "topics.csv"), "text_column": "sentence", "label_column": "topic"}
    assert task["seed_prompts"] == ["topic:"] and args.datasets == ["topics"]


@pytest.mark.parametrize("override, says", [
    ({"seed_prompts": []}, "'seed_prompts' must be a list of one or more"),
    ({"seed_prompts": "topic:"}, "'seed_prompts' must be a list"),
    ({"task": " "}, "'task' must describe the task"),
    ({"name": "sst2"}, "is a preset's"),
    ({"name": "my topics"}, "'name' must be a short name"),
    ({"data": {"path": "missing.csv"}}, "data file 'missing.csv' not found"),
    ({"data": {"text_column": "sentence"}}, "'data' must be a data spec with 'path'"),
    ({"max_length": 0}, "'max_length' must be a positive integer"),
    ({"shots": 4}, "unknown keys ['shots']"),
])
def test_a_bad_task_file_stops_before_anything_runs_naming_the_problem(tmp_path, capsys, override, says):
    path = write_task(tmp_path, **override)
    with pytest.raises(SystemExit):
        compare.parse_args(["--task-file", str(path)])
    assert says in capsys.readouterr().err


def test_bad_task_flags_and_files_are_clear_errors(tmp_path, capsys):
    for argv, says in [
        (["--task-file", str(tmp_path / "nope.json")], "task file not found"),
        (["--data", "x.csv", "--seed-prompts", "a"], "--data needs --task-description and --seed-prompts"),
        (["--seed-prompts", "a"], "describe a task given with --data"),
    ]:
        with pytest.raises(SystemExit):
            compare.parse_args(argv)
        assert says in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{name: topics")
    with pytest.raises(SystemExit):
        compare.parse_args(["--task-file", str(tmp_path / "broken.json")])
    assert "not valid JSON" in capsys.readouterr().err


def test_a_data_error_of_the_users_ends_the_command_with_one_line(tmp_path, capsys):
    """A class with fewer examples than --shots asks (trainables.shots.few_shot's ValueError) is found before
    anything runs and said in one line, exit status 2, like a bad task file: no traceback, no Ray cluster."""
    path = write_task(tmp_path)
    for backend in ("inline", "tune"):
        with pytest.raises(SystemExit) as stop:
            compare.main(["--task-file", str(path), "--shots", "8", "--seeds", "0", "--arms", "gradient",
                          "--backend", backend, "--out", str(tmp_path / "out"), "--storage", str(tmp_path / "s")])
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "Traceback" not in "\n".join(err)
        assert err[-1].endswith("error: the data of topics (seed 0, --shots 8): train: class 0 has 6 examples, "
                                "fewer than the 8 asked per class (set cap_shots: true to take what there is)")
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_missing_merge_file_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        compare.main(["--merge", str(tmp_path / "missing.json"), "--out", str(tmp_path / "out")])
    assert stop.value.code == 2 and "--merge: no results file at" in capsys.readouterr().err


def test_a_recorded_run_of_a_changed_task_is_not_reused(tmp_path):
    path = write_task(tmp_path)
    args = compare.parse_args(["--task-file", str(path)])
    b = compare.budget(args)
    run = {"dataset": "topics", "seed": 0, "arm": "gradient", "budget": b,
           "args": {**{k: compare.setting(args, "topics", k) if k in compare.GLOBAL_DEFAULTS else getattr(args, k)
                       for k in compare.RESULT_ARGS}, "user_tasks": args.user_tasks}}
    compare.check_recorded(run, args, b)  # the same task: reused
    changed = compare.parse_args(["--task-file", str(write_task(tmp_path, seed_prompts=["what is this about"]))])
    with pytest.raises(ValueError, match="other settings .*task"):
        compare.check_recorded(run, changed, b)


@pytest.mark.slow
def test_a_users_csv_end_to_end_through_the_command_line(tmp_path):
    """The real command on a tiny CSV: gradient only and the no-LLM restarts arm, each at the budget counted
    from what its trials reported; the table names the user's task."""
    path = write_task(tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ray_llm_search.compare", "--task-file", str(path), "--seeds", "0",
           "--arms", "gradient", "chains-screened-perturb", "--backend", "inline", "--generations", "2", "--population", "2",
           "--steps", "2", "--eval-every", "2", "--shots", "2", "--val-shots", "2", "--out", str(out),
           "--storage", str(tmp_path / "storage")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    runs = {r["arm"]: r for r in results["runs"]}
    assert set(runs) == {"gradient", "chains-screened-perturb"}
    b = compare.budget(compare.parse_args(["--task-file", str(path), "--generations", "2", "--population", "2",
                                           "--steps", "2", "--eval-every", "2"]))
    for run in runs.values():
        assert run["dataset"] == "topics" and run["gradient_steps"] == b["gradient_steps"] == 8
        assert run["n_evaluations"] == b["evaluations"]
        # 18 sentences, 2 + 2 per class drawn for training and validation: the other 6 are the test split
        assert run["split_sizes"] == {"train": 6, "val": 6, "test": 6} and run["test_n"] == 6
        assert 0.0 <= run["test_acc"] <= 1.0
    assert results["commands"][0].startswith("python -m ray_llm_search.compare --task-file")
    assert "topics" in (out / "RESULTS_TABLE.md").read_text()
