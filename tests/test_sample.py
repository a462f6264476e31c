"""`python -m latent_diffusion.sample` on a freshly trained tiny run.

One session fixture trains `model=tiny debug=fast` (VAE included) in its own
folder; the tests then sample from its export, mostly in-process through the
composed conf/sample.yaml (the CLI's exit code and messages are checked with
real subprocesses). The samplers' accuracy against an exact analytic denoiser
is tests/test_samplers.py's job, not this file's.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli import run_cli
from PIL import Image

from latent_diffusion.utils.errors import UserError

CONF = Path(__file__).resolve().parents[1] / "conf"


# ------------------------------------------------------------------ no model needed
def test_image_seeds_are_distinct_stable_and_independent_of_the_rest():
    from latent_diffusion.pipeline import image_seed
    from latent_diffusion.sampling import plan, shard

    seeds = {image_seed(0, c, k) for c in range(8) for k in range(500)}
    assert len(seeds) == 8 * 500  # no two images share a noise stream
    assert image_seed(0, 3, 7) == image_seed(0, 3, 7)
    assert image_seed(0, 3, 7) != image_seed(1, 3, 7)
    assert all(0 <= s < 2**63 for s in seeds)  # a valid torch.Generator seed
    # the documented rule (metadata.json "image_seed"), recomputed here: not Python's hash(),
    # which changes per process
    blob = json.dumps(["sample", 0, 3, 7], sort_keys=True).encode()
    assert image_seed(0, 3, 7) == int(hashlib.sha256(blob).hexdigest()[:16], 16) & (2**63 - 1)
    items = plan([3, 0], 2)
    assert items == [(3, 0), (3, 1), (0, 0), (0, 1)]
    parts = [shard(7, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(7)) and [len(p) for p in parts] == [3, 2, 2]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["sampler=euler"], "sampler='euler' is not known"),
        (["steps=0"], "steps=0: must be an integer in [1, 1000]"),
        (["steps=1001"], "steps=1001: must be an integer in [1, 1000]"),
        (["guidance=-0.5"], "guidance=-0.5: must be >= 0"),
        (["n_per_class=0"], "n_per_class=0: must be an integer >= 1"),
        (["batch_size=0"], "batch_size=0: must be an integer >= 1"),
        (["classes=[walk,swim]"], "unknown class ['swim']; the model knows ['walk', 'run'"),
        (["sampler=dpmpp", "eta=0.5"], "only sampler=ddim takes eta"),
        (["guidance=strong"], "guidance='strong', eta=0.0: both must be numbers"),
        (["steps=ddim50"], "steps='ddim50': must be an integer"),
    ],
)
def test_bad_values_name_the_problem_before_any_work(overrides, needle, tmp_path):
    from latent_diffusion.sampling import sample_run

    # export.json alone, no weights: every value is checked before anything is loaded
    names = ["walk", "run", "jump", "fall", "sit_down", "stand_up", "pick_up", "box"]
    (tmp_path / "run" / "export").mkdir(parents=True)
    (tmp_path / "run" / "export" / "export.json").write_text(
        json.dumps({"class_names": names, "diffusion": {"timesteps": 1000}, "model": {}})
    )
    with pytest.raises(UserError) as err:
        sample_run(_cfg(tmp_path / "run", tmp_path / "out", *overrides))
    assert needle in str(err.value)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def sample_src(tmp_path_factory) -> Path:
    """A trained tiny run (4 steps: noise-like samples, real plumbing). Its own folder:
    tests/test_train.py asserts that *its* first run trains the VAE."""
    work = tmp_path_factory.mktemp("sample_work")
    run_cli(
        "train",
        "model=tiny",
        "debug=fast",
        "logger=csv",
        "run_name=sample_src",
        "callbacks.sample_grid=null",
        cwd=work,
    )
    return work / "outputs" / "train" / "sample_src"


def _cfg(run, out_dir, *overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            config_name="sample",
            overrides=[f"run={run}", f"out_dir={out_dir}", "progress=false", *overrides],
        )


def _sample(run, out_dir, *overrides) -> dict:
    from latent_diffusion.sampling import sample_run

    out = sample_run(_cfg(run, out_dir, *overrides))
    with np.load(out / "samples.npz") as z:
        return {
            "images": z["arr_0"],
            "labels": z["arr_1"],
            "meta": json.loads((out / "metadata.json").read_text()),
        }


def _same_up_to_rounding(a: np.ndarray, b: np.ndarray) -> None:
    """The noise is per image, but batched float32 kernels round differently at different
    batch sizes (~1e-8 in the denoiser's output): a rare pixel may land one grey level apart."""
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())


