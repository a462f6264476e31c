"""The noisy latent classifier: it learns, `train_classifier` exports it, `sample` guides with it.

One module fixture trains a tiny denoiser (debug=fast) and then a tiny classifier on that
run (denoiser_run=...) in the shared work folder, in-process; sampling goes through the
composed conf/sample.yaml. The guidance maths are tests/test_classifier_guidance.py's job.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from latent_diffusion.utils.errors import UserError

CONF = Path(__file__).resolve().parents[1] / "conf"


def _compose(name, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def test_the_classifier_learns_class_and_noise_level():
    """A tiny classifier separates two latent classes within 30 steps at small t, and its
    timestep input matters (the same x gives other logits at another t)."""
    from latent_diffusion.diffusion import create_diffusion
    from latent_diffusion.lit.classifier_module import timestep_probs
    from latent_diffusion.models.classifier import CLASSIFIERS, build_classifier

    torch.manual_seed(0)
    d = create_diffusion()
    clf = build_classifier(
        in_channels=4, num_classes=2, sample_size=8, **{**CLASSIFIERS["tiny"], "dropout": 0.0}
    )
    opt = torch.optim.AdamW(clf.parameters(), lr=1e-3)
    probs = timestep_probs(d.num_timesteps, 2.0)  # weighted toward small t, as the option does
    means = torch.zeros(2, 4, 8, 8)
    means[1, :, :4] = 1.0  # class 1: upper half of the latent raised (a Doppler band)
    for _ in range(30):
        y = torch.randint(0, 2, (32,))
        z0 = means[y] + 0.5 * torch.randn(32, 4, 8, 8)
        t = torch.multinomial(probs, 32, replacement=True)
        loss = torch.nn.functional.cross_entropy(clf(d.q_sample(z0, t).float(), t), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    clf.eval()
    y = torch.arange(200) % 2
    z0 = means[y] + 0.5 * torch.randn(200, 4, 8, 8)
    t = torch.full((200,), 50)
    with torch.no_grad():
        x_t = d.q_sample(z0, t).float()
        acc = (clf(x_t, t).argmax(-1) == y).float().mean().item()
        moved = (clf(x_t, t) - clf(x_t, torch.full_like(t, 950))).abs().max().item()
    assert acc > 0.9, acc
    assert moved > 1e-3
    assert probs[0] > 2 * probs[500] > 0  # small t weighted up, every t still drawn


@pytest.fixture(scope="module")
def runs(workdir):
    """(denoiser run dir, classifier run dir), both tiny and 4 steps: real plumbing, no quality."""
    from latent_diffusion.train import train
    from latent_diffusion.train_classifier import train_classifier

    den = workdir / "outputs" / "train" / "clf_denoiser"
    cls = workdir / "outputs" / "train_classifier" / "clf_tiny"
    paths = [f"paths.root_dir={workdir}"]
    if not (den / "export" / "export.json").is_file():
        train(
            _compose(
                "train",
                "model=tiny",
                "debug=fast",
                "logger=csv",
                "callbacks.sample_grid=null",
                f"paths.output_dir={den}",
                *paths,
            )
        )
    metrics = train_classifier(
        _compose(
            "train_classifier",
            "classifier_model=tiny",
            "debug=fast",
            f"denoiser_run={den}",
            f"paths.output_dir={cls}",
            *paths,
        )
    )
    return den, cls, metrics


def test_train_classifier_exports_what_sample_needs(runs):
    from latent_diffusion.models.classifier_io import differences, load_classifier

    den, cls, metrics = runs
    meta = json.loads((cls / "classifier" / "classifier.json").read_text())
    export = json.loads((den / "export" / "export.json").read_text())
    assert differences(meta, export) == []  # same classes, latent shape, VAE + stats, schedule
    buckets = [k for k in meta["validation"] if k.startswith("val/acc_t")]
    assert buckets == ["val/acc_t0-249", "val/acc_t250-499", "val/acc_t500-749", "val/acc_t750-999"]
    assert all(0 <= meta["validation"][k] <= 1 for k in buckets) and math.isfinite(
        metrics["val/loss"]
    )
    assert meta["global_step"] == 4 and (cls / "checkpoints" / "last.ckpt").is_file()
    model, _ = load_classifier(cls)
    logits = model(torch.randn(2, *meta["latent_shape"]), torch.tensor([3, 900]))
    assert logits.shape == (2, len(meta["class_names"])) and torch.isfinite(logits).all()
    assert not any(p.requires_grad for p in model.parameters())


def _sample(den, out, *overrides):
    from latent_diffusion.sampling import sample_run

    out = sample_run(
        _compose(
            "sample",
            f"run={den}",
            f"out_dir={out}",
            "progress=false",
            "sampler=ddim",
            "steps=3",
            "n_per_class=1",
            "classes=[walk,fall]",
            "seed=4",
            *overrides,
        )
    )
    with np.load(out / "samples.npz") as z:
        return z["arr_0"], json.loads((out / "metadata.json").read_text())


def test_sample_guides_with_the_classifier_and_scale_zero_changes_nothing(runs, tmp_path):
    den, cls, _ = runs
    plain, _ = _sample(den, tmp_path / "plain")
    zero, _ = _sample(den, tmp_path / "zero", f"classifier={cls}", "classifier_scale=0")
    guided, meta = _sample(den, tmp_path / "guided", f"classifier={cls}", "classifier_scale=50")
    assert np.array_equal(plain, zero)
    assert not np.array_equal(plain, guided)
    assert meta["classifier_scale"] == 50 and meta["classifier"].endswith("classifier")


def test_a_classifier_for_another_model_is_refused_with_each_difference(runs, tmp_path):
    den, cls, _ = runs
    other = tmp_path / "other"
    shutil.copytree(cls / "classifier", other)
    meta = json.loads((other / "classifier.json").read_text())
    meta["class_names"] = meta["class_names"][::-1]
    meta["latent_shape"] = [4, 32, 32]
    meta["vae"]["weights_hash"] = "0" * 16
    meta["diffusion"]["schedule"] = "cosine"
    (other / "classifier.json").write_text(json.dumps(meta))
    with pytest.raises(UserError) as err:
        _sample(den, tmp_path / "s", f"classifier={other}")
    msg = str(err.value)
    for needle in (
        "classes",
        "latent shape [4, 32, 32]",
        "VAE weights 0000",
        "diffusion.schedule 'cosine'",
    ):
        assert needle in msg, (needle, msg)
    assert not (tmp_path / "s").exists()  # refused before any sampling


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (("classifier_scale=-1",), "needs classifier=PATH"),
        (("classifier={cls}", "classifier_scale=-1"), "classifier_scale=-1"),
        (("classifier={cls}", "classifier_scale=nan"), "classifier_scale=nan"),
        (("classifier={cls}", "classifier_scale=inf"), "classifier_scale=inf"),
        (("classifier=/nonexistent",), "no classifier.json"),
    ],
)
def test_bad_classifier_arguments_name_the_fix(runs, tmp_path, overrides, needle):
    den, cls, _ = runs
    with pytest.raises(UserError, match=needle):
        _sample(den, tmp_path / "s", *(o.format(cls=cls) for o in overrides))
