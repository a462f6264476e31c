"""Splits: stratified proportions, determinism, subject-disjointness, split-file reuse."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from latent_diffusion.data.colormaps import apply_colormap
from latent_diffusion.data.image_folder import ImageFolderSource
from latent_diffusion.data.splits import load_split, save_split, stratified_split
from latent_diffusion.utils.errors import UserError


def test_stratified_proportions_and_determinism():
    labels = np.repeat([0, 1, 2, 3], [100, 50, 30, 20])
    a = stratified_split(labels, 0.1, 0.2, seed=3)
    b = stratified_split(labels, 0.1, 0.2, seed=3)
    c = stratified_split(labels, 0.1, 0.2, seed=4)
    assert a == b and a != c
    all_idx = sorted(a["train"] + a["val"] + a["test"])
    assert all_idx == list(range(len(labels)))  # a partition
    for cls, n in zip([0, 1, 2, 3], [100, 50, 30, 20], strict=True):
        assert (labels[a["test"]] == cls).sum() == round(0.2 * n)
        assert (labels[a["val"]] == cls).sum() == round(0.1 * n)


def test_small_classes_keep_training_items():
    labels = [0, 0, 0, 1, 1]
    s = stratified_split(labels, 0.3, 0.3, seed=0)
    assert {labels[i] for i in s["train"]} == {0, 1}
    with pytest.raises(UserError, match="sum to less than 1"):
        stratified_split(labels, 0.5, 0.5)


def test_subject_disjoint():
    rng = np.random.default_rng(0)
    subjects = np.repeat([f"p{i:02d}" for i in range(20)], rng.integers(5, 15, size=20))
    labels = rng.integers(0, 4, size=len(subjects))
    s = stratified_split(labels, 0.15, 0.2, seed=1, groups=subjects)
    per = {k: set(subjects[v]) for k, v in s.items()}
    assert not (per["train"] & per["val"] or per["train"] & per["test"] or per["val"] & per["test"])
    assert all(per.values())
    n = len(labels)
    assert abs(len(s["test"]) / n - 0.2) < 0.1 and abs(len(s["val"]) / n - 0.15) < 0.1
    assert s == stratified_split(labels, 0.15, 0.2, seed=1, groups=subjects)


def test_save_load_round_trip(tmp_path):
    m = {"train": ["a/1.png", "b/2.png"], "val": ["a/3.png"], "test": []}
    p = save_split(tmp_path / "split.json", m, {"seed": 0})
    assert load_split(p) == m
    p.write_text(json.dumps({"splits": {"train": ["x"], "val": ["x"]}}))
    with pytest.raises(UserError, match="both"):
        load_split(p)
    p.write_text("{not json")
    with pytest.raises(UserError, match=str(p)):
        load_split(p)


def _folder(root, n=8):
    for c in ("walk", "fall"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            f = np.linspace(0, 1, 16 * 16).reshape(16, 16) ** (1 + i % 3)
            Image.fromarray(apply_colormap(f, "jet")).save(root / c / f"subj{i % 4}_{c}_{i}.png")


def test_split_file_written_reused_and_never_under_root(tmp_path):
    root = tmp_path / "data"
    _folder(root)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    sf = tmp_path / "run" / "split.json"
    kw = dict(image_size=16, val_fraction=0.25, test_fraction=0.25, subject_regex=r"subj(\d+)_")
    a = ImageFolderSource(root=root, split_file=sf, seed=0, **kw)
    assert sf.exists()
    saved = load_split(sf)
    assert saved["test"] == a.split("test").files
    # subject-disjoint through the file names
    subj = {
        s: {f.split("/")[1].split("_")[0] for f in a.split(s).files}
        for s in ("train", "val", "test")
    }
    assert not (
        subj["train"] & subj["test"] or subj["train"] & subj["val"] or subj["val"] & subj["test"]
    )
    # another seed with the same split file reuses the file's split
    b = ImageFolderSource(root=root, split_file=sf, seed=99, **kw)
    assert b.split_mapping == a.split_mapping
    # a split file pointing at a missing file is an error naming both
    json_obj = json.loads(sf.read_text())
    json_obj["splits"]["train"].append("walk/gone.png")
    sf.write_text(json.dumps(json_obj))
    with pytest.raises(UserError, match="walk/gone.png") as e:
        ImageFolderSource(root=root, split_file=sf, **kw)
    assert str(sf) in str(e.value)
    # writing the split (or a cache) inside the data folder is refused
    with pytest.raises(UserError, match="inside the data root"):
        ImageFolderSource(root=root, split_file=root / "split.json", **kw)
    with pytest.raises(UserError, match="inside the data root"):
        ImageFolderSource(root=root, cache_dir=root / "cache", **kw)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    # a regex that does not match names the file
    with pytest.raises(UserError, match="does not match"):
        ImageFolderSource(root=root, image_size=16, subject_regex=r"person(\d+)")
