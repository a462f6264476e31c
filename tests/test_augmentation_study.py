"""The leak-free augmentation study's pieces: one subset rule for train and the protocol, the
record an export carries, the leak flag, and classical augmentations that keep the axes' meaning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from latent_diffusion.data import classical_augment as ca
from latent_diffusion.data.datamodule import SpectrogramDataModule
from latent_diffusion.data.simulator import sample_seed, simulate_one
from latent_diffusion.data.splits import fraction_subset, subset_fingerprint
from latent_diffusion.data.transforms import Augment
from latent_diffusion.metrics import protocol
from latent_diffusion.metrics.classifier import ClassifierConfig
from latent_diffusion.metrics.kinematics import envelopes
from latent_diffusion.utils.errors import UserError

CLASSES = ["walk", "fall"]


@pytest.fixture(scope="module")
def dm_kwargs(tmp_path_factory):
    cache = tmp_path_factory.mktemp("sim")
    return dict(
        source="microdoppler",
        classes=CLASSES,
        n_per_class=10,
        val_per_class=2,
        test_per_class=2,
        image_size=32,
        workers=0,
        cache_dir=str(cache),
    )


# ------------------------------------------------------------------ subset rule


def test_fraction_subset_is_seeded_stratified_and_nested_in_the_split():
    y = np.repeat([0, 1, 2], [40, 20, 10])
    a, b, c = fraction_subset(y, 0.25, 3), fraction_subset(y, 0.25, 3), fraction_subset(y, 0.25, 4)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert np.bincount(y[a]).tolist() == [10, 5, 3]  # round half up per class: 2.5 -> 3
    assert fraction_subset(y, 1.0, 9).tolist() == list(range(len(y)))


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_fraction_outside_unit_interval_is_refused(bad):
    with pytest.raises(UserError, match=r"must be in \(0, 1\]"):
        fraction_subset([0, 1], bad, 0)


def test_fraction_leaving_a_class_empty_names_the_class_and_its_count():
    y = np.repeat([0, 1], [100, 4])
    with pytest.raises(UserError, match=r"keeps no training sample of 'fall', which has 4"):
        fraction_subset(y, 0.1, 0, class_names=["walk", "fall"])


def test_train_and_protocol_draw_the_same_subset(dm_kwargs):
    """The DataModule `train data.fraction=F data.fraction_seed=S` fits on holds exactly the
    items the protocol's classifier for (F, S) trains on, and the export record names them."""
    from latent_diffusion.train import training_subset_record

    full = SpectrogramDataModule(**dm_kwargs)
    sub = SpectrogramDataModule(**dm_kwargs, fraction=0.3, fraction_seed=5)
    full_ds, sub_ds = full.dataset("train"), sub.dataset("train")
    labels = full_ds.labels
    idx = fraction_subset(labels, 0.3, 5, CLASSES)
    assert len(sub_ds) == len(idx) == 6
    for j, i in enumerate(idx):  # same pixels, same labels, same order
        assert torch.equal(sub_ds[j][0], full_ds[i][0]) and sub_ds[j][1] == full_ds[i][1]
    assert len(sub.dataset("test")) == len(full.dataset("test"))  # val / test stay whole
    # a subset is other training data: the VAE (keyed by this fingerprint) is trained on it
    assert sub.fingerprint() != full.fingerprint() and "train_fraction" not in full.fingerprint()
    cfg = OmegaConf.create({"vae": {"name": "f4", "path": None}})
    rec = training_subset_record(sub, cfg)
    assert (
        rec["fraction"] == 0.3
        and rec["seed"] == 5
        and rec["n"] == 6
        and rec["vae_data"] == "this training subset"
    )
    assert rec["fingerprint"] == subset_fingerprint([full_ds.item_ids[i] for i in idx])
    assert rec["data_fingerprint"] == full.fingerprint()
    with pytest.raises(UserError, match="keeps no training sample of 'walk', which has 10"):
        SpectrogramDataModule(**dm_kwargs, fraction=0.01).dataset("train")