BASE = ("sampler=ddim", "steps=4", "guidance=2.5", "seed=7")


@pytest.fixture(scope="module")
def batch8(sample_src, tmp_path_factory):
    out = tmp_path_factory.mktemp("b8") / "samples"
    return out, _sample(
        sample_src, out, *BASE, "classes=[walk,fall]", "n_per_class=3", "batch_size=8"
    )


# ------------------------------------------------------------------ the outputs
@pytest.mark.slow
def test_outputs_npz_pngs_grid_and_metadata(sample_src, batch8):
    from latent_diffusion.lit.export import load_export

    out, r = batch8
    imgs, labels, meta = r["images"], r["labels"], r["meta"]
    assert imgs.dtype == np.uint8 and imgs.shape == (6, 64, 64, 1)
    names = load_export(sample_src, load_vae=False).class_names
    # arr_1 holds the model's class indices (guided-diffusion's format), row-major by class
    assert labels.tolist() == [names.index("walk")] * 3 + [names.index("fall")] * 3
    assert meta["class_names"] == names and meta["classes"] == ["walk", "fall"]
    assert meta["counts"] == {"walk": 3, "fall": 3} and meta["n_images"] == 6
    assert meta["global_step"] == 4 and meta["export"] == str((sample_src / "export").resolve())
    assert (meta["sampler"], meta["steps"], meta["guidance"], meta["eta"], meta["seed"]) == (
        "ddim",
        4,
        2.5,
        0.0,
        7,
    )
    tm = meta["timings_s"]
    assert meta["images_per_s"] > 0 and meta["images_per_s_end_to_end"] > 0
    # seconds per stage: the pipeline's clocks and the writer thread's
    assert tm["denoise"] > 0 and tm["decode"] > 0 and tm["write"] > 0
    assert tm["denoise"] + tm["decode"] <= tm["sample"] + 1e-3 <= tm["end_to_end"] + 2e-3
    assert tm["end_to_end"] <= tm["total"]
    assert meta["images_per_s"] == pytest.approx(6 / (tm["denoise"] + tm["decode"]), rel=0.01)
    # this CPU has no bf16 arithmetic: auto chose fp32 and says why
    assert meta["inference"]["precision"] in ("fp32", "bf16")
    assert meta["inference"]["channels_last"] is False and meta["inference"]["compile"] is False
    assert sorted(p.name for p in out.iterdir()) == [
        "fall",
        "grid.png",
        "metadata.json",
        "samples.npz",
        "walk",
    ]
    # each PNG is the npz image, 8-bit grey, named <class>_<index:05d>
    for i, f in enumerate(meta["files"]):
        png = np.asarray(Image.open(out / f["file"]))
        assert Image.open(out / f["file"]).mode == "L"
        np.testing.assert_array_equal(png, imgs[i, ..., 0])
    assert meta["files"][4]["file"] == "fall/fall_00001.png"
    grid = Image.open(out / "grid.png")
    assert grid.height == 2 * (64 + 2) + 2  # one row per class
    assert grid.width == 64 + 3 * (64 + 2) + 2  # min(8, n_per_class) columns after the label
    assert len(np.unique(imgs)) > 20  # decoded images, not a constant


