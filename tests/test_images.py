"""Image data for CLIP prompt learning: folder trees and CoOp split files, k-shot sampling, class names,
errors that name the bad path or value, CoOp's preprocessing views, and the on-disk feature cache."""

from __future__ import annotations

import json
import logging
import os
import random
import re

import pytest
import torch
from PIL import Image

from trainables.clip.features import FeatureCache
from trainables.clip.images import (
    ImageExample,
    Preprocess,
    ViewsDataset,
    _crop_params,
    clean_classname,
    files_digest,
    load_image_dataset,
)


def write_image(path, seed: int = 0, size=(40, 48), fmt: str | None = None) -> str:
    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(size[0], size[1], 3, generator=g) * 255).to(torch.uint8).numpy()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return str(path)


def make_tree(root, classes: dict[str, int], ext: str = ".png") -> str:
    n = 0
    for name, count in classes.items():
        for i in range(count):
            write_image(os.path.join(root, name, f"img{i}{ext}"), seed=n)
            n += 1
    return str(root)


@pytest.fixture
def tree(tmp_path) -> str:
    return make_tree(tmp_path / "pets", {"001.Black_footed_Albatross": 5, "golden_retriever": 5, "tabby  cat": 5})


# -- folder trees -------------------------------------------------------------------------------------------


def test_folder_tree_splits_kshot_and_cleans_names(tree):
    data = load_image_dataset({"root": tree, "shots": 2, "val_shots": 1, "seed": 3})
    assert data.classnames == ["Black footed Albatross", "golden retriever", "tabby cat"]
    assert (len(data.train), len(data.val), len(data.test)) == (6, 3, 6)
    for split in (data.train, data.val, data.test):
        assert sorted({e.label for e in split}) == [0, 1, 2]
        assert all(os.path.isabs(e.path) and os.path.isfile(e.path) for e in split)
    assert [sum(e.label == c for e in data.train) for c in range(3)] == [2, 2, 2]
    paths = [{e.path for e in s} for s in (data.train, data.val, data.test)]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    assert all(os.path.basename(os.path.dirname(e.path)) == "golden_retriever" for e in data.train if e.label == 1)
    again = load_image_dataset({"root": tree, "shots": 2, "val_shots": 1, "seed": 3})
    assert again.train == data.train and again.val == data.val and again.test == data.test
    other = [load_image_dataset({"root": tree, "shots": 2, "val_shots": 1, "seed": s}).train for s in range(4, 8)]
    assert any(o != data.train for o in other)


def test_val_shots_default_to_coops_rule_and_test_size(tmp_path):
    root = make_tree(tmp_path / "d", {"a": 12, "b": 12}, ext=".jpg")
    data = load_image_dataset({"root": root, "shots": 6})
    assert data.info["val_shots"] == 4 and len(data.val) == 8 and len(data.test) == 4
    assert len(load_image_dataset({"root": root, "shots": 1}).val) == 2  # min(shots, 4)
    small = load_image_dataset({"root": root, "shots": 2, "test_size": 4})
    assert len(small.test) == 4 and {e.label for e in small.test} == {0, 1}


def test_classnames_override(tree):
    spec = {"root": tree, "shots": 1, "val_shots": 1}
    named = load_image_dataset({**spec, "classnames": ["albatross", "retriever", "cat"]})
    assert named.classnames == ["albatross", "retriever", "cat"]
    mapped = load_image_dataset({**spec, "classnames": {"golden_retriever": "dog"}})
    assert mapped.classnames == ["Black footed Albatross", "dog", "tabby cat"]
    with pytest.raises(ValueError, match="2 names but .* 3 classes"):
        load_image_dataset({**spec, "classnames": ["a", "b"]})
    with pytest.raises(ValueError, match="'zebra'"):
        load_image_dataset({**spec, "classnames": {"zebra": "z"}})


@pytest.mark.parametrize("raw, clean", [
    ("001.Black_footed_Albatross", "Black footed Albatross"),
    ("golden_retriever", "golden retriever"),
    ("  tabby   cat ", "tabby cat"),
    ("t-shirt", "t-shirt"),
    ("3D_printer", "3D printer"),
    ("Faces_easy", "Faces easy"),
])
def test_clean_classname(raw, clean):
    assert clean_classname(raw) == clean


# -- CoOp split files ---------------------------------------------------------------------------------------


def _split_file(tmp_path, with_val: bool = True) -> tuple[str, str]:
    root = tmp_path / "images"
    entries = {"train": [], "val": [], "test": []}
    n = 0
    for label, name in [(3, "great_pyrenees"), (7, "abyssinian")]:  # labels need not start at 0
        for split, count in [("train", 6), ("val", 5), ("test", 3)]:
            for i in range(count):
                rel = f"{name}_{split}_{i}.jpg"
                write_image(root / rel, seed=n)
                n += 1
                entries[split].append([rel, label, name])
    if not with_val:
        entries.pop("val")
    path = tmp_path / "split_zhou_Pets.json"
    path.write_text(json.dumps(entries))
    return str(root), str(path)