@pytest.mark.parametrize("preset", ["easy", "hard"])
def test_evaluate_reads_the_generator_subset_and_refuses_other_data(dm_kwargs, tmp_path, preset):
    """The hard preset's fingerprint holds tuples, which the export's JSON makes lists: the
    study's first cell on it was refused as 'other real data' until the record and the fresh
    fingerprint were compared in the same (JSON) form."""
    from latent_diffusion.metrics.suite import generator_subset
    from latent_diffusion.train import training_subset_record

    dm_kwargs = {**dm_kwargs, "preset": preset}

    sub = SpectrogramDataModule(**dm_kwargs, fraction=0.5, fraction_seed=1)
    sub.setup()
    export = tmp_path / "run" / "export"
    export.mkdir(parents=True)
    rec = training_subset_record(
        sub, OmegaConf.create({"vae": {"name": "f4", "path": "/elsewhere"}})
    )
    (export / "export.json").write_text(json.dumps({"data_subset": rec}))
    full = SpectrogramDataModule(**dm_kwargs)
    cfg = OmegaConf.create({"run": str(tmp_path / "run"), "generated": str(tmp_path)})
    info = generator_subset(cfg, full, full.source.split("train"), CLASSES)
    assert info["known"] and info["fraction"] == 0.5 and info["vae_data"].startswith("other data")
    assert (
        info["seen"].tolist() == fraction_subset(full.source.split("train").labels, 0.5, 1).tolist()
    )
    # the same record against another real data set (another seed): refused, naming the difference
    other = SpectrogramDataModule(**{**dm_kwargs, "n_per_class": 12})
    with pytest.raises(UserError, match=r"other real data .*counts"):
        generator_subset(cfg, other, other.source.split("train"), CLASSES)


def test_protocol_flags_a_generator_that_saw_more_data():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    x = torch.rand(40, 1, 16, 16) * 2 - 1
    tx, ty = torch.rand(8, 1, 16, 16) * 2 - 1, np.repeat([0, 1], 4)
    cfg = ClassifierConfig(width=4, steps=2, batch_size=8, time_shift=0.0)
    gen = {"fraction": 0.5, "seed": 7, "seen": fraction_subset(y, 0.5, 7)}
    curve = protocol.augmentation_curve(
        x,
        y,
        x,
        y,
        tx,
        ty,
        CLASSES,
        cfg,
        fractions=[0.25, 0.5],
        multipliers=[0, 1],
        seeds=[0, 1],
        classical={"doppler_shift": 0.1, "mixup": 0.2},
        generator=gen,
    )
    own, less = curve["0.5"], curve["0.25"]
    assert not own["leak"]["leaky"] and "generator's own" in own["subset"]
    # at 25% the classifier has 10 images; the generator saw 20, at least 10 of them unseen by it
    assert less["leak"]["leaky"] and less["leak"]["generator_saw_extra"] >= 10
    assert set(own["accuracy"]) == {"0", "classical", "1", "1+classical"}
    d = own["paired"]["1"]
    assert d["n"] == 2 and d["ci95"][0] <= d["mean"] <= d["ci95"][1]
    assert np.allclose(
        d["mean"], np.mean(own["accuracy"]["1"]["runs"]) - np.mean(own["accuracy"]["0"]["runs"])
    )
    # a generator of unknown data counts as having seen the whole split: every fraction < 1 leaks
    unknown = protocol.augmentation_curve(
        x, y, x, y, tx, ty, CLASSES, cfg, fractions=[0.5], multipliers=[0, 1], seeds=[0]
    )
    assert unknown["0.5"]["leak"] == {"leaky": True, "generator_saw_extra": 20}
    del rng


def test_report_labels_leaky_rows():
    from latent_diffusion.metrics.report import augmentation_section

    row = {
        "accuracy": {"0": {"mean": 0.5, "std": 0.0}, "1": {"mean": 0.6, "std": 0.0}},
        "paired": {"1": {"mean": 0.1, "ci95": [0.05, 0.15], "n": 3}},
        "leak": {"leaky": True, "generator_saw_extra": 12},
    }
    text = "\n".join(augmentation_section({"0.1": row}, None))
    assert "LEAKY (+12 images)" in text and "unknown" in text and "+0.100 [0.050, 0.150]" in text


