"""Raw radar recordings (data=raw_radar): recordings built with the project's own radar model
come out where physics puts them.

- slow-time I/Q of a simulated walker: the spectrogram is the simulator's own image, and its
  torso line and gait cadence are the walker's;
- an FMCW cube of a point target at a known range and velocity beside a stronger static
  reflector: the automatic range bins hold the target, its Doppler line sits at its
  velocity, MTI removes the reflector's zero-Doppler line;
- the Glasgow text .dat layout reads to the same spectrogram as the same cube in .npz;
- bad files name the file and the key that fixes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from latent_diffusion.data import raw_radar as rr
from latent_diffusion.data.radar import C0
from latent_diffusion.data.simulator import (
    RadarConfig,
    sample_seed,
    simulate_one,
    simulate_recording,
)
from latent_diffusion.metrics.kinematics import kinematic_stats, velocity_axis
from latent_diffusion.utils.errors import UserError

FC, B, TC, NS = 5.8e9, 4e8, 1e-3, 128  # the Glasgow set's Ancortek settings
LAM = C0 / FC


def fmcw_cube(r0: float, v: float, seconds: float, clutter=((2.0, 10.0),), rng=None):
    """(chirps, samples) beat signal of a point target starting at r0 m, radial velocity v
    (m/s, + approaching), static reflectors at (range m, power dB over the target) and noise.
    Beat phase of a scatterer at R: 2 pi (2 R slope / c) t_fast - 4 pi R / lambda."""
    rng = rng or np.random.default_rng(0)
    nc = int(round(seconds / TC))
    tf = np.arange(NS) / (NS / TC)  # fast time within a chirp
    r = r0 - v * np.arange(nc) * TC  # (chirps,)

    def tone(rr_):
        rr_ = np.broadcast_to(np.asarray(rr_, float), (nc,))[:, None]
        return np.exp(1j * (2 * np.pi * (B / TC) * 2 * rr_ / C0 * tf - 4 * np.pi * rr_ / LAM))

    cube = tone(r)
    for r_c, db in clutter:
        cube = cube + 10 ** (db / 20) * tone(r_c)
    return cube + 0.05 * (rng.standard_normal(cube.shape) + 1j * rng.standard_normal(cube.shape))


def doppler_row_velocity(img: np.ndarray, v_max: float, skip_clutter: float = 0.3) -> float:
    """Median over columns of the velocity of the brightest row outside the zero-Doppler band."""
    v = velocity_axis(img.shape[0], v_max)
    masked = np.where(np.abs(v)[:, None] > skip_clutter, img, -1.0)
    return float(np.median(v[masked.argmax(0)]))


def matlab_dat(path: Path, header, samples) -> Path:
    """Write a .dat as the Glasgow set's files are: 4 header lines, one complex sample per line
    in MATLAB's 'a+bi' form."""
    lines = [f"{h:g}" for h in header] + [f"{z.real:.9g}{z.imag:+.9g}i" for z in samples]
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------ slow-time I/Q
def test_walker_iq_gives_the_simulators_image_and_its_torso_velocity(tmp_path):
    seed = sample_seed(0, "train", "walk", 3)
    radar = RadarConfig()
    s, p = simulate_recording("walk", seed, radar)
    np.savez(tmp_path / "walk.npz", iq=s, prf_hz=radar.prf_hz, carrier_hz=radar.carrier_hz)
    imgs, info = rr.read_raw(tmp_path / "walk.npz", rr.RawRadar.make({}), 64)
    assert imgs.shape == (1, 64, 64) and info["kind"] == "iq" and info["padded_s"] == 0
    expect, p2 = simulate_one("walk", seed, 64, radar)
    assert p2["torso_radial_mps"] == p["torso_radial_mps"]
    np.testing.assert_allclose(imgs[0], expect, atol=1e-6)  # the same echo, the same STFT
    st = kinematic_stats(imgs * 2 - 1, radar.v_max, radar.dynamic_range_db, radar.duration_s)
    assert abs(st["torso"][0] - p["torso_radial_mps"]) < 0.35, (st["torso"], p)
    steps_hz = 2 / p["cycle_s"]  # two steps per gait cycle
    assert abs(st["cadence"][0] / steps_hz - 1) < 0.15, (st["cadence"], steps_hz)