@pytest.mark.slow
def test_same_images_whatever_the_batch_size_or_class_subset(sample_src, batch8, tmp_path):
    _, b8 = batch8
    b3 = _sample(
        sample_src, tmp_path / "b3", *BASE, "classes=[walk,fall]", "n_per_class=3", "batch_size=3"
    )
    np.testing.assert_array_equal(b3["labels"], b8["labels"])
    _same_up_to_rounding(b3["images"], b8["images"])
    # fall alone, fewer per class: its images are fall's in the two-class run
    fall = _sample(
        sample_src, tmp_path / "fall", *BASE, "classes=[fall]", "n_per_class=2", "batch_size=2"
    )
    _same_up_to_rounding(fall["images"], b8["images"][3:5])
    # and another seed gives other images
    other = _sample(
        sample_src, tmp_path / "s8", *BASE[:3], "seed=8", "classes=[walk,fall]", "n_per_class=3"
    )
    assert (other["images"].astype(int) - b8["images"]).__abs__().mean() > 1


@pytest.mark.slow
def test_guidance_1_is_the_conditional_model_and_0_the_unconditional(sample_src, tmp_path):
    from latent_diffusion.diffusion import generators_from_seeds, sample
    from latent_diffusion.lit.export import load_export
    from latent_diffusion.pipeline import image_seed
    from latent_diffusion.sampling import generate
    from latent_diffusion.utils.pixels import to_uint8

    exp = load_export(sample_src)
    run = exp.class_names.index("run")

    def by_hand(labels, variance_labels=None):  # the sampler on the plain model, no guidance code
        gens = generators_from_seeds([image_seed(3, run, k) for k in range(2)])

        def model(x, t):
            out = exp.denoiser(x, t, labels)
            if variance_labels is None:
                return out
            C = x.shape[
                1
            ]  # prediction channels from `labels`, learned variance from `variance_labels`
            return torch.cat([out[:, :C], exp.denoiser(x, t, variance_labels)[:, C:]], dim=1)

        z = sample("ddpm", exp.diffusion, model, (2, *exp.latent_shape), steps=5, generators=gens)
        return to_uint8(exp.vae.decode(z))

    y = torch.tensor([run, run])
    w1 = _sample(
        sample_src,
        tmp_path / "w1",
        "sampler=ddpm",
        "steps=5",
        "seed=3",
        "classes=[run]",
        "n_per_class=2",
        "guidance=1",
    )
    np.testing.assert_array_equal(w1["images"], by_hand(y))  # the whole command, bit for bit
    # After 4 training steps the zero-initialised output layer hardly sees the label; give the
    # network a random output layer and a strong label embedding so that the branches differ.
    unet = exp.denoiser.unet
    torch.nn.init.normal_(
        unet.conv_out.weight, std=0.05, generator=torch.Generator().manual_seed(0)
    )
    unet.class_embedding.weight.mul_(20)
    items = [(run, 0), (run, 1)]
    g0 = generate(exp, items, "ddpm", 5, 0.0, seed=3, batch_size=2)
    g1 = generate(exp, items, "ddpm", 5, 1.0, seed=3, batch_size=2)
    np.testing.assert_array_equal(g1, by_hand(y))
    # w = 0: pred = pred_uncond, the null class's prediction, with the learned variance of the
    # conditional branch (as guided-diffusion/DiT), up to the batched forward's rounding
    _same_up_to_rounding(
        g0, by_hand(torch.full_like(y, exp.denoiser.null_class), variance_labels=y)
    )
    assert np.abs(g0.astype(int) - g1).mean() > 2  # ... and the label does matter