def test_coop_split_file(tmp_path):
    root, split = _split_file(tmp_path)
    data = load_image_dataset({"root": root, "split_file": split, "shots": 4, "seed": 1})
    assert data.classnames == ["great pyrenees", "abyssinian"]  # label order: 3 -> 0, 7 -> 1
    assert (len(data.train), len(data.val), len(data.test)) == (8, 8, 6)  # val: min(4, 4) per class
    assert all("_train_" in e.path for e in data.train) and all("_val_" in e.path for e in data.val)
    assert all("_test_" in e.path for e in data.test)
    assert all(("pyrenees" in e.path) == (e.label == 0) for e in data.train + data.val + data.test)
    assert load_image_dataset({"root": root, "split_file": split, "shots": 4, "seed": 1}).train == data.train


def test_coop_split_file_without_val_draws_from_train(tmp_path):
    root, split = _split_file(tmp_path, with_val=False)
    data = load_image_dataset({"root": root, "split_file": split, "shots": 4, "val_shots": 2})
    assert len(data.val) == 4 and all("_train_" in e.path for e in data.val)
    assert not {e.path for e in data.val} & {e.path for e in data.train}


# -- bad input --------------------------------------------------------------------------------------------


def test_missing_root(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=re.escape(missing)):
        load_image_dataset({"root": missing})
    with pytest.raises(ValueError, match="root"):
        load_image_dataset({"shots": 2})
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match="no class folders"):
        load_image_dataset({"root": str(tmp_path / "flat")})


def test_empty_class_folder(tree):
    empty = os.path.join(tree, "zebra")
    os.makedirs(empty)
    with open(os.path.join(empty, "notes.txt"), "w") as f:
        f.write("not an image")
    with pytest.raises(ValueError, match=re.escape(repr(empty))):
        load_image_dataset({"root": tree, "shots": 1})


@pytest.mark.parametrize("content", [b"this is text, not a JPEG", b""])
def test_unreadable_image(tree, content):
    bad = os.path.join(tree, "golden_retriever", "img_broken.jpg")
    with open(bad, "wb") as f:
        f.write(content)
    spec = {"root": tree, "shots": 4, "val_shots": 1}
    with pytest.raises(ValueError, match=re.escape(bad)):
        load_image_dataset(spec)  # wherever it lands: train, val or test
    assert len(load_image_dataset(spec, check=()).train) == 12  # checking can be left to the caller


def test_k_larger_than_a_class_holds(tree):
    folder = os.path.join(tree, "golden_retriever")
    os.remove(os.path.join(folder, "img0.png"))
    with pytest.raises(ValueError, match=re.escape(repr(folder)) + ".*4 images.*shots=5"):
        load_image_dataset({"root": tree, "shots": 5})
    with pytest.raises(ValueError, match="shots \\+ val_shots = 3 \\+ 2"):
        load_image_dataset({"root": tree, "shots": 3, "val_shots": 2})


def test_k_larger_than_a_class_holds_in_split_file(tmp_path):
    root, split = _split_file(tmp_path)
    with pytest.raises(ValueError, match="'great_pyrenees'.*6 training images.*shots=7"):
        load_image_dataset({"root": root, "split_file": split, "shots": 7})


def test_bad_split_files(tmp_path):
    root, split = _split_file(tmp_path)
    missing = str(tmp_path / "nope.json")
    with pytest.raises(ValueError, match=re.escape(missing)):
        load_image_dataset({"root": root, "split_file": missing})
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(ValueError, match="garbage.json"):
        load_image_dataset({"root": root, "split_file": str(garbage)})
    content = json.loads(open(split).read())
    content["train"][2] = ["x.jpg", "3", "great_pyrenees"]
    bad_entry = tmp_path / "bad_entry.json"
    bad_entry.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"train\[2\]"):
        load_image_dataset({"root": root, "split_file": str(bad_entry)})
    content = json.loads(open(split).read())
    content["test"][0][0] = "gone.jpg"
    gone = tmp_path / "gone.json"
    gone.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=re.escape(os.path.join(root, "gone.jpg"))):
        load_image_dataset({"root": root, "split_file": str(gone), "shots": 2})


@pytest.mark.parametrize("spec, match", [
    ({"shots": 0}, "shots"),
    ({"shots": 2, "val_shots": "4"}, "val_shots"),
    ({"test_size": 0}, "test_size"),
    ({"shot": 2}, "unknown image data keys \\['shot'\\]"),
])
def test_bad_spec_values(tree, spec, match):
    with pytest.raises(ValueError, match=match):
        load_image_dataset({"root": tree, **spec})


