"""The bad-input matrix (docs/reliability.md): rows not already covered by the test files
of their components. Each asserts the message names the thing and the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from latent_diffusion.utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

# A tiny export built with the real config files (conf/model/tiny.yaml,
# conf/diffusion/default.yaml):
# 2 classes, 4x8x8 latents, no VAE. Run in-process and, for the full-disk test, in a child.
TINY_EXPORT = textwrap.dedent("""
    import functools, torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from latent_diffusion.lit.export import export_run
    from latent_diffusion.lit.module import LatentDiffusion

    def tiny_export(root, export_dir):
        torch.manual_seed(0)
        cfg = OmegaConf.create({"data": {"image_size": 8},
                                "model": OmegaConf.load(f"{root}/conf/model/tiny.yaml"),
                                "diffusion": OmegaConf.load(f"{root}/conf/diffusion/default.yaml")})
        diffusion = instantiate(cfg.diffusion)
        denoiser = instantiate(cfg.model, in_channels=4, sample_size=8, num_classes=2,
                               learn_sigma=diffusion.learn_sigma)
        module = LatentDiffusion(denoiser, diffusion, functools.partial(torch.optim.AdamW),
                                 ["walk", "fall"], (4, 8, 8), vae=None)
        return export_run(module, cfg, export_dir)
