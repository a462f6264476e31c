"""The guidance-distilled consistency student (diffusion/consistency.py, distill.py).

The maths on a toy Gaussian mixture whose guided teacher is exact (its v is computed in
closed form, so its guided DDIM sampler is the known reference); the app end to end on a
tiny teacher run in the shared work folder: distil, resume, export, `sample run=STUDENT`,
and the refusals between teacher-only and student-only paths.
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
from torch import nn

from latent_diffusion.utils.errors import UserError

CONF = Path(__file__).resolve().parents[1] / "conf"


# ------------------------------------------------------------------ the toy mixture
MU = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]], dtype=torch.float64)  # 3 classes
S = 0.3  # each class is N(mu_c, S^2 I) in 2-D, stored as (B, 2, 1, 1) latents


def _toy_diffusion():
    from latent_diffusion.diffusion import create_diffusion

    return create_diffusion(prediction="v", learn_sigma=False, loss="mse")


def _exact_teacher(d):
    """v(x_t, t, y) of the class Gaussian (y < 3) or of the equal mixture (y = 3, the null
    class): E[x0 | x_t] in closed form, then eps and v from it."""

    def teacher(x, t, y):
        x64 = x.double().flatten(1)  # (B, 2)
        acp = torch.as_tensor(d.schedule.alphas_cumprod)[t.cpu()].view(-1, 1)  # (B, 1)
        a, var = acp.sqrt(), acp * S**2 + 1 - acp
        mean = a[:, None] * MU[None]  # (B, 3, 2)
        resp = torch.softmax(-((x64[:, None] - mean) ** 2).sum(-1) / (2 * var), 1)
        own = torch.nn.functional.one_hot(y.clamp(max=2), 3).double()
        resp = torch.where((y == 3)[:, None], resp, own)
        x0_k = MU[None] + (a * S**2 / var)[:, None] * (x64[:, None] - mean)  # E[x0 | x_t, k]
        x0 = (resp[..., None] * x0_k).sum(1)
        eps = (x64 - a * x0) / (1 - acp).sqrt()
        return (a * eps - (1 - acp).sqrt() * x0).to(x.dtype).view(x.shape)

    return teacher


class _ToyStudent(nn.Module):
    """An MLP f(x, t, y, w) with Fourier features of t and w."""

    def __init__(self, width: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 + 32 + 4 + 32, width), nn.SiLU(),
            nn.Linear(width, width), nn.SiLU(),
            nn.Linear(width, width), nn.SiLU(),
            nn.Linear(width, 2),
        )  # fmt: skip

    @staticmethod
    def _fourier(v, scale):
        f = torch.exp(-math.log(10000) * torch.arange(16) / 16)
        a = v.float()[:, None] * scale * f[None]
        return torch.cat([a.sin(), a.cos()], 1)

    def forward(self, x, t, y, w):
        w = torch.as_tensor(w, dtype=torch.float32).expand(x.shape[0])
        h = torch.cat(
            [x.flatten(1).float(), self._fourier(t, 1.0),
             nn.functional.one_hot(y, 4).float(), self._fourier(w, 100.0)], 1,
        )  # fmt: skip
        return self.net(h).view(x.shape[0], 2, 1, 1)


@pytest.fixture(scope="module")
def toy():
    """(diffusion, exact teacher, distilled target network): 3,000 steps of batch 256 on LCM's
    50-point grid (about 25 s on one thread; fewer steps leave K = 1 visibly off at w = 4)."""
    from latent_diffusion.diffusion.consistency import consistency_distillation_loss, skipping_grid

    torch.manual_seed(0)
    d = _toy_diffusion()
    teacher = _exact_teacher(d)
    student, target = _ToyStudent(), _ToyStudent()
    target.load_state_dict(student.state_dict())
    target.requires_grad_(False)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < 2400 else 0.2)
    grid, g = skipping_grid(1000, 50), torch.Generator().manual_seed(0)
    for _ in range(3000):
        y = torch.randint(0, 3, (256,), generator=g)
        z0 = (MU[y] + S * torch.randn(256, 2, generator=g, dtype=torch.float64)).float()
        w = 1 + 4 * torch.rand(256, generator=g)  # w ~ U[1, 5]
        out = consistency_distillation_loss(
            d, student, target, teacher, z0.view(256, 2, 1, 1), y, w, grid, 3, generator=g
        )
        opt.zero_grad()
        out["loss"].mean().backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            torch._foreach_lerp_(
                list(target.parameters()), [p.detach() for p in student.parameters()], 0.05
            )
    return d, teacher, target


def _draw(d, fn, n, steps, sampler):
    from latent_diffusion.diffusion import generators_from_seeds, sample

    gens = generators_from_seeds(range(n))
    return sample(sampler, d, fn, (n, 2, 1, 1), steps=steps, generators=gens).view(n, 2)


@pytest.mark.parametrize("w", [1.0, 4.0])
def test_toy_student_in_one_step_lands_on_the_guided_teachers_ode_end(toy, w):
    """K = 1 from the same noise: within 0.1 of the exact guided teacher's DDIM-100 sample
    (median over 600 images; the classes are 2.4 to 3.5 apart; measured 0.06), class means
    within 0.12 (measured <= 0.08). w = 1 is the conditional teacher alone."""
    from latent_diffusion.diffusion import cfg_model_fn

    d, teacher, student = toy
    n, y = 600, torch.arange(600) % 3
    ref = _draw(d, cfg_model_fn(teacher, y, 3, w), n, 100, "ddim")
    got = _draw(d, lambda x, t: student(x, t, y, w), n, 1, "lcm")
    assert (got - ref).norm(dim=1).median() < 0.1
    for c in range(3):
        m = y == c
        assert (got[m].mean(0) - ref[m].mean(0)).norm() < 0.12, (c, got[m].mean(0), ref[m].mean(0))


def test_toy_student_follows_w_and_keeps_the_class_spread_in_few_steps(toy):
    """w moves the student's classes outward as it moves the teacher's (guidance is in the
    student, not lost: mean radius 2.03 -> 2.44, teacher 2.01 -> 2.49), and at w = 1 K = 2 and
    4 keep the conditional teacher's class means (within 0.12) and spread (std ratio in
    [0.75, 1.4]; measured 1.05 to 1.31)."""
    from latent_diffusion.diffusion import cfg_model_fn

    d, teacher, student = toy
    n, y = 600, torch.arange(600) % 3
    radius = {}
    for w in (1.0, 4.0):
        ref = _draw(d, cfg_model_fn(teacher, y, 3, w), n, 100, "ddim")
        got = _draw(d, lambda x, t, w=w: student(x, t, y, w), n, 1, "lcm")
        radius[w] = (got.norm(dim=1).mean(), ref.norm(dim=1).mean())
    assert radius[4.0][0] - radius[1.0][0] > 0.3
    assert abs(radius[4.0][0] - radius[4.0][1]) < 0.1
    ref = _draw(d, cfg_model_fn(teacher, y, 3, 1.0), n, 100, "ddim")
    for k in (2, 4):
        got = _draw(d, lambda x, t: student(x, t, y, 1.0), n, k, "lcm")
        for c in range(3):
            m = y == c
            assert (got[m].mean(0) - ref[m].mean(0)).norm() < 0.12
            ratio = got[m].std(0) / ref[m].std(0)
            assert ((ratio > 0.75) & (ratio < 1.4)).all(), (k, c, ratio)


# ------------------------------------------------------------------ the pieces
@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_inference_timesteps_are_diffusers_lcm_schedulers(k):
    """The K grid points are the ones diffusers' LCMScheduler samples at (50 origin steps)."""
    from diffusers import LCMScheduler

    from latent_diffusion.diffusion.consistency import inference_timesteps, skipping_grid

    sched = LCMScheduler(num_train_timesteps=1000)
    sched.set_timesteps(k, original_inference_steps=50)
    assert list(inference_timesteps(skipping_grid(1000, 50), k)) == sched.timesteps.tolist()