@pytest.mark.slow
def test_a_pixel_space_export_writes_the_clamped_sampler_output(sample_src):
    # vae = None (a vae=none run): the sampler's output IS the image, clamped to [-1, 1]
    from latent_diffusion.diffusion import generators_from_seeds, sample
    from latent_diffusion.lit.export import load_export
    from latent_diffusion.pipeline import image_seed
    from latent_diffusion.sampling import generate

    exp = load_export(sample_src, load_vae=False)
    got = generate(exp, [(2, 0), (2, 1)], "dpmpp", 3, 1.0, seed=0, batch_size=2)
    gens = generators_from_seeds([image_seed(0, 2, k) for k in range(2)])
    z = sample(
        "dpmpp",
        exp.diffusion,
        lambda x, t: exp.denoiser(x, t, torch.tensor([2, 2])),
        (2, *exp.latent_shape),
        steps=3,
        generators=gens,
    )
    assert got.shape == (2, 16, 16, 4)
    np.testing.assert_array_equal(
        got, ((z.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    )


@pytest.mark.slow
def test_image_folder_reads_the_output_back_with_its_classes(batch8, tmp_path):
    from latent_diffusion.data import build_source

    out, r = batch8
    src = build_source(
        "image_folder",
        root=out,
        image_size=64,
        cache_dir=tmp_path / "cache",
        val_fraction=0.0,
        test_fraction=0.0,
    )
    assert src.class_names == ["fall", "walk"]  # folders, sorted; the npz and json are ignored
    xs = {}
    for x, y in src.split("train"):
        xs.setdefault(src.class_names[y], []).append(x)
    assert {k: len(v) for k, v in xs.items()} == {"fall": 3, "walk": 3}
    # the pixels come back as the package's [-1, 1] convention of the written uint8
    walk = torch.stack(xs["walk"])  # (3, 1, 64, 64), file order
    want = torch.from_numpy(r["images"][:3]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert walk.shape == (3, 1, 64, 64)
    torch.testing.assert_close(walk.sort(0).values, want.sort(0).values, atol=1e-3, rtol=0)


# ------------------------------------------------------------------ folders and the command line
@pytest.mark.slow
def test_default_out_dir_and_a_rerun_replaces_its_own_folder(sample_src, tmp_path):
    from latent_diffusion.sampling import sample_run

    args = ("sampler=dpmpp", "steps=3", "guidance=2", "classes=[jump]", "n_per_class=2")
    out = sample_run(_cfg(sample_src / "export", "null", *args))
    assert out == sample_src / "samples" / "dpmpp-3-w2-seed0"  # <run dir>/samples/..., documented
    first = np.load(out / "samples.npz")["arr_0"]
    (out / "jump" / "jump_00000.png").unlink()  # a rerun rebuilds the folder `sample` wrote
    assert sample_run(_cfg(sample_src, "null", *args)) == out
    np.testing.assert_array_equal(np.load(out / "samples.npz")["arr_0"], first)
    assert (out / "jump" / "jump_00000.png").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    with pytest.raises(UserError, match="no export found"):
        sample_run(_cfg(tmp_path, "null"))


@pytest.mark.slow
def test_cli_refuses_a_foreign_folder_with_exit_code_2(sample_src, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    proc = run_cli(
        "sample",
        f"run={sample_src}",
        f"out_dir={foreign}",
        "n_per_class=1",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and "was not written by sample" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (foreign / "notes.txt").read_text() == "keep me"
    # (each bad value's message: test_bad_values_name_the_problem_before_any_work, in-process)


@pytest.mark.slow
def test_two_ranks_under_torchrun_write_the_same_images_as_one_process(sample_src, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not installed next to this python")
    # batch_size=1: every image is computed alone, so the bits cannot depend on the split
    args = (
        "sampler=dpmpp",
        "steps=3",
        "guidance=2",
        "n_per_class=2",
        "classes=[jump,box,walk]",
        "batch_size=1",
        "progress=false",
    )
    one = _sample(sample_src, tmp_path / "one", *args)
    proc = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "latent_diffusion.sample",
            f"run={sample_src}",
            *args,
            f"out_dir={tmp_path / 'two'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with np.load(tmp_path / "two" / "samples.npz") as z:
        np.testing.assert_array_equal(z["arr_0"], one["images"])
        np.testing.assert_array_equal(z["arr_1"], one["labels"])
    meta = json.loads((tmp_path / "two" / "metadata.json").read_text())
    assert meta["world_size"] == 2 and meta["counts"] == {"jump": 2, "box": 2, "walk": 2}


# ------------------------------------------------------------------ the pipeline
PLAIN_SESSION = """
import json, sys
import numpy as np
from latent_diffusion.pipeline import LatentDiffusionPipeline
pipe = LatentDiffusionPipeline.from_pretrained(sys.argv[1])
out = pipe(["walk"] * 3 + ["fall"] * 3, num_inference_steps=4, guidance_scale=2.5, sampler="ddim",
           seed=7, output_type="pil", return_latents=True)
np.save(sys.argv[2], np.stack([np.asarray(im) for im in out.images]))
print(json.dumps({"mods": sorted(m for m in ("lightning", "hydra") if m in sys.modules),
                  "modes": sorted({im.mode for im in out.images}),
                  "latents": list(out.latents.shape)}))
"""


@pytest.mark.slow
def test_an_export_loads_as_a_pipeline_in_a_plain_session_and_gives_the_sample_images(
    sample_src, batch8, tmp_path
):
    """from_pretrained(run/export) in a fresh `python -c` (no Hydra, no Lightning imported)
    makes the very images `sample` wrote for the same (seed, class, index)."""
    _, r = batch8
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            PLAIN_SESSION,
            str(sample_src / "export"),
            str(tmp_path / "imgs.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info == {"mods": [], "modes": ["L"], "latents": [6, 4, 16, 16]}
    # another process may pick other float32 kernels: a rare pixel one grey level apart
    _same_up_to_rounding(np.load(tmp_path / "imgs.npy"), r["images"][..., 0])


@pytest.mark.slow
def test_training_grid_quality_callback_and_sample_give_identical_images(sample_src, tmp_path):
    """The same (seed, class, index) is the same image in the grid PNG of SampleGrid, in
    what DomainMetrics scores, and in `sample`'s output (the callbacks sample the EMA
    weights of a LatentDiffusion module; `sample` the export of those weights)."""
    from types import SimpleNamespace

    from latent_diffusion.lit.callbacks import SampleGrid
    from latent_diffusion.lit.module import LatentDiffusion
    from latent_diffusion.metrics.callback import DomainMetrics
    from latent_diffusion.pipeline import LatentDiffusionPipeline

    pipe = LatentDiffusionPipeline.from_pretrained(sample_src)
    module = LatentDiffusion(
        pipe.denoiser.requires_grad_(True).train(),
        pipe.diffusion,
        optimizer=torch.optim.AdamW,
        class_names=pipe.class_names,
        latent_shape=pipe.latent_shape,
        vae=pipe.vae,
    )  # EMA starts as these weights
    torch.nn.init.normal_(
        module.denoiser.unet.conv_in.weight
    )  # training weights != EMA: the grid uses the EMA
    settings = {"sampler": "dpmpp", "steps": 3, "guidance": 2.0, "seed": 5}
    n = 2
    grid_cb = SampleGrid(every_n_steps=1, n_per_class=n, out_dir=str(tmp_path / "grid"), **settings)
    grid_cb._fire(SimpleNamespace(is_global_zero=True, loggers=[]), module, step=1)
    assert module.denoiser.training  # mode restored after sampling
    grid = np.asarray(Image.open(tmp_path / "grid" / "step_0000001.png"))
    h = w = 64
    cells = np.stack(
        [
            grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 66 + k * (w + 2) : 66 + k * (w + 2) + w]
            for r in range(len(pipe.class_names))
            for k in range(n)
        ]
    )  # class_grid's layout
    scored = DomainMetrics(every_n_steps=1, n_per_class=n, **settings).sample_images(module)[..., 0]
    s = _sample(
        sample_src,
        tmp_path / "s",
        "sampler=dpmpp",
        "steps=3",
        "guidance=2",
        "seed=5",
        f"n_per_class={n}",
    )
    np.testing.assert_array_equal(cells, s["images"][..., 0])
    np.testing.assert_array_equal(scored, s["images"][..., 0])
    assert len(np.unique(scored)) > 20
    # a bad sampler setting of either callback is refused at fit start, before any training step
    with pytest.raises(UserError, match="sampler='euler' is not known"):
        SampleGrid(sampler="euler").on_fit_start(None, module)
    with pytest.raises(UserError, match="steps=5000: must be an integer in"):
        DomainMetrics(every_n_steps=0, steps=5000).on_fit_start(None, module)


@pytest.mark.slow
def test_pipeline_arguments_names_generators_and_output_types(sample_src):
    from latent_diffusion.pipeline import LatentDiffusionPipeline, image_seed

    pipe = LatentDiffusionPipeline.from_pretrained(sample_src)
    kw = {"num_inference_steps": 2, "sampler": "dpmpp", "guidance_scale": 1.0}
    by_name = pipe(["jump", "jump"], seed=1, output_type="uint8", **kw).images
    by_index = pipe([2, 2], seed=1, indices=[0, 1], output_type="uint8", **kw).images
    np.testing.assert_array_equal(by_name, by_index)  # names and indices (jump = 2) are one thing
    gens = [torch.Generator().manual_seed(image_seed(1, 2, k)) for k in range(2)]
    np.testing.assert_array_equal(
        pipe([2, 2], generator=gens, output_type="uint8", **kw).images, by_name
    )
    pt = pipe([2], seed=1, output_type="pt", **kw).images
    assert pt.shape == (1, 1, 64, 64) and 0 <= float(pt.min()) and float(pt.max()) <= 1
    assert pipe([2], seed=1, output_type="latent", **kw).images.shape == (1, 4, 16, 16)
    # evaluate's VAE-ceiling reference for run= is the pipeline's VAE (hash-checked)
    from omegaconf import OmegaConf

    from latent_diffusion.metrics.suite import load_vae

    assert (
        load_vae(OmegaConf.create({"run": str(sample_src), "vae_path": None})).weights_hash
        == pipe.vae.weights_hash
    )
    for bad, needle in (
        (dict(class_labels=["swim"]), "class 'swim' is unknown"),
        (dict(class_labels=[8]), "class index 8 is out of range"),
        (dict(class_labels=[0], output_type="jpeg"), "output_type='jpeg'"),
    ):
        with pytest.raises(UserError, match=needle):
            pipe(**{**kw, **bad})


def test_sample_defaults_are_the_pipelines():
    """`sample` with no sampler / guidance override samples as pipe(...) with no arguments does."""
    import inspect

    from latent_diffusion.pipeline import DEFAULT_GUIDANCE, LatentDiffusionPipeline

    cfg = _cfg("r", "o")
    assert (cfg.sampler, cfg.guidance, cfg.steps) == (None, DEFAULT_GUIDANCE, None)
    params = inspect.signature(LatentDiffusionPipeline.__call__).parameters
    assert params["sampler"].default is None and params["num_inference_steps"].default is None


def test_no_sampler_means_the_exports_own():
    """sampler=null: dpmpp for a trained run, lcm for a distilled student."""
    from latent_diffusion.pipeline import DEFAULT_SAMPLER, sampler_for

    assert sampler_for(None) == DEFAULT_SAMPLER == "dpmpp"
    assert sampler_for(None, {"default_steps": 4}) == "lcm"
    assert sampler_for("ddim") == "ddim"


# ------------------------------------------------------------------ inference switches
@pytest.mark.parametrize(
    "flags, asked, chosen, note",
    [
        ((), "auto", "fp32", "no AVX512-BF16 / AMX"),
        ((), "bf16", "fp32", "emulated bf16 is slower than fp32"),
        (("amx_bf16",), "auto", "bf16", "amx_bf16"),
        (("avx512_bf16",), "bf16", "bf16", None),
        (("amx_bf16",), "fp32", "fp32", None),
    ],
)
def test_precision_follows_the_cpus_bf16_units(monkeypatch, flags, asked, chosen, note):
    from latent_diffusion import inference

    monkeypatch.setattr(inference, "cpu_bf16_flags", lambda: flags)
    got, why = inference.resolve_precision(asked, torch.device("cpu"))
    assert got == chosen
    assert (why is None) if note is None else (note in why)
    with pytest.raises(UserError, match="precision='fp16': use one of auto, fp32, bf16"):
        inference.resolve_precision("fp16", torch.device("cpu"))


@pytest.mark.slow
def test_inference_switches_keep_the_images(sample_src, monkeypatch):
    """channels_last changes the memory layout only; bf16 autocast (forced on as if the CPU
    had AMX) really runs the denoiser in bf16 and moves the images by its rounding only. The
    pipeline's outputs are ordinary tensors although sampling ran in inference mode."""
    from latent_diffusion import inference
    from latent_diffusion.pipeline import LatentDiffusionPipeline

    kw = {"num_inference_steps": 3, "sampler": "dpmpp", "guidance_scale": 2.0, "seed": 4}
    labels = ["walk", "fall", "box"]
    base = LatentDiffusionPipeline.from_pretrained(sample_src)
    ref = base(labels, output_type="pt", **kw)
    assert not ref.images.is_inference()
    ref.images.mul_(2)  # an in-place update, refused on an inference tensor
    assert ref.timings["denoise"] > 0 and ref.timings["decode"] > 0
    ref = base(labels, output_type="uint8", **kw).images.astype(int)

    nhwc = LatentDiffusionPipeline.from_pretrained(sample_src)
    applied = nhwc.optimize_for_inference(precision="fp32", channels_last=True)
    assert applied["channels_last"] and nhwc.denoiser.unet.conv_in.weight.is_contiguous(
        memory_format=torch.channels_last
    )
    _same_up_to_rounding(nhwc(labels, output_type="uint8", **kw).images, ref.astype(np.uint8))

    monkeypatch.setattr(inference, "cpu_bf16_flags", lambda: ("amx_bf16",))
    bf16 = LatentDiffusionPipeline.from_pretrained(sample_src)
    assert bf16.optimize_for_inference()["precision"] == "bf16"
    dtypes = []
    bf16.denoiser.unet.conv_out.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    got = bf16(labels, output_type="uint8", **kw).images.astype(int)
    assert set(dtypes) == {torch.bfloat16}
    diff = np.abs(got - ref)
    assert 0 < diff.mean() < 2.0, diff.mean()  # bf16 rounding, not other images


def test_a_failing_writer_leaves_no_folder(monkeypatch, tmp_path):
    """A PNG the writer thread cannot write fails the run in the caller, and neither the
    output folder nor its temporary folder is left behind."""
    from latent_diffusion import sample_writer

    def broken(img):
        raise OSError("disk quota exceeded")

    monkeypatch.setattr(sample_writer, "png_bytes", broken)
    images = np.zeros((2, 8, 8, 1), np.uint8)
    with pytest.raises(OSError, match="disk quota"):
        with sample_writer.SampleWriter(tmp_path / "out", ["walk", "run"], [0, 1]) as w:
            w.add(images, [(0, 0), (1, 0)])
            w.finish({"seed": 0}, 0)
    assert list(tmp_path.iterdir()) == []


def test_the_writer_thread_writes_while_the_caller_goes_on(monkeypatch, tmp_path):
    """add() returns while its PNGs are still being written, on the writer thread (so the
    next batch can sample meanwhile); finish() waits for them and the folder is complete."""
    import threading

    from latent_diffusion import sample_writer

    release, threads = threading.Event(), []
    real = sample_writer.png_bytes

    def slow(img):
        threads.append(threading.current_thread().name)
        assert release.wait(10)  # held until the caller has gone on
        return real(img)

    monkeypatch.setattr(sample_writer, "png_bytes", slow)
    images = np.zeros((2, 8, 8, 1), np.uint8)
    with sample_writer.SampleWriter(tmp_path / "out", ["walk", "run"], [0, 1]) as w:
        w.add(images, [(0, 0), (1, 0)])  # would block here if written in the caller
        assert not (w.tmp / "walk" / "walk_00000.png").exists()
        release.set()
        meta = w.finish({"seed": 0}, 0)
    assert set(threads) == {t for t in threads if t.startswith("sample-writer")} and threads
    assert sorted(f["file"] for f in meta["files"]) == ["run/run_00000.png", "walk/walk_00000.png"]
    assert (tmp_path / "out" / "walk" / "walk_00000.png").is_file()