# ------------------------------------------------------------ classical augmentation


@pytest.fixture(scope="module")
def walker():
    img, p = simulate_one("walk", sample_seed(3, "train", "walk", 0), 64)
    return torch.from_numpy(img)[None] * 2 - 1, p  # (1, 64, 64) in [-1, 1]


def _torso_track(x: torch.Tensor) -> np.ndarray:
    """Per-column torso (power-weighted centroid) velocity, m/s: (W,)."""
    return envelopes(((x.numpy() + 1) / 2)[None, 0])[2][0]


def test_time_shift_never_moves_the_torso_doppler(walker):
    x, p = walker
    track = _torso_track(x)
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        y = ca.apply_per_image(x, time=0.3, g=g)
        shifted = _torso_track(y)
        # a circular time roll permutes columns: the same torso velocities, in another order
        assert np.allclose(
            np.sort(shifted[np.isfinite(shifted)]), np.sort(track[np.isfinite(track)])
        )
        assert abs(np.nanmedian(shifted) - p["torso_radial_mps"]) < 0.5
    y = Augment(time_shift=True)(x)
    assert np.allclose(np.nanmedian(_torso_track(y)), np.nanmedian(track))


def test_doppler_shift_moves_velocity_not_time(walker):
    x, _ = walker
    k = 4  # rows; 0.25 m/s each at 64 rows over +-8 m/s
    y = ca._shift_rows(x, torch.full((64,), k))
    # content moves k rows down = k * 0.25 m/s lower velocity, in every column at once
    assert torch.equal(y[:, k:, :], x[:, :-k, :]) and torch.all(y[:, :k, :] == x.min())
    g = torch.Generator().manual_seed(0)
    z = ca.frequency_shift(x, 0.1, g)
    # time axis untouched: each column's strongest row moved by the same offset
    d = z[0].argmax(0) - x[0].argmax(0)
    assert len(torch.unique(d[(x[0].argmax(0) > 8) & (x[0].argmax(0) < 56)])) == 1


def test_frequency_disturbance_is_smooth_and_bounded():
    g = torch.Generator().manual_seed(1)
    rows = ca.disturbance_rows(64, 64, 0.05, g)
    assert rows.abs().max() <= round(0.05 * 64) and (rows.diff().abs() <= 1).all()


def test_mixup_blends_labels_with_the_images():
    x = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])
    xm, t = ca.mixup(x, torch.tensor([0, 1]), 2, alpha=0.4, g=torch.Generator().manual_seed(0))
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert torch.allclose(xm[:, 0, 0, 0], t[:, 1])  # pixel value = weight of the all-ones class
    with pytest.raises(UserError, match="classifier option"):
        Augment(mixup=0.2)


def test_data_augment_config_reaches_training_batches(dm_kwargs):
    dm = SpectrogramDataModule(**dm_kwargs, augment={"doppler_shift": 0.2, "time_shift": 0.5})
    assert dm.augment.enabled
    xb = next(iter(dm.train_dataloader()))["x"]
    assert xb.shape[1:] == (1, 32, 32)
    with pytest.raises(UserError, match="doppler_shift"):
        SpectrogramDataModule(**dm_kwargs, augment={"doppler_shift": 0.7})


# ------------------------------------------------------------------ hard preset


def test_hard_preset_is_subject_disjoint_and_keeps_each_subject(tmp_path):
    from latent_diffusion.data.simulator import MicroDopplerSource

    src = MicroDopplerSource(
        classes=CLASSES,
        n_per_class=8,
        val_per_class=3,
        test_per_class=3,
        image_size=32,
        workers=0,
        preset="hard",
        scene={"subjects": [4, 2, 2]},
    )
    subj = {s: src.split(s).subjects for s in ("train", "val", "test")}
    assert len(set(subj["train"])) == 4 and len(set(subj["val"])) == 2
    assert not (
        set(subj["train"]) & set(subj["val"])
        or set(subj["train"]) & set(subj["test"])
        or set(subj["val"]) & set(subj["test"])
    )
    # one person across activities: same height and proportions for the same subject id
    params = src.split("train").params
    by_id: dict = {}
    for q in params:
        by_id.setdefault(q["subject"], set()).add((q["height"], q["leg_scale"], q["arm_scale"]))
    assert all(len(v) == 1 for v in by_id.values())
    # the scene is wider than the easy preset's
    assert max(abs(q["aspect_deg"]) for q in params) > 45
    assert "scene" in src.fingerprint()
    easy = MicroDopplerSource(classes=CLASSES, n_per_class=2, image_size=32, workers=0)
    assert (
        "scene" not in easy.fingerprint() and getattr(easy.split("train"), "subjects", None) is None
    )
    with pytest.raises(UserError, match="data.preset"):
        MicroDopplerSource(preset="medium")


