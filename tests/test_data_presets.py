"""Presets for the benchmark sets in ../shared/data, read from the real files, and the loader features they
use: per-split overrides, text templates, capped shots, and the Hugging Face ``datasets`` format."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from trainables.data import SHARED_DATASETS, default_data_root, load_dataset, read_rows, shared_data_spec

SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data missing at {SHARED_DATA}")


def _counts(examples) -> dict[int, int]:
    return dict(Counter(e.label for e in examples))


def _keys(examples) -> set[tuple]:
    return {(e.text, e.text_b, e.label) for e in examples}


def _load(name: str, **kw):
    return load_dataset(shared_data_spec(name, root=str(SHARED_DATA), **kw))


def test_default_root_is_beside_the_checkout():
    assert Path(default_data_root()).resolve() == SHARED_DATA.resolve()


@pytest.mark.parametrize("name", SHARED_DATASETS)
def test_every_preset_gives_disjoint_k_shot_splits(name):
    ds = _load(name, shots=4, val_shots=4, seed=1)
    assert len(ds.label_names) == len(set(ds.label_names)) >= 2
    assert all(n == 4 for n in _counts(ds.train).values()) or name == "cb"
    assert ds.test, f"{name} has no test split"
    train, val, test = _keys(ds.train), _keys(ds.val), _keys(ds.test)
    assert not train & val and not val & test
    # SST-2 and TREC ship with a couple of sentences in both train and test (SOURCE.md); nowhere else
    assert len(train & test) == 0 or name in ("sst2", "trec")
    assert all(e.text.strip() for e in ds.train + ds.val + ds.test)
    same = _load(name, shots=4, val_shots=4, seed=1)
    assert _keys(same.train) == train and _keys(same.test) == test  # a seed fixes the splits


def test_sst2_test_file_in_its_own_line_format():
    ds = _load("sst2")
    assert ds.label_names == ["negative", "positive"]
    assert _counts(ds.train) == {0: 16, 1: 16} and len(ds.val) == 32
    assert len(ds.test) == 1821 and _counts(ds.test) == {0: 912, 1: 909}  # SOURCE.md's counts
    assert ds.test[0].text.startswith("no movement , no yuks")
    assert not any(e.text[:2] in ("0 ", "1 ") for e in ds.test)
    assert _counts(_load("sst2", test_size=100).test) == {0: 50, 1: 50}


def test_trec_coarse_labels_and_latin1_line():
    ds = _load("trec")
    assert ds.label_names == ["abbreviation", "description", "entity", "human", "location", "number"]
    assert len(ds.test) == 500
    assert _counts(ds.test) == {1: 138, 5: 113, 2: 94, 4: 81, 3: 65, 0: 9}  # SOURCE.md: DESC 138, NUM 113, ...
    rows = read_rows(str(SHARED_DATA / "trec" / "TREC.train"), {"format": "lines", "encoding": "latin-1"})
    assert len(rows) == 5452 and {y for _, _, y in rows} == {"ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"}


def test_ag_news_title_and_description_cleaned_and_split_by_seed():
    ds = _load("ag_news")
    assert ds.label_names == ["world", "sports", "business", "technology"]
    assert _counts(ds.test) == {i: 250 for i in range(4)}
    rows = read_rows(str(SHARED_DATA / "ag_news" / "test.csv"), shared_data_spec("ag_news", root=str(SHARED_DATA)))
    assert len(rows) == 7600
    second = rows[1][0]
    assert second.startswith("The Race is On: Second Private Team Sets Launch Date for Human Spaceflight (SPACE.com). ")
    assert "$10 million" in second and "#36;" not in second and "\\" not in second
    other = _load("ag_news", seed=5)
    assert _keys(other.train) != _keys(ds.train)
    assert not _keys(ds.train) & _keys(ds.test)


def test_rte_pairs_with_yes_no_names_and_official_val_as_test():
    ds = _load("rte")
    assert ds.label_names == ["yes", "no"]  # entailment, not_entailment
    assert len(ds.test) == 277 and _counts(ds.test) == {0: 146, 1: 131}
    assert all(e.text and e.text_b for e in ds.train + ds.val + ds.test)
    first = ds.test[0]
    assert first.text.startswith("Dana Reeve") and first.text_b == "Christopher Reeve had an accident." and first.label == 1


def test_boolq_passage_then_question_and_boolean_labels():
    ds = _load("boolq", test_size=200)
    assert ds.label_names == ["no", "yes"]
    assert _counts(ds.test) == {0: 100, 1: 100}
    assert all(" -- " in e.text and e.text_b and not e.text_b.endswith(" -- ") for e in ds.train)


def test_cb_takes_what_fewglue_has_per_class():
    ds = _load("cb")
    assert ds.label_names == ["yes", "no", "maybe"]
    assert _counts(ds.train) == {0: 16, 1: 10, 2: 3}  # FewGLUE train: 19 / 10 / 3
    assert len(ds.val) == 32 and len(ds.test) == 56


def test_wic_puts_the_word_into_the_second_text():
    ds = _load("wic")
    assert ds.label_names == ["no", "yes"]
    assert len(ds.test) == 638 - 64
    assert all('Does "' in e.text_b and e.text_b.endswith('" mean the same?') for e in ds.train)


def test_unknown_preset_and_missing_root(tmp_path):
    with pytest.raises(ValueError, match="unknown shared data set 'imdb'"):
        shared_data_spec("imdb", root=str(SHARED_DATA))
    with pytest.raises(ValueError, match="shared data folder not found"):
        shared_data_spec("sst2", root=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="SOURCE.md"):
        shared_data_spec("sst2", root=str(tmp_path))


# -- loader features the presets use ------------------------------------------------------------------------


def test_template_names_a_missing_field(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"a": "x", "label": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"template '\{a\} \{b\}' asks for a field the row lacks \('b'\); it has \['a', 'label'\]"):
        read_rows(str(path), {"text_template": "{a} {b}"})
    headerless = tmp_path / "h.csv"
    headerless.write_text("1,title,body\n", encoding="utf-8")
    assert read_rows(str(headerless), {"header": False, "text_template": "{1}: {2}", "label_column": 0}) == [
        ("title: body", None, "1")]
    with pytest.raises(ValueError, match=r"index 5 out of range.*3 cells"):
        read_rows(str(headerless), {"header": False, "text_template": "{5}", "label_column": 0})


def test_split_given_as_a_dict_overrides_the_format(tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"good {i}\t1\nbad {i}\t0\n" for i in range(4)), encoding="utf-8")
    test = tmp_path / "test.txt"
    test.write_text("1 fine film\n0 dull film\n", encoding="utf-8")
    ds = load_dataset({"train": str(train), "test": {"path": str(test), "format": "lines"}, "format": "tsv",
                       "text_column": "sentence", "shots": 2, "val_shots": 1})
    assert [(e.text, e.label) for e in ds.test] == [("fine film", 1), ("dull film", 0)]
    with pytest.raises(ValueError, match="needs 'path'"):
        load_dataset({"train": {"format": "tsv"}, "shots": 1})


def test_hugging_face_datasets_format_is_a_clear_error_without_the_package():
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="pip install datasets"):
            load_dataset({"train": {"path": "glue:sst2", "split": "train"}, "format": "hf",
                          "text_column": "sentence"})
    else:
        pytest.skip("datasets is installed here; the error path is for machines without it")


def test_one_benchmark_table_feeds_the_comparison_and_the_examples():
    from ray_llm_search import compare
    from trainables.benchmark_data import BENCHMARKS
    from trainables.data import bbc_news_spec

    assert set(BENCHMARKS) == set(SHARED_DATASETS) | {"bbc"}
    for name, bench in BENCHMARKS.items():
        assert compare.TASKS[name] == (bench.task, list(bench.seed_prompts)) and len(bench.seed_prompts) == 4
        assert compare.DATASET_DEFAULTS.get(name, {}) == bench.defaults
        if name == "bbc":
            assert bench.data_spec(shots=4, seed=3) == bbc_news_spec(shots=4, val_shots=4, test_size=None, seed=3)
        else:
            spec = bench.data_spec(root=str(SHARED_DATA), shots=4, seed=3)
            assert spec == shared_data_spec(name, root=str(SHARED_DATA), shots=4, seed=3)
    # the comparison's config for a benchmark is the table's spec at the published settings
    args = compare.parse_args(["--data-root", str(SHARED_DATA)])
    assert compare.base_config(args, "sst2", 2)["data"] == BENCHMARKS["sst2"].data_spec(
        root=str(SHARED_DATA), shots=args.shots, test_size=1000, seed=2)