# -- preprocessing ------------------------------------------------------------------------------------------

PRE = Preprocess(size=24, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_views_are_fixed_by_their_seed(tree):
    img = Image.open(os.path.join(tree, "golden_retriever", "img0.png")).convert("RGB")
    center = PRE.center(img)
    assert center.shape == (3, 24, 24) and torch.equal(center, PRE.center(img))
    views = [PRE.augmented(img, seed) for seed in range(8)]
    assert all(v.shape == (3, 24, 24) for v in views)
    assert torch.equal(views[3], PRE.augmented(img, 3))
    assert len({v.sum().item() for v in views}) == 8
    assert not any(torch.equal(v, center) for v in views)


def test_crop_params_stay_inside_the_image():
    rng = random.Random(0)
    for _ in range(300):
        h, w = rng.randint(1, 60), rng.randint(1, 60)
        top, left, ch, cw = _crop_params(h, w, (0.08, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= top and 0 <= left and 0 < ch and 0 < cw and top + ch <= h and left + cw <= w


def test_views_dataset_decodes_once_per_image(tree):
    data = load_image_dataset({"root": tree, "shots": 1, "val_shots": 1})
    ds = ViewsDataset(data.train, PRE, [None, 0, 1], seed=0)
    item = ds[0]
    assert item.shape == (3, 3, 24, 24)
    assert torch.equal(item[0], PRE.center(Image.open(data.train[0].path).convert("RGB")))
    assert not torch.equal(item[1], item[2])


def test_truncated_pixels_name_the_file(tmp_path):
    path = write_image(tmp_path / "c" / "big.png", size=(64, 64))
    with open(path, "rb") as f:
        head = f.read()[:80]  # a valid header, then nothing
    with open(path, "wb") as f:
        f.write(head)
    with pytest.raises(ValueError, match=re.escape(path)):
        ViewsDataset([ImageExample(path, 0)], PRE, [None], 0)[0]


# -- the feature cache --------------------------------------------------------------------------------------


def test_files_digest_follows_content(tree):
    data = load_image_dataset({"root": tree, "shots": 1, "val_shots": 1})
    before = files_digest(data.train)
    assert files_digest(data.train) == before
    write_image(data.train[0].path, seed=99, size=(41, 48))
    assert files_digest(data.train) != before


def test_cache_miss_hit_and_only_missing_views_built(tmp_path):
    cache = FeatureCache(str(tmp_path / "cache"))
    fields = [{"model": "m", "view": v} for v in range(3)]
    calls: list[list[int]] = []

    def build(missing):
        calls.append(list(missing))
        return [torch.full((4, 2), float(i), dtype=torch.float16) for i in missing]

    first = cache.get_or_build(fields, build)
    assert calls == [[0, 1, 2]] and cache.stats == {"hit": 0, "miss": 3, "corrupt": 0}
    second = cache.get_or_build(fields, build)
    assert calls == [[0, 1, 2]] and cache.stats["hit"] == 3
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    more = cache.get_or_build(fields + [{"model": "m", "view": 3}], build)
    assert calls[-1] == [3] and float(more[3][0, 0]) == 3.0
    assert cache.key({"a": 1, "b": 2}) == cache.key({"b": 2, "a": 1}) != cache.key({"a": 1, "b": 3})


@pytest.mark.parametrize("damage", ["truncate", "garbage", "tamper", "other_key"])
def test_corrupt_cache_file_is_detected_and_rebuilt(tmp_path, caplog, damage):
    cache = FeatureCache(str(tmp_path / "cache"))
    fields = [{"model": "m", "view": 0}]
    built = []

    def build(missing):
        built.append(missing)
        return [torch.arange(8, dtype=torch.float16).view(4, 2)]

    cache.get_or_build(fields, build)
    path = cache.path(cache.key(fields[0]))
    if damage == "truncate":
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
    elif damage == "garbage":
        with open(path, "wb") as f:
            f.write(b"\x00" * 100)
    else:
        saved = torch.load(path, weights_only=True)
        if damage == "tamper":
            saved["features"][0, 0] = 42.0  # the checksum no longer matches
        else:
            saved["key"] = "0" * 40
        torch.save(saved, path)
    with caplog.at_level(logging.WARNING, logger="trainables.clip"):
        again = cache.get_or_build(fields, build)
    assert len(built) == 2 and cache.stats["corrupt"] == 1
    assert torch.equal(again[0], torch.arange(8, dtype=torch.float16).view(4, 2))
    assert any(path in r.getMessage() and "corrupt" in r.getMessage() for r in caplog.records)
    assert cache.load(cache.key(fields[0])) is not None  # rebuilt and readable