# ------------------------------------------------------------------ sifting


def test_sifting_drops_implausible_samples_and_counts_per_class(dm_kwargs):
    from latent_diffusion.metrics.classifier import train_classifier
    from latent_diffusion.metrics.sifting import sift
    from latent_diffusion.metrics.suite import stack_split

    dm = SpectrogramDataModule(**dm_kwargs)
    (tx, ty), (sx, sy) = stack_split(dm.dataset("train")), stack_split(dm.dataset("train"))
    noise = torch.rand(3, 1, 32, 32) * 2 - 1  # broadband noise: no human moves like that
    gen_x, gen_y = torch.cat([sx, noise]), np.concatenate([sy.numpy(), [0, 0, 1]])
    kp = {"v_max": 8.0, "dynamic_range_db": 45.0, "duration_s": 4.0}
    keep, rep = sift(gen_x, gen_y, tx, ty.numpy(), CLASSES, kp, model=None, margin=0.0)
    # real training images lie in their own class range by construction; the noise does not
    assert keep[: len(sy)].all() and not keep[len(sy) :].any()
    assert rep["per_class"]["walk"] == {
        "n": 12,
        "dropped_kinematics": 2,
        "dropped_confidence": 0,
        "kept": 10,
    }
    assert rep["per_class"]["fall"]["dropped_kinematics"] == 1
    # confidence: a real classifier; images labelled with the wrong class fall under the threshold
    model = train_classifier(
        tx, ty, 2, ClassifierConfig(width=4, steps=60, batch_size=20, time_shift=0.0)
    )
    swapped = 1 - sy.numpy()
    keep2, rep2 = sift(
        sx, swapped, tx, ty.numpy(), CLASSES, kp, model=model, kinematics=False, min_confidence=0.5
    )
    own = protocol.predict(model, sx) == sy.numpy()
    assert (
        ~keep2[own]
    ).all()  # every image the classifier gets right is dropped under the swapped label
    assert sum(r["dropped_confidence"] for r in rep2["per_class"].values()) == int((~keep2).sum())


# ------------------------------------------------------------------ study


def _study_cfg(tmp_path, **kw):
    from pathlib import Path

    base = OmegaConf.load(Path(__file__).parent.parent / "conf" / "study.yaml")
    base.pop("defaults")
    base.merge_with(
        {
            "study_dir": str(tmp_path / "study"),
            "fractions": [0.1, 1.0],
            "seeds": [0, 1, 2],
            "paths": {"cache_dir": str(tmp_path / "cache")},
            "run_name": "t",
            **kw,
        }
    )
    return base


def _fake_cell(acc_real, acc_synth):
    """A cell result in run_cell's format, numbers given (the expensive train / sample / evaluate is
    proved end to end by the documented smoke run, not here)."""

    def runner(cfg, f, s, folder):
        runner.calls.append((f, s))
        acc = {"0": {"runs": [acc_real(f, s)]}, "1": {"runs": [acc_synth(f, s)]}}
        return {
            "fraction": f,
            "seed": s,
            "generator_data": {"n": int(100 * f)},
            "augmentation": {"accuracy": acc, "leak": {"leaky": False}},
            "augmentation_sifted": None,
            "memorisation": {"pixel": {"ratio": 0.9, "frac_copies": 0.05}},
        }

    runner.calls = []
    return runner