def test_a_long_recording_gives_several_windows_a_short_one_is_padded_and_said(tmp_path):
    prf, v = 1000.0, 2.0
    t = np.arange(int(9.2 * prf)) / prf
    s = np.exp(-4j * np.pi * (5.0 - v * t) / LAM)
    raw = rr.RawRadar.make({"prf_hz": prf, "carrier_hz": FC, "hop_s": 2.0})
    imgs, info = rr.spectrograms(s, prf, FC, raw, 64, 45.0)
    assert info["windows"] == len(imgs) == 3  # 9.2 s: windows of 4.2 s at 0, 2, 4 s
    for img in imgs:
        assert abs(doppler_row_velocity(img, 8.0) - v) <= 0.25  # one row
    short, info = rr.spectrograms(s[:2000], prf, FC, raw, 64, 45.0)
    assert len(short) == 1 and info["padded_s"] == pytest.approx(2.2)
    assert info["seconds_per_column"] == 4.0 / 64 and info["velocity_per_row_mps"] == 0.25


# ------------------------------------------------------------------ FMCW cubes
@pytest.mark.parametrize("v", [1.5, -1.0])
def test_fmcw_cube_puts_the_target_at_its_range_and_velocity(tmp_path, v):
    """A walker-speed target crossing ~15 range bins, a 10 dB stronger static reflector at 2 m
    (outside its path: must not be chosen) and a weaker one on its path (a zero-Doppler line
    in the chosen bins, which MTI removes)."""
    r0 = 9.0 if v > 0 else 4.0
    path = r0 - v * np.array([0.0, 4.2])  # where the target goes
    cube = fmcw_cube(r0, v, 4.2, clutter=((2.0, 10.0), (path.mean(), -6.0)))
    np.savez(tmp_path / "cube.npz", cube=cube, chirp_s=TC, carrier_hz=FC, bandwidth_hz=B)
    imgs, info = rr.read_raw(tmp_path / "cube.npz", rr.RawRadar.make({}), 64)
    res = C0 / (2 * B)  # 0.375 m per bin
    lo_m, hi_m = info["range_m"]
    assert lo_m <= path.min() + res and hi_m >= path.max() - res, (info, path)
    assert lo_m > 2.0 + res  # the strong static reflector is not chosen
    assert abs(doppler_row_velocity(imgs[0], 8.0) - v) <= 0.25
    zero = np.abs(velocity_axis(64, 8.0)) < 0.2
    mti, _ = rr.read_raw(tmp_path / "cube.npz", rr.RawRadar.make({"mti_hz": 3.75}), 64)
    assert imgs[0][zero].mean() > 0.5  # the reflector on the path: a zero-Doppler line
    assert mti[0][zero].mean() < imgs[0][zero].mean() - 0.2  # MTI takes it out
    assert abs(doppler_row_velocity(mti[0], 8.0) - v) <= 0.25


def test_range_bins_given_are_used_and_checked(tmp_path):
    cube = fmcw_cube(4.0, -1.0, 4.2)
    np.savez(tmp_path / "cube.npz", cube=cube, chirp_s=TC, carrier_hz=FC, bandwidth_hz=B)
    _, info = rr.read_raw(tmp_path / "cube.npz", rr.RawRadar.make({"range_bins": [2, 7]}), 64)
    assert info["range_bins"] == [2, 7]
    with pytest.raises(UserError, match=r"range_bins=\[2, 70\]: the recording has 64 range bins"):
        rr.read_raw(tmp_path / "cube.npz", rr.RawRadar.make({"range_bins": [2, 70]}), 64)


