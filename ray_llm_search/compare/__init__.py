"""Does the LLM + gradient combination beat gradient descent alone, at equal budget, on your task?

``python -m ray_llm_search.compare --help`` says how to run it (the arms, the budgets, your own task files;
docs/compare.md). The package, one job per module:

- ``arms``: the arms (named after their presets; earlier names are aliases), labels, the pairs the tables report,
  and the searcher and LLM each arm runs;
- ``gradient_only``: ``GradientChains``, the gradient-only baseline;
- ``tasks``: the shared benchmarks and a user's own task (task files, ``--data``), the trial config;
- ``accounting``: the budget, what each arm spent, the budget check, the best-so-far curves;
- ``run``: one arm on one task and seed (``tune.run`` or inline), the final prompt on test;
- ``results``: ``results.json`` (merged across invocations, recorded runs reused or refused);
- ``report``: the tables, the generated section of a results file, plots, TensorBoard;
- ``cli``: the command;
- ``selection_study`` and ``mentor_quality``: the studies built on it (``python -m
  ray_llm_search.compare.selection_study``, ``python -m ray_llm_search.compare.mentor_quality``).

Only this package of ``ray_llm_search`` imports ``trainables`` (the text trainable it runs).
"""

from ray_llm_search.compare.accounting import (
                                               BUDGET_LABELS,
                                               BUDGETS,
                                               best_so_far,
                                               budget,
                                               budget_kind,
                                               check_budget,
                                               curve_budget,
                                               trial_work,
                                               worker_span,
)
from ray_llm_search.compare.arms import (
                                               ABLATIONS,
                                               ARM_ALIASES,
                                               ARM_LABELS,
                                               ARM_PRESETS,
                                               ARMS,
                                               AUTHORS_ROUNDS,
                                               CONTROLS,
                                               DEFAULT_ARMS,
                                               FAITHFUL_ARMS,
                                               PEERS,
                                               SCREENED_ARMS,
                                               NoLLM,
                                               arm_select,
                                               authors_schedule,
                                               canonical_arm,
                                               design_population,
                                               make_llm,
                                               make_search,
                                               pbt_scheduler,
                                               screened_schedule,
)
from ray_llm_search.compare.cli import main, parse_args, ray_init_options
from ray_llm_search.compare.gradient_only import GradientChains
from ray_llm_search.compare.report import (
                                               RESULTS_BEGIN,
                                               RESULTS_END,
                                               adopted,
                                               paired,
                                               paired_table,
                                               regenerate_command,
                                               write_plots,
                                               write_results_md,
                                               write_table,
                                               write_tensorboard,
)
from ray_llm_search.compare.results import (
                                               MENTOR_ARGS,
                                               RESULT_ARGS,
                                               check_recorded,
                                               load_results,
                                               merge_results,
                                               save_results,
)
from ray_llm_search.compare.run import Recorder, drive_inline, rescore, run_arm, seed_prompt_test, select_best
from ray_llm_search.compare.tasks import (
                                               DATASET_DEFAULTS,
                                               GLOBAL_DEFAULTS,
                                               TASK_FILE_KEYS,
                                               TASKS,
                                               base_config,
                                               check_task,
                                               load_task_file,
                                               setting,
                                               task_from_flags,
                                               task_of,
)

__all__ = ["ABLATIONS", "ARM_ALIASES", "ARM_LABELS", "ARM_PRESETS", "ARMS", "AUTHORS_ROUNDS", "BUDGET_LABELS",
           "BUDGETS", "CONTROLS", "DATASET_DEFAULTS", "DEFAULT_ARMS", "FAITHFUL_ARMS", "GLOBAL_DEFAULTS",
           "MENTOR_ARGS", "PEERS", "RESULT_ARGS", "RESULTS_BEGIN", "RESULTS_END", "SCREENED_ARMS", "TASK_FILE_KEYS",
           "TASKS", "GradientChains", "NoLLM", "Recorder", "adopted", "arm_select", "authors_schedule", "base_config",
           "best_so_far", "budget", "budget_kind", "canonical_arm", "check_budget", "check_recorded", "check_task",
           "curve_budget", "design_population", "drive_inline", "load_results", "load_task_file", "main",
           "make_llm", "make_search", "merge_results", "paired", "paired_table", "parse_args", "pbt_scheduler",
           "ray_init_options", "regenerate_command", "rescore", "run_arm", "save_results", "screened_schedule",
           "seed_prompt_test", "select_best", "setting", "task_from_flags", "task_of", "trial_work", "worker_span",
           "write_plots", "write_results_md", "write_table", "write_tensorboard"]