def test_study_resumes_and_aggregates_paired_differences(tmp_path):
    from scipy import stats

    from latent_diffusion.study import run_study

    real = {0: 0.70, 1: 0.72, 2: 0.71}
    gain = {0: 0.05, 1: 0.03, 2: 0.04}
    runner = _fake_cell(lambda f, s: real[s] + f / 10, lambda f, s: real[s] + f / 10 + gain[s])
    cfg = _study_cfg(tmp_path)
    agg = run_study(cfg, runner)
    assert len(runner.calls) == 6
    d = agg["0.1"]["paired"]["1"]
    g = np.array([0.05, 0.03, 0.04])
    half = stats.t.ppf(0.975, 2) * g.std(ddof=1) / np.sqrt(3)
    assert d["mean"] == pytest.approx(0.04) and d["ci95"] == pytest.approx(
        [0.04 - half, 0.04 + half]
    )
    assert agg["0.1"]["arms"]["0"]["std"] == pytest.approx(np.std([0.71, 0.73, 0.72], ddof=1))
    table = (tmp_path / "study" / "table.md").read_text()
    assert (
        "+0.040 [" in table
        and "real only" in table
        and (tmp_path / "study" / "study.png").stat().st_size > 1000
    )
    # a rerun recomputes nothing; a new seed computes only its cells
    again = _fake_cell(lambda f, s: 0.5, lambda f, s: 0.5)
    run_study(cfg, again)
    assert again.calls == []
    run_study(_study_cfg(tmp_path, seeds=[0, 1, 2, 3]), again)
    assert sorted(again.calls) == [(0.1, 3), (1.0, 3)]


def test_study_refuses_a_folder_of_another_configuration(tmp_path):
    from latent_diffusion.study import run_study

    run_study(
        _study_cfg(tmp_path, fractions=[1.0], seeds=[0]),
        _fake_cell(lambda f, s: 0.5, lambda f, s: 0.6),
    )
    with pytest.raises(
        UserError, match=r"another configuration \(recipe.steps_per_image: 10 there, 20 now"
    ):
        run_study(
            _study_cfg(tmp_path, fractions=[1.0], seeds=[0], recipe={"steps_per_image": 20}),
            _fake_cell(lambda f, s: 0.5, lambda f, s: 0.6),
        )
    with pytest.raises(UserError, match=r"outside \(0, 1\]"):
        run_study(
            _study_cfg(tmp_path, fractions=[0.0]), _fake_cell(lambda f, s: 0.5, lambda f, s: 0.6)
        )


def test_small_data_recipe_scales_with_the_subset():
    from latent_diffusion.study import recipe_overrides

    r = OmegaConf.load(
        __import__("pathlib").Path(__file__).parent.parent / "conf" / "study.yaml"
    ).recipe
    small, big = recipe_overrides(r, 40), recipe_overrides(r, 1600)
    assert (
        "trainer.max_steps=400" in small and "trainer.max_steps=16000" in big
    )  # min_steps, 10 per image
    assert "model.dropout=0.1" in small and not any(o.startswith("model.dropout") for o in big)
    assert any(o.startswith("data.augment.time_shift") for o in small)
    assert "+callbacks.early_stopping.patience=4" in small
    # the VAE's budget scales too (2 steps per image, 300 to 1,500), at the batch the study was
    # measured with, whatever vae=f4's own batch size
    assert "vae.max_steps=300" in small and "vae.max_steps=1500" in big
    assert "vae.batch_size=16" in small and "vae.batch_size=16" in big


def _recording_steps(monkeypatch):
    """Stands in for the cell's subprocesses: records each command line and writes the file
    that marks its step finished, so run_cell's order, arguments and resume logic are what is
    tested (train, distill, sample and evaluate themselves have their own end-to-end tests)."""
    import latent_diffusion.study as study

    calls = []

    def fake_run(args, python, log_file):
        calls.append(args)
        kv = dict(a.split("=", 1) for a in args[1:] if "=" in a)
        if args[0] in ("latent_diffusion.train", "latent_diffusion.distill"):
            export = Path(kv["hydra.run.dir"]) / "export"
            export.mkdir(parents=True)
            subset = {"per_class": {"walk": 16, "run": 16}, "n": 32}
            (export / "export.json").write_text(json.dumps({"data_subset": subset}))
        elif args[0] == "latent_diffusion.sample":
            Path(kv["out_dir"]).mkdir(parents=True)
            (Path(kv["out_dir"]) / "metadata.json").write_text("{}")
        else:
            Path(kv["out_dir"]).mkdir(parents=True)
            acc = {"0": {"runs": [0.6]}, "1": {"runs": [0.62]}}
            aug = {"0.1": {"accuracy": acc, "leak": {"leaky": False}}}
            (Path(kv["out_dir"]) / "metrics.json").write_text(json.dumps({"augmentation": aug}))

    monkeypatch.setattr(study, "_run", fake_run)
    monkeypatch.setattr(study, "_subset_size", lambda *a: 32)
    return calls


