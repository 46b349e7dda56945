"""The comparison's tasks: the shared benchmarks (``trainables.benchmark_data``) and a user's own (a task file or
the ``--data`` flags), checked with one-line errors, and the trial config of a task and seed."""

from __future__ import annotations

import json
import os

from trainables.benchmark_data import BENCHMARKS

# The shared benchmarks' task descriptions and seed prompts, and their published settings: trainables.benchmark_data.
TASKS: dict[str, tuple[str, list[str]]] = {n: (b.task, list(b.seed_prompts)) for n, b in BENCHMARKS.items()}


# Settings the published table uses per dataset where the flag is not given (trainables.benchmark_data).
DATASET_DEFAULTS: dict[str, dict] = {n: dict(b.defaults) for n, b in BENCHMARKS.items() if b.defaults}


GLOBAL_DEFAULTS = {"test_size": None, "max_length": 64}


def setting(args, dataset: str, name: str):
    """``--test-size`` / ``--max-length`` as given, else the task file's or the preset's setting, else the
    default."""
    value = getattr(args, name)
    if value is not None:
        return value
    user = user_tasks(args).get(dataset)
    if user is not None and user.get(name) is not None:
        return user[name]
    return DATASET_DEFAULTS.get(dataset, {}).get(name, GLOBAL_DEFAULTS[name])


TASK_FILE_KEYS = {"name", "task", "seed_prompts", "data", "max_length", "test_size"}


def user_tasks(args) -> dict[str, dict]:
    return getattr(args, "user_tasks", None) or {}


def task_of(args, dataset: str) -> tuple[str, list[str]]:
    """``(task description, seed prompts)`` of a user's task or a preset."""
    user = user_tasks(args).get(dataset)
    if user is not None:
        return user["task"], list(user["seed_prompts"])
    return TASKS[dataset]


def load_task_file(path: str) -> dict:
    """A task file (JSON, or YAML with PyYAML) checked and with its data paths made absolute; raises
    ``ValueError`` naming what is wrong."""
    if not os.path.isfile(path):
        raise ValueError(f"task file not found: {path!r}")
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    if path.lower().endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError as e:
            raise ValueError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or write the task as JSON") from e
        try:
            task = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from e
    else:
        try:
            task = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(task, dict):
        raise ValueError(f"{path}: a task file holds one object with keys {sorted(TASK_FILE_KEYS)}")
    return check_task(task, os.path.dirname(os.path.abspath(path)), where=path)


def check_task(task: dict, base_dir: str, where: str) -> dict:
    unknown = set(task) - TASK_FILE_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; a task has {sorted(TASK_FILE_KEYS)}")
    name = task.get("name")
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "/\\ "):
        raise ValueError(f"{where}: 'name' must be a short name without spaces or slashes, got {name!r}")
    if name in TASKS:
        raise ValueError(f"{where}: name {name!r} is a preset's; choose another")
    description = task.get("task")
    if not isinstance(description, str) or not description.strip():
        raise ValueError(f"{where}: 'task' must describe the task in a sentence or two (it is what the LLM reads)")
    seeds = task.get("seed_prompts")
    if isinstance(seeds, str) or not isinstance(seeds, list) or not seeds or not all(
            isinstance(x, str) and x.strip() for x in seeds):
        raise ValueError(f"{where}: 'seed_prompts' must be a list of one or more non-empty texts, got {seeds!r}")
    data = task.get("data")
    if not isinstance(data, dict) or not any(k in data for k in ("path", "train")):
        raise ValueError(f"{where}: 'data' must be a data spec with 'path' (or 'train', 'val', 'test' files); "
                         f"see trainables/data.py, got {data!r}")
    for key in ("max_length", "test_size"):
        value = task.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{where}: {key!r} must be a positive integer, got {value!r}")
    data = dict(data)
    for key in ("path", "train", "val", "test"):
        entry = data.get(key)
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            data[key] = {**entry, "path": _absolute(entry["path"], base_dir, data.get("format"), where)}
        elif isinstance(entry, str):
            data[key] = _absolute(entry, base_dir, data.get("format"), where)
    return {**task, "name": name.strip(), "task": description.strip(), "seed_prompts": [x.strip() for x in seeds],
            "data": data}


def _absolute(path: str, base_dir: str, fmt: str | None, where: str) -> str:
    if fmt == "hf":  # a Hugging Face dataset name, not a file
        return path
    full = path if os.path.isabs(path) else os.path.join(base_dir, os.path.expanduser(path))
    if not os.path.exists(full):
        raise ValueError(f"{where}: data file {path!r} not found (looked for {full})")
    return os.path.abspath(full)


def task_from_flags(args) -> dict | None:
    """The task given by ``--data`` and its flags, or None."""
    if not args.data:
        if args.task_description or args.seed_prompts:
            raise ValueError("--task-description and --seed-prompts describe a task given with --data")
        return None
    if not args.task_description or not args.seed_prompts:
        raise ValueError("--data needs --task-description and --seed-prompts (or write a --task-file)")
    data: dict = {"path": args.data}
    if args.text_column:
        data["text_column"] = args.text_column
    if args.label_column:
        data["label_column"] = args.label_column
    task = {"name": args.name or os.path.splitext(os.path.basename(args.data.rstrip("/")))[0] or "task",
            "task": args.task_description, "seed_prompts": args.seed_prompts, "data": data}
    return check_task(task, os.getcwd(), where="--data")


def base_config(args, dataset: str, seed: int) -> dict:
    user = user_tasks(args).get(dataset)
    if user is not None:
        data = {**user["data"], "shots": args.shots, "val_shots": args.val_shots or args.shots, "seed": seed}
        test_size = setting(args, dataset, "test_size")
        if test_size is not None:
            data["test_size"] = test_size
    else:
        data = BENCHMARKS[dataset].data_spec(root=args.data_root, shots=args.shots, val_shots=args.val_shots,
                                             test_size=setting(args, dataset, "test_size"), seed=seed)
    return {"data": data, "model": args.model, "head": args.head, "steps": args.steps, "eval_every": args.eval_every,
            "lr": args.lr, "batch_size": args.batch_size, "prompt_length": args.prompt_length,
            "max_length": setting(args, dataset, "max_length"), "device": "cpu" if args.cpu else "auto",
            **({"keep_all_vectors": True} if getattr(args, "keep_vectors", False) else {})}


def _split_sizes(config: dict) -> dict:
    from trainables.text_prompt import dataset_for

    data = dataset_for(config)
    return {"train": len(data.train), "val": len(data.val), "test": len(data.test)}