def test_boundary_condition_and_grid():
    from latent_diffusion.diffusion.consistency import (
        boundary_coefficients,
        consistency_output,
        skipping_grid,
    )

    d = _toy_diffusion()
    x = torch.randn(3, 2, 1, 1, dtype=torch.float64)
    t0 = torch.zeros(3, dtype=torch.long)
    assert torch.equal(consistency_output(d, torch.randn(3, 2, 1, 1), x, t0), x)  # f(x, 0) = x
    c_skip, _ = boundary_coefficients(torch.tensor([19]))
    assert float(c_skip) < 1e-4  # at every grid point f is the x0 prediction
    assert list(skipping_grid(1000, 50)[:3]) == [19, 39, 59] and skipping_grid(1000, 50)[-1] == 999


def test_student_starts_as_the_conditional_teacher():
    """The guidance embedding starts at zero: the student's output at any w is the teacher's
    conditional output, and only the embedding's weights are new."""
    from latent_diffusion.distill import build_student
    from latent_diffusion.models import create_model

    torch.manual_seed(0)
    teacher = create_model("tiny", in_channels=4, num_classes=3, sample_size=16, learn_sigma=True)
    for p in teacher.parameters():
        p.data.normal_(0, 0.05)
    teacher.eval()
    student, config = build_student(teacher, dropout=0.0)
    student.eval()
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([10, 700]), torch.tensor([0, 2])
    with torch.no_grad():
        want = teacher(x, t, y)
        for w in (1.0, 7.5):
            assert torch.equal(student(x, t, y, w=w), want)
    assert config["guidance_embed_dim"] == 32 and config["p_uncond"] == 0.0
    with pytest.raises(TypeError, match="needs w"):
        student(x, t, y)