""")


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    ns: dict = {}
    exec(TINY_EXPORT, ns)  # the same code the full-disk child runs
    return ns["tiny_export"](ROOT, tmp_path_factory.mktemp("exp") / "run" / "export")


# ------------------------------------------------------------------ exports
def test_export_loads_when_consistent(tiny_export):
    from latent_diffusion.lit.export import load_export

    exp = load_export(tiny_export, load_vae=False)
    assert exp.class_names == ["walk", "fall"] and exp.latent_shape == (4, 8, 8)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        ({"latent_shape": [4, 16, 16]}, "model.sample_size 8 vs latent_shape [4, 16, 16]"),
        ({"latent_shape": [3, 8, 8]}, "model.in_channels 4 vs latent_shape [3, 8, 8]"),
        (
            {"class_names": ["walk", "fall", "box"]},
            "model.num_classes 2 vs 3 class_names ['walk', 'fall', 'box']",
        ),
    ],
)
def test_mismatched_export_is_refused_with_the_difference(tiny_export, tmp_path, edit, needle):
    import shutil

    from latent_diffusion.lit.export import load_export

    bad = tmp_path / "export"
    shutil.copytree(tiny_export, bad)
    meta = json.loads((bad / "export.json").read_text())
    (bad / "export.json").write_text(json.dumps({**meta, **edit}))
    with pytest.raises(UserError) as err:
        load_export(bad, load_vae=False)
    assert f"the export at {bad} is inconsistent" in str(err.value)
    assert needle in str(err.value) and "re-export the run" in str(err.value)


def test_export_whose_weights_do_not_match_its_config_is_refused(tiny_export, tmp_path):
    import shutil

    from latent_diffusion.lit.export import load_export

    bad = tmp_path / "export"
    shutil.copytree(tiny_export, bad)
    meta = json.loads((bad / "export.json").read_text())
    meta["model"]["num_res_blocks"] = 2  # a deeper net than the weights were saved from
    (bad / "export.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="does not match the model config.*changed by hand"):
        load_export(bad, load_vae=False)


# ------------------------------------------------------------------ a full disk
@pytest.mark.slow
def test_full_disk_on_export_keeps_the_old_export_and_says_so(tiny_export, tmp_path):
    """RLIMIT_FSIZE makes every write past 64 KB fail with EFBIG, as a full disk fails with
    ENOSPC (a real full file system needs root to mount). The 3 MB denoiser cannot be written."""
    import shutil

    export_dir = tmp_path / "run" / "export"
    shutil.copytree(tiny_export, export_dir)
    before = (export_dir / "export.json").read_bytes()
    script = TINY_EXPORT + textwrap.dedent(f"""
        import resource, signal, sys
        from latent_diffusion.utils.errors import UserError
        from latent_diffusion.utils.io import atomic_write_bytes
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        for what in ("file", "export"):
            try:
                if what == "file":
                    atomic_write_bytes({str(tmp_path / "big.bin")!r}, b"x" * 200_000)
                else:
                    tiny_export({str(ROOT)!r}, {str(export_dir)!r})
                print(what, "WROTE")
            except UserError as err:
                print(what, "USERERROR", err)
    """)
    (tmp_path / "big.bin").write_bytes(b"old")
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    for what, target in (("file", tmp_path / "big.bin"), ("export", export_dir)):
        assert lines[what].startswith(f"USERERROR no space left writing {target}"), lines[what]
        assert "nothing was replaced" in lines[what] and "another disk" in lines[what]
    assert (tmp_path / "big.bin").read_bytes() == b"old"
    assert (export_dir / "export.json").read_bytes() == before  # the previous export is whole
    leftovers = [p.name for p in tmp_path.rglob(".*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


# ------------------------------------------------------------------ train inputs
def test_ckpt_path_to_a_missing_file_names_it(tmp_path):
    from latent_diffusion.train import resolve_ckpt_path

    with pytest.raises(
        UserError, match=rf"ckpt_path={tmp_path / 'x.ckpt'}: no such checkpoint file.*'last'"
    ):
        resolve_ckpt_path(str(tmp_path / "x.ckpt"), tmp_path)
    assert resolve_ckpt_path("last", tmp_path) is None  # nothing to resume yet: a fresh start


def test_ckpt_path_last_takes_the_newest_complete_checkpoint(tmp_path):
    from latent_diffusion.train import resolve_ckpt_path

    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(b"a")
    hpc = tmp_path / "hpc_ckpt_1.ckpt"  # what Lightning writes on SLURM's requeue signal
    hpc.write_bytes(b"b")
    os.utime(last, (1, 1))
    assert resolve_ckpt_path("last", tmp_path) == str(hpc)
    os.utime(hpc, (0, 0))
    assert resolve_ckpt_path("last", tmp_path) == str(last)


def test_nan_in_a_data_file_is_refused_by_name(tmp_path):
    from latent_diffusion.data.readers import load_spectrogram

    a = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    a[3, 4] = np.nan
    np.save(tmp_path / "walk_0.npy", a)
    with pytest.raises(
        UserError, match=rf"{tmp_path / 'walk_0.npy'} contains NaN.*fix or remove the file"
    ):
        load_spectrogram(tmp_path / "walk_0.npy")


def test_vae_decode_under_bf16_autocast_is_float32_and_finite():
    """bf16 overflow guard: decode runs in float32 with autocast off, whatever surrounds it."""
    from diffusers import AutoencoderKL

    from latent_diffusion.vae.interface import FrozenVAE
    from latent_diffusion.vae.stats import fallback_stats

    torch.manual_seed(0)
    model = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 8),
        latent_channels=4,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    vae = FrozenVAE(
        model, fallback_stats(0.01, 0.0, 4, "h"), 1, "h"
    )  # scale 0.01: latents x100 inside
    z = torch.randn(2, 4, 8, 8, dtype=torch.bfloat16) * 30
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = vae.decode(z)
    # The same latents decoded with autocast off: a decode that ran in bf16 (8 mantissa
    # bits) differs from it by ~1e-2; finite and in range alone would hold either way.
    reference = vae.decode(z.float())
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, reference, rtol=0, atol=1e-6)
    assert (x.abs() < 1).float().mean() > 0.1  # not all clamped: the comparison means something


def test_a_vae_replaced_after_training_is_refused(tmp_path):
    from diffusers import AutoencoderKL

    from latent_diffusion.vae.resolve import vae_from_reference
    from latent_diffusion.vae.stats import vae_weights_hash

    model = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        block_out_channels=(8,),
        latent_channels=4,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
    )
    model.save_pretrained(tmp_path / "vae")
    found = vae_weights_hash(tmp_path / "vae")
    ref = {
        "path": str(tmp_path / "vae"),
        "weights_hash": "0123456789abcdef",
        "data_channels": 1,
        "latent_stats": None,
    }
    with pytest.raises(
        UserError,
        match=rf"has weights hash {found}, but the model was trained with "
        r"0123456789abcdef: it is a different VAE. Point vae_path at the original",
    ):
        vae_from_reference(ref)
    with pytest.raises(
        UserError, match=rf"not at {tmp_path / 'gone'}; copy it there or pass vae_path"
    ):
        vae_from_reference({**ref, "path": str(tmp_path / "gone")})