def test_glasgow_dat_reads_as_the_same_cube_does(tmp_path):
    cube = fmcw_cube(8.0, 1.2, 4.2)
    dat = matlab_dat(tmp_path / "01walk.dat", [FC, TC * 1000, NS, B], cube.reshape(-1))
    np.savez(tmp_path / "same.npz", cube=cube, chirp_s=TC, carrier_hz=FC, bandwidth_hz=B)
    a, info = rr.read_raw(dat, rr.RawRadar.make({}), 64)
    b, _ = rr.read_raw(tmp_path / "same.npz", rr.RawRadar.make({}), 64)
    assert info["kind"] == "fmcw" and info["prf_hz"] == pytest.approx(1000.0)
    np.testing.assert_allclose(a, b, atol=1e-4)  # text round trip at 9 significant digits
    from scipy.io import savemat  # the same cube as a MATLAB file, parameters beside it

    savemat(tmp_path / "same.mat", {"cube": cube, "chirp_s": TC, "carrier_hz": FC})
    m, _ = rr.read_raw(tmp_path / "same.mat", rr.RawRadar.make({}), 64)
    np.testing.assert_allclose(m, b, atol=1e-6)
    assert abs(doppler_row_velocity(a[0], 8.0) - 1.2) <= 0.25


# ------------------------------------------------------------------ bad files
def test_bad_raw_files_name_the_file_and_the_fix(tmp_path):
    raw = rr.RawRadar.make({})
    np.save(tmp_path / "iq.npy", np.ones(5000, np.complex64))
    with pytest.raises(
        UserError,
        match=r"iq.npy: iq recording without .*set data.raw.prf_hz and data.raw.carrier_hz",
    ):
        rr.read_raw(tmp_path / "iq.npy", raw, 64)
    np.savez(
        tmp_path / "cube.npz", cube=np.ones((100, 256), np.complex64), chirp_s=TC, carrier_hz=FC
    )
    with pytest.raises(
        UserError, match=r"cube.npz: the cube is \(100, 256\).*samples_per_chirp=128"
    ):
        rr.read_raw(tmp_path / "cube.npz", rr.RawRadar.make({"samples_per_chirp": 128}), 64)
    bad_header = matlab_dat(tmp_path / "bad.dat", [FC, TC * 1000, NS, B], np.ones(NS * 4))
    text = bad_header.read_text().splitlines()
    text[2] = "samples=128"
    bad_header.write_text("\n".join(text))
    with pytest.raises(UserError, match=r"bad.dat: malformed header line 3 'samples=128'"):
        rr.read_raw(bad_header, raw, 64)
    cut = matlab_dat(tmp_path / "cut.dat", [FC, TC * 1000, NS, B], np.ones(NS * 4 + 5))
    with pytest.raises(
        UserError, match=r"cut.dat: 517 samples is not a whole number of chirps of 128"
    ):
        rr.read_raw(cut, raw, 64)
    np.savez(tmp_path / "fast.npz", iq=np.ones(5000, np.complex64), prf_hz=200.0, carrier_hz=FC)
    with pytest.raises(UserError, match=r"v_max=8.0 m/s exceeds the unambiguous velocity"):
        rr.read_raw(tmp_path / "fast.npz", raw, 64)
    (tmp_path / "torn.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match=r"cannot read .*torn.npz: .*corrupt, truncated"):
        rr.read_raw(tmp_path / "torn.npz", raw, 64)
    with pytest.raises(UserError, match=r"data.raw: unknown option\(s\) \['prf'\]"):
        rr.RawRadar.make({"prf": 1000})
    with pytest.raises(
        UserError, match=r"data.raw.window_s=5.0 must be shorter than duration_s=4.0"
    ):
        rr.RawRadar.make({"window_s": 5.0})


# ------------------------------------------------------------------ data=raw_radar end to end
def _simulated(tmp_path: Path, fmt: str) -> Path:
    """`simulate` as a user runs it, in-process: 3 classes x 4 recordings (or images)."""
    from hydra import compose, initialize_config_dir

    from latent_diffusion.simulate import simulate

    conf = Path(__file__).resolve().parents[1] / "conf"
    out = tmp_path / fmt
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(
            "simulate",
            overrides=[f"out_dir={out}", "n_per_class=4", "classes=[walk,run,box]",
                       f"format={fmt}", "workers=0", f"paths.root_dir={tmp_path}"],
        )  # fmt: skip
    return simulate(cfg)


def test_raw_radar_source_reads_simulated_recordings_as_simulate_renders_them(tmp_path):
    """simulate format=iq writes the I/Q behind each image; data=raw_radar reads it back to
    the image simulate writes as PNG (within its 8-bit step), and a shorter duration with a
    hop gives several windows per recording, all in the recording's split."""
    from latent_diffusion.data.source import build_source

    iq, png = _simulated(tmp_path, "iq"), _simulated(tmp_path, "png")
    assert sorted(p.name for p in (iq / "walk").iterdir())[0] == "walk_00000.npz"
    common = dict(image_size=64, val_fraction=0.25, test_fraction=0.25, cache_dir=None)
    raw = build_source("image_folder", root=iq, raw={"enabled": True}, **common)
    grey = build_source("image_folder", root=png, **common)
    for split in ("train", "val", "test"):
        a, b = raw.split(split), grey.split(split)
        assert [f.replace(".npz#0", "") for f in a.files] == [
            f.replace(".png", "") for f in b.files
        ]
        assert (a.x - b.x).abs().max() <= 2 / 255 + 1e-6  # [-1, 1]: one 8-bit step
    assert raw.fingerprint()["raw"]["duration_s"] == 4.0 and raw.radar.v_max == 8.0

    win = build_source(
        "image_folder", root=iq, raw={"enabled": True, "duration_s": 2.0, "hop_s": 1.0}, **common
    )
    for split in ("train", "val", "test"):
        files = win.split(split).files
        recs = {f.split("#")[0] for f in files}
        assert len(files) == 3 * len(recs)  # 4.2 s: windows of 2.2 s at 0, 1, 2 s
        assert recs == {
            f.split("#")[0] for f in raw.split(split).files
        }  # windows stay in their recording's split
    assert win.fingerprint() != raw.fingerprint()
    with pytest.warns(UserWarning, match=r"12 recordings are shorter than data.raw.duration_s=5.0"):
        build_source("image_folder", root=iq, raw={"enabled": True, "duration_s": 5.0}, **common)


def test_inspect_on_raw_recordings_gives_files_windows_and_axes(tmp_path):
    from tests.cli import run_cli

    iq = _simulated(tmp_path, "iq")
    out = tmp_path / "inspect"
    proc = run_cli(
        "inspect", "data=raw_radar", f"data.root={iq}", "data.raw.duration_s=2.0",
        "data.raw.hop_s=1.0", f"out_dir={out}", f"paths.root_dir={tmp_path}", cwd=tmp_path,
    )  # fmt: skip
    text = proc.stdout
    assert "12 recordings -> 36 spectrograms" in text, text[-2000:]
    assert "axes: rows +8.0 (top, towards the radar) to -8.0 m/s, 0.250 m/s per row" in text
    assert "columns 2.00 s, 31.2 ms each" in text
    assert "raw recordings: 12 files -> 36 spectrograms, 0 zero-padded" in text


def test_raw_options_are_checked_before_any_work(tmp_path):
    from hydra import compose, initialize_config_dir

    from latent_diffusion.validation import preflight

    conf = Path(__file__).resolve().parents[1] / "conf"
    for bad, message in (
        ("data.raw.mti_hz=-1", r"data.raw.mti_hz=-1.0: must be >= 0"),
        ("data.raw.range_bins=[5,2]", r"data.raw.range_bins=\[5, 2\]: must be \[first, last\]"),
        ("data.raw.duration_s=0", r"data.raw.duration_s=0.0: must be > 0"),
    ):
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose(
                "train", overrides=["data=raw_radar", f"data.root={tmp_path}", bad,
                                    f"paths.root_dir={tmp_path}"],
            )  # fmt: skip
        with pytest.raises(UserError, match=message):
            preflight("train", cfg)