# ------------------------------------------------------------------ the app
def _compose(name, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


@pytest.fixture(scope="module")
def teacher_run(workdir):
    """The tiny 4-step denoiser run test_train_classifier also uses (trained once)."""
    from latent_diffusion.train import train

    den = workdir / "outputs" / "train" / "clf_denoiser"
    if not (den / "export" / "export.json").is_file():
        train(
            _compose(
                "train", "model=tiny", "debug=fast", "logger=csv", "callbacks.sample_grid=null",
                f"paths.output_dir={den}", f"paths.root_dir={workdir}",
            )
        )  # fmt: skip
    return den


def _distill(workdir, teacher, out, *overrides):
    from latent_diffusion.distill import distill

    return distill(
        _compose(
            "distill", f"run={teacher}", "debug=fast", f"paths.output_dir={out}",
            f"paths.root_dir={workdir}", "steps=[4,1]", *overrides,
        )
    )  # fmt: skip


@pytest.fixture(scope="module")
def student_run(workdir, teacher_run):
    out = workdir / "outputs" / "distill" / "student"
    _distill(workdir, teacher_run, out)
    return out


def test_distill_exports_a_student_that_sample_runs_unchanged(student_run, teacher_run, tmp_path):
    from latent_diffusion.sampling import sample_run

    meta = json.loads((student_run / "export" / "export.json").read_text())
    rec = meta["distilled"]
    assert rec["sampler"] == "lcm" and rec["steps"] == [4, 1] and rec["default_steps"] == 4
    assert rec["guidance_range"] == [1.0, 8.0] and rec["distill_steps"] == 4
    assert meta["model"]["guidance_embed_dim"] == 32 and meta["global_step"] == 4
    assert (student_run / "student_grid.png").is_file()
    teacher_meta = json.loads((teacher_run / "export" / "export.json").read_text())
    assert meta["vae"] == teacher_meta["vae"] and meta["class_names"] == teacher_meta["class_names"]

    def cfg(run, out, *o):
        return _compose("sample", f"run={run}", f"out_dir={out}", "progress=false", *o)

    out = sample_run(cfg(student_run, tmp_path / "s", "n_per_class=2", "guidance=5"))
    got = json.loads((out / "metadata.json").read_text())
    assert (got["sampler"], got["steps"], got["guidance"]) == ("lcm", 4, 5.0)
    assert got["distilled"]["teacher"]["export"] == str((teacher_run / "export").resolve())
    with np.load(out / "samples.npz") as z:
        images = z["arr_0"]
    assert images.shape[0] == 2 * len(meta["class_names"]) and images.std() > 0
    # guidance is the student's input: another w gives other images from the same noise
    out2 = sample_run(cfg(student_run, tmp_path / "s2", "n_per_class=2", "guidance=1", "steps=1"))
    with np.load(out2 / "samples.npz") as z:
        assert not np.array_equal(z["arr_0"], images)


def test_student_and_teacher_paths_refuse_each_other(student_run, teacher_run, workdir, tmp_path):
    from latent_diffusion.pipeline import LatentDiffusionPipeline
    from latent_diffusion.sampling import sample_run
    from latent_diffusion.train_classifier import train_classifier

    def cfg(run, *o):
        return _compose("sample", f"run={run}", f"out_dir={tmp_path / 'x'}", "progress=false", *o)

    with pytest.raises(UserError, match="distilled consistency student.*only with sampler=lcm"):
        sample_run(cfg(student_run, "sampler=dpmpp"))
    with pytest.raises(UserError, match="sampler=lcm samples a distilled.*distil it first"):
        sample_run(cfg(teacher_run, "sampler=lcm"))
    with pytest.raises(UserError, match=r"guidance=12: .*distilled for guidance in \[1, 8\]"):
        sample_run(cfg(student_run, "guidance=12"))
    with pytest.raises(UserError, match="samples in 1 to 50 steps"):
        sample_run(cfg(student_run, "steps=64"))
    with pytest.raises(UserError, match="already a distilled student"):
        _distill(workdir, student_run, tmp_path / "again")
    with pytest.raises(UserError, match="classifier guidance needs the teacher"):
        LatentDiffusionPipeline.from_pretrained(student_run).load_classifier(tmp_path)
    with pytest.raises(UserError, match="is a distilled consistency student"):
        train_classifier(
            _compose(
                "train_classifier", f"denoiser_run={student_run}", "debug=fast",
                f"paths.output_dir={tmp_path / 'c'}", f"paths.root_dir={workdir}",
            )
        )  # fmt: skip


def test_distill_bad_inputs(teacher_run, workdir, tmp_path):
    """No null class trained, a transformer teacher, an unknown K, a bad range: one message
    each, before any data or weights are read."""
    with pytest.raises(UserError, match=r"K=3\.5 is not a step count.*\[1, 50\]"):
        _distill(workdir, teacher_run, tmp_path / "a", "steps=[8,3.5]")
    with pytest.raises(UserError, match="K=0 is not a step count"):
        _distill(workdir, teacher_run, tmp_path / "a", "steps=[0]")
    with pytest.raises(UserError, match="default_steps=4 is not one of"):
        _distill(workdir, teacher_run, tmp_path / "a", "steps=[8,2]")
    with pytest.raises(UserError, match=r"guidance_range=\[5, 2\]"):
        _distill(workdir, teacher_run, tmp_path / "a", "guidance_range=[5,2]")
    for key, value, match in (
        ("p_uncond", 0.0, "without classifier-free guidance.*model.p_uncond=0.1"),
        ("arch", "dit", "distill supports the ADM UNet"),
    ):
        bad = tmp_path / f"bad_{key}"
        shutil.copytree(teacher_run / "export", bad)
        meta = json.loads((bad / "export.json").read_text())
        meta["model"][key] = value
        (bad / "export.json").write_text(json.dumps(meta))
        with pytest.raises(UserError, match=match):
            _distill(workdir, bad, tmp_path / "b")


def test_resume_mid_distillation_continues_the_schedule(teacher_run, workdir, tmp_path):
    """2 steps, stop, resume to 4 == 4 steps at once: the student, the target network, the
    EMA and the draws continue where they stopped (bit for bit)."""
    from safetensors.torch import load_file

    whole, split = tmp_path / "whole", tmp_path / "split"
    _distill(workdir, teacher_run, whole, "trainer.max_steps=4")
    _distill(workdir, teacher_run, split, "trainer.max_steps=2")
    assert json.loads((split / "export" / "export.json").read_text())["global_step"] == 2
    _distill(workdir, teacher_run, split, "trainer.max_steps=4", "ckpt_path=last")
    name = "export/denoiser/diffusion_pytorch_model.safetensors"
    a, b = load_file(whole / name), load_file(split / name)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    teacher = load_file(teacher_run / name)
    assert not torch.equal(a["conv_in.weight"], teacher["conv_in.weight"])  # it did train
