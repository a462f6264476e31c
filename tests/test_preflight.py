"""Pre-flight validation (latent_diffusion/validation/): each bad input of the matrix in
docs/reliability.md ends in one UserError naming the key or file and the fix, before any
work. In-process on the composed configs of each entry point; one test runs every entry
point's CLI to show the check is wired in first (exit code 2, one `error:` line, nothing written).
"""

from __future__ import annotations

import logging
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from latent_diffusion.utils.errors import UserError
from latent_diffusion.validation import preflight

CONF = Path(__file__).resolve().parents[1] / "conf"


def _cfg(entry: str, tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=entry, overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.output_dir = str(tmp_path / "run")
    return cfg


def _refused(entry, tmp_path, *overrides, match):
    with pytest.raises(UserError, match=match):
        preflight(entry, _cfg(entry, tmp_path, *overrides))


def test_defaults_of_every_entry_point_pass(tmp_path):
    for entry, extra in [
        ("train", ()),
        ("train_vae", ()),
        ("simulate", ()),
        ("sample", ("run=x",)),
        ("evaluate", ("generated=x",)),
        ("bench", ()),
        ("train_classifier", ()),
        ("study", ("study_dir=s",)),
    ]:
        preflight(entry, _cfg(entry, tmp_path, *extra))


# ------------------------------------------------------------------ output folders
@pytest.mark.parametrize(
    "entry,key,extra",
    [
        ("train_vae", "out_dir", ()),
        ("simulate", "out_dir", ()),
        ("sample", "out_dir", ("run=x",)),
        ("evaluate", "out_dir", ("generated=x",)),
        ("bench", "out_dir", ()),
        ("train", "export_dir", ()),
    ],
)
def test_an_out_dir_that_is_a_file_is_named(tmp_path, entry, key, extra):
    f = tmp_path / "a_file"
    f.write_text("mine")
    _refused(
        entry, tmp_path, *extra, f"{key}={f}", match=rf"{key}=.*a_file is a file, not a folder"
    )
    _refused(
        entry,
        tmp_path,
        *extra,
        f"{key}={f}/sub",
        match=r"a_file is a file, so the folder cannot be created",
    )
    assert f.read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_out_dir_that_cannot_be_written_is_named(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    _refused("simulate", tmp_path, f"out_dir={locked}/data", match=r"locked is not writable")


def test_a_foreign_folder_is_not_overwritten(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("x")
    for entry, extra in [("train_vae", ()), ("evaluate", ("generated=x",)), ("bench", ())]:
        _refused(
            entry,
            tmp_path,
            *extra,
            f"out_dir={theirs}",
            match=r"not empty \(thesis.tex\).*not written by",
        )
    (theirs / "latent_stats.json").write_text("{}")  # an earlier VAE export: ours to replace
    preflight("train_vae", _cfg("train_vae", tmp_path, f"out_dir={theirs}"))


# ------------------------------------------------------------------ numbers
@pytest.mark.parametrize(
    "entry,override,match",
    [
        ("train", "data.batch_size=0", r"data.batch_size=0: must be an integer >= 1"),
        ("train", "data.n_per_class=-3", r"data.n_per_class=-3"),
        ("train", "data.num_workers=-1", r"data.num_workers=-1: must be an integer >= 0"),
        ("train", "trainer.max_steps=0", r"trainer.max_steps=0"),
        ("train", "optimizer.lr=nan", r"optimizer.lr=nan: must be a finite number > 0"),
        ("train", "ema_decay=1.0", r"ema_decay=1.0: must be a number in \[0, 1\)"),
        ("train", "trainer.val_check_interval=0", r"trainer.val_check_interval=0"),
        ("train", "data.radar.prf_hz=-5", r"data.radar.prf_hz=-5"),
        ("train", "data.batch_size=abc", r"data.batch_size='abc': must be an integer"),
        ("train_vae", "vae.module.num_threads=0", r"vae.module.num_threads=0"),
        ("train_vae", "vae.module.ema_decay=1.0", r"vae.module.ema_decay=1.0: must be a number in"),
        ("train_vae", "vae.module.gan_weight=-0.1", r"gan_weight=-0.1: must be a finite"),
        ("simulate", "workers=-1", r"workers=-1: must be an integer >= 0"),
        ("simulate", "n_per_class=0", r"n_per_class=0"),
        ("sample", "threads=0", r"threads=0"),
        ("sample", "guidance=inf", r"guidance=inf: must be a finite number"),
        ("sample", "guidance=nan", r"guidance=nan"),
        ("evaluate", "num_threads=-2", r"num_threads=-2"),
        (
            "evaluate",
            "augmentation.fractions=[0.5,0]",
            r"augmentation.fractions=\[0.5, 0\]: must be a number in \(0, 1\] each",
        ),
        ("bench", "threads=0", r"threads=0"),
        ("bench", "repeats=0", r"repeats=0"),
        ("train_classifier", "trainer.max_steps=0", r"trainer.max_steps=0"),
        ("train_classifier", "ema_decay=1.0", r"ema_decay=1.0: must be a number in \[0, 1\)"),
        ("train_classifier", "latent_noise=-1", r"latent_noise=-1"),
        ("study", "fractions=[0.1,1.5]", r"fractions=\[0.1, 1.5\]: each must be a number in"),
        ("study", "seeds=[0,0]", r"seeds=\[0, 0\]: an entry is listed twice"),
        ("study", "recipe.min_steps=0", r"recipe.min_steps=0"),
    ],
)
def test_numbers_out_of_range_name_the_key(tmp_path, entry, override, match):
    extra = {"sample": ("run=x",), "evaluate": ("generated=x",), "study": ("study_dir=s",)}.get(
        entry, ()
    )
    _refused(entry, tmp_path, *extra, override, match=match)


def test_extreme_guidance_is_said(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        preflight("sample", _cfg("sample", tmp_path, "run=x", "guidance=500"))
    assert "guidance=500 is far above the useful range" in caplog.text


# ------------------------------------------------------------------ sizes the VAE and UNet take
def test_sizes_the_vae_cannot_take_whichever_way_it_arrives(tmp_path):
    # trained first from the recipe (no vae.path): f8 = 3 halvings
    _refused(
        "train",
        tmp_path,
        "vae=f8",
        "data.image_size=36",
        match=r"data.image_size=36 is not divisible by 8, .*vae=f8.*use data.image_size=32 or 40",
    )
    _refused("train_vae", tmp_path, "data.image_size=66", match=r"not divisible by 4")
    # a folder given by vae.path: its config.json says how many down-samplings
    vae = tmp_path / "myvae"
    vae.mkdir()
    (vae / "config.json").write_text('{"block_out_channels": [32, 64, 128, 256]}')
    _refused(
        "train",
        tmp_path,
        "vae=pretrained",
        f"vae.path={vae}",
        "data.image_size=68",
        match=r"by 8, the down-sampling factor of the VAE at vae.path=.*myvae",
    )
    # a latent the UNet cannot halve: 72 / 4 = 18, model=small halves 4 times
    _refused("train", tmp_path, "data.image_size=72", match=r"18x18 latents.*model.channel_mult")
    _refused(
        "train", tmp_path, "data.image_size=0", match=r"data.image_size=0: must be an integer >= 8"
    )
    preflight("train", _cfg("train", tmp_path, "vae=none", "model=tiny", "data.image_size=32"))
    _refused("bench", tmp_path, "image_size=30", match=r"image_size=30 is not divisible by 4")


# ------------------------------------------------------------------ class lists and splits
@pytest.mark.parametrize(
    "entry,key",
    [
        ("train", "data.classes"),
        ("simulate", "classes"),
        ("sample", "classes"),
        ("evaluate", "real.classes"),
    ],
)
def test_a_class_listed_twice_is_refused(tmp_path, entry, key):
    extra = {"sample": ("run=x",), "evaluate": ("generated=x",), "study": ("study_dir=s",)}.get(
        entry, ()
    )
    _refused(
        entry,
        tmp_path,
        *extra,
        f"{key}=[walk,run,walk]",
        match=rf"{key}=.*walk listed more than once",
    )


def _folder(tmp_path: Path, counts: dict[str, int]) -> Path:
    root = tmp_path / "real"
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"{i}.png").write_bytes(b"")  # only listed, never read
    return root


def test_split_feasibility(tmp_path, caplog):
    root = _folder(tmp_path, {"walk": 20, "run": 2, "fall": 20})
    with caplog.at_level(logging.WARNING):
        preflight("train", _cfg("train", tmp_path, "data=image_folder", f"data.root={root}"))
    assert "run (2 files: none in val/test)" in caplog.text and "walk" not in caplog.text
    _refused(
        "train",
        tmp_path,
        "data=image_folder",
        f"data.root={root}",
        "data.val_fraction=0",
        match=r"val_fraction=0 and .*real has no val/ folder: the validation split would be empty",
    )
    _refused(
        "train",
        tmp_path,
        "data=image_folder",
        f"data.root={root}",
        "data.val_fraction=0.6",
        "data.test_fraction=0.5",
        match=r"leaves the training split empty",
    )
    small = _folder(tmp_path / "s", {"walk": 2, "run": 2})
    _refused(
        "train",
        tmp_path,
        "data=image_folder",
        f"data.root={small}",
        match=r"validation split would be empty: every class .* is too small",
    )
    _refused(
        "train",
        tmp_path,
        "data.val_per_class=0",
        match=r"val_per_class=0 leaves the validation split empty",
    )


# ------------------------------------------------------------------ wired into every CLI, first
@pytest.mark.slow
def test_every_cli_checks_before_any_work(tmp_path):
    """A bad input to each entry point: exit code 2, one `error:` line, no traceback, nothing
    written (the processes run side by side: a check that came after the work would time out)."""
    f = tmp_path / "a_file"
    f.write_text("mine")
    cases = {
        "train": ["data.image_size=72"],
        "train_vae": [f"out_dir={f}"],
        "simulate": [f"out_dir={f}"],
        "sample": ["run=nowhere", "guidance=inf"],
        "evaluate": ["generated=x", f"out_dir={f}"],
        "bench": ["threads=0"],
        "inspect": [f"out_dir={f}"],
        "train_classifier": ["trainer.max_steps=0"],
        "distill": ["run=nowhere", "target_decay=1.5"],
        "study": ["study_dir=s", "fractions=[0.1,2]"],
    }
    env = {**os.environ, "WANDB_MODE": "offline"}
    procs = {
        e: subprocess.Popen(
            [sys.executable, "-m", f"latent_diffusion.{e}", *o, f"paths.root_dir={tmp_path}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for e, o in cases.items()
    }
    for entry, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert proc.returncode == 2 and len(lines) == 1, (entry, err[-2000:])
        assert "Traceback" not in err + out, entry
    assert f.read_text() == "mine"
    assert not (tmp_path / ".cache").exists() and not (tmp_path / "data").exists()


# ------------------------------------------------------------------ silent changes said once
def test_what_the_run_changes_is_said_once(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        # the recipe's batch pinned, so the test is about the notice, not about the default
        for data_batch in (32, 4):
            cfg = _cfg("train_vae", tmp_path, "vae.batch_size=4", f"data.batch_size={data_batch}")
            preflight("train_vae", cfg)
    assert caplog.text.count("vae.batch_size=4 (its recipe), not data.batch_size=32") == 1
    assert "data.batch_size=4" not in caplog.text


# ------------------------------------------------------- command lines Hydra cannot compose
@pytest.mark.parametrize(
    "entry,override,said",
    [
        ("simulate", "n_per_clas=5", "there is no key 'n_per_clas'; did you mean n_per_class=5?"),
        ("train", "data.batch_sise=3", "did you mean data.batch_size=3?"),
        ("train", "data.radr.prf_hz=3", "did you mean data.radar?"),
        ("evaluate", "zzz=1", "the keys under the top level are: augmentation, cache_dir"),
        (
            "train",
            "model=smal",
            "model=smal: no such option for 'model'; did you mean model=small?",
        ),
        # an optional group used to skip an unknown name without a word and train the default
        ("train", "experiment=dem", "did you mean experiment=demo?"),
        ("train_classifier", "debug=fsat", "did you mean debug=fast?"),
        ("sample", "guidance=[1", "cannot read the override 'guidance=[1'"),
        ("inspect", "data.batch_size=1,2", "a comma on the command line is a sweep; add -m"),
    ],
)
def test_a_mistyped_command_line_is_one_line_naming_the_nearest_key(
    tmp_path, monkeypatch, capsys, entry, override, said
):
    """In-process, run as `python -m latent_diffusion.<entry>` runs it (runpy, as __main__),
    without HYDRA_FULL_ERROR: without our decorator Hydra prints several lines and exits 1."""
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # restored at teardown; "0" is unset to Hydra
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [entry, override])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(f"latent_diffusion.{entry}", run_name="__main__")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert said in lines[0]
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


def test_hydra_full_error_set_by_the_user_keeps_hydras_traceback(monkeypatch):
    from hydra.errors import ConfigCompositionException

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setattr(sys, "argv", ["simulate", "n_per_clas=5"])
    with pytest.raises(ConfigCompositionException, match="Could not override 'n_per_clas'"):
        runpy.run_module("latent_diffusion.simulate", run_name="__main__")