def test_study_student_distils_each_generator_and_samples_from_it(tmp_path, monkeypatch):
    from latent_diffusion.study import run_cell

    calls = _recording_steps(monkeypatch)
    cfg = _study_cfg(tmp_path, student={"steps": 8, "max_steps": 600, "batch_size": 32})
    folder = tmp_path / "cell"
    result = run_cell(cfg, 0.1, 2, folder)
    steps = [c[0].split(".")[-1] for c in calls]
    assert steps == ["train", "distill", "sample", "evaluate"]
    distill, sample, evaluate = (dict(a.split("=", 1) for a in c[1:]) for c in calls[1:])
    # the student is distilled from this cell's generator, on its settings ...
    assert distill["run"] == str(folder / "train") and distill["steps"] == "[8]"
    assert distill["default_steps"] == "8" and distill["trainer.max_steps"] == "600"
    assert distill["seed"] == "2" and distill["ckpt_path"] == "last"
    # ... and draws the samples (4x 16 per class) that the classifiers are evaluated with
    student = str(folder / "student")
    assert sample["run"] == student and sample["sampler"] == "lcm" and sample["steps"] == "8"
    assert sample["n_per_class"] == "64" and sample["guidance"] == "3.0"
    assert evaluate["run"] == student
    assert result["sampler"] == {"run": "student", "sampler": "lcm", "steps": 8}
    # rerun: every step's output exists, nothing runs again
    calls.clear()
    run_cell(cfg, 0.1, 2, folder)
    assert calls == []
    # without a student the teacher samples with the study's sampler
    run_cell(_study_cfg(tmp_path), 0.1, 2, tmp_path / "plain")
    sample = dict(a.split("=", 1) for a in calls[1][1:])
    assert [c[0].split(".")[-1] for c in calls] == ["train", "sample", "evaluate"]
    assert sample["run"] == str(tmp_path / "plain" / "train") and sample["sampler"] == "dpmpp"


@pytest.mark.parametrize(
    "student, guidance, match",
    [
        ({"steps": 80, "max_steps": 600}, 3.0, r"student.steps=80: .* \[1, 50\]"),
        ({"steps": 0, "max_steps": 600}, 3.0, r"student.steps=0"),
        ({"steps": 8}, 3.0, r"student.max_steps is not set"),
        ({"steps": 8, "max_steps": 600}, 12.0, r"sample.guidance=12.0: .* \[1, 8\]"),
    ],
)
def test_study_student_settings_are_refused_before_the_first_cell(
    tmp_path, student, guidance, match
):
    from latent_diffusion.validation import preflight

    cfg = _study_cfg(tmp_path, student=student, sample={"guidance": guidance})
    with pytest.raises(UserError, match=match):
        preflight("study", cfg)
    assert not (tmp_path / "study").exists()  # nothing written, nothing trained


def test_study_with_a_student_is_another_configuration(tmp_path):
    from latent_diffusion.study import run_study

    run_study(
        _study_cfg(tmp_path, fractions=[1.0], seeds=[0]),
        _fake_cell(lambda f, s: 0.5, lambda f, s: 0.6),
    )
    with pytest.raises(UserError, match=r"student.steps: None there, 8 now"):
        run_study(
            _study_cfg(tmp_path, fractions=[1.0], seeds=[0], student={"steps": 8, "max_steps": 9}),
            _fake_cell(lambda f, s: 0.5, lambda f, s: 0.6),
        )
