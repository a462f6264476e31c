"""The built-in micro-Doppler simulator: physics of the signatures, determinism,
separability of the classes, the data source with its disk cache, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latent_diffusion.data import simulator as sim
from latent_diffusion.data.simulator import (
    CLASSES,
    MicroDopplerSource,
    RadarConfig,
    draw_params,
    generate,
    render,
    sample_seed,
    simulate_one,
)
from latent_diffusion.utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
RADAR = RadarConfig()


def velocity_axis(h: int, radar: RadarConfig = RADAR) -> np.ndarray:
    """Row centres in m/s, row 0 = +v_max (approaching at the top)."""
    dv = 2 * radar.v_max / h
    return radar.v_max - dv * (np.arange(h) + 0.5)


def upper_envelope(img: np.ndarray, level_db: float, radar: RadarConfig = RADAR) -> np.ndarray:
    """Per column, the highest velocity whose pixel is within level_db of the maximum."""
    thr = 1 - level_db / radar.dynamic_range_db
    v = velocity_axis(img.shape[0], radar)
    above = img >= thr
    return np.where(above.any(0), v[np.argmax(above, axis=0)], np.nan)


def test_walking_torso_line_sits_at_the_projected_speed():
    """The strongest non-clutter ridge, median over time, is the torso's radial velocity
    (speed x cos(aspect) as seen by the radar) within one Doppler bin."""
    v = velocity_axis(64)
    checked = 0
    for i in range(12):
        img, p = simulate_one("walk", sample_seed(3, "train", "walk", i), 64)
        if abs(p["torso_radial_mps"]) < 0.6:  # too close to the zero-Doppler clutter line
            continue
        # the torso line the model was given: the speed projected on the line of sight
        # at mid-walk (the person starts at (range, 0) heading at aspect_deg to the LOS)
        a = np.radians(p["aspect_deg"])
        heading = (-1 if p["facing"] == "toward" else 1) * np.array([np.cos(a), np.sin(a)])
        mid = np.array([p["range_m"], 0.0]) + heading * p["speed"] * RADAR.duration_s / 2
        nominal = -p["speed"] * heading @ mid / np.linalg.norm(mid)
        assert abs(p["torso_radial_mps"] - nominal) < 0.15 * abs(nominal)
        band = np.abs(v) > 0.3  # leave out the stationary clutter
        ridge = v[band][np.argmax(img[band], axis=0)]
        assert abs(np.median(ridge) - p["torso_radial_mps"]) <= 2 * RADAR.v_max / 64, (i, p)
        checked += 1
    assert checked >= 6


def test_running_reaches_higher_doppler_than_walking():
    def peak(cls):
        out = []
        for i in range(8):
            img, _ = simulate_one(cls, sample_seed(0, "train", cls, i), 64)
            env = np.maximum(np.abs(upper_envelope(img, 20)), np.abs(upper_envelope(img[::-1], 20)))
            out.append(np.nanmax(env))
        return np.median(out)

    walk, run = peak("walk"), peak("run")
    assert 2.0 < walk < 6.0  # feet ~3-4x a 0.5-1.7 m/s torso, projected
    assert run > walk + 1.5


def test_cadence_from_envelope_autocorrelation_matches_gait_cycle():
    """The upper envelope of a walk pulses once per step (each foot's swing): its
    autocorrelation peaks at half the gait cycle."""
    checked = 0
    for i in range(6):
        seed = sample_seed(1, "train", "walk", i)
        img, p = simulate_one("walk", seed, 128)
        if p["facing"] != "toward":
            img = img[::-1]  # receding: the feet lead on the negative side
        env = upper_envelope(img, 25)
        env = np.nan_to_num(env - np.nanmean(env))
        ac = np.correlate(env, env, "full")[env.size - 1 :]
        dt = RADAR.duration_s / 128
        lags = np.arange(ac.size) * dt
        ok = (lags > 0.3) & (lags < 1.2)
        k = np.flatnonzero(ok)[np.argmax(ac[ok])]
        k = k + 0.5 * (ac[k - 1] - ac[k + 1]) / (
            ac[k - 1] - 2 * ac[k] + ac[k + 1]
        )  # parabolic peak
        step = k * dt
        assert abs(step - p["cycle_s"] / 2) < 0.1 * p["cycle_s"] / 2, (i, step, p["cycle_s"])
        checked += 1
    assert checked == 6


def test_fall_is_one_transient_then_silence():
    v = velocity_axis(64)
    band = np.abs(v) > 0.5  # the body lying still and the clutter stay at zero Doppler
    for i in range(4):
        img, p = simulate_one("fall", sample_seed(0, "train", "fall", i), 64)
        floor = np.median(img[band])  # mostly noise
        cols = (np.arange(64) + 0.5) * RADAR.duration_s / 64
        last = img[band][:, cols > RADAR.duration_s - 0.8]
        during = img[band][:, (cols > p["onset"]) & (cols < p["onset"] + p["duration"])]
        assert np.quantile(last, 0.99) < floor + 0.2, i
        assert during.max() > floor + 0.4, i
        fast = np.nanmax(np.abs(np.r_[upper_envelope(img, 20), upper_envelope(img[::-1], 20)]))
        assert 1.5 < fast < 8.0  # 2-5 m/s torso, a bit more at the head / hands


def doppler_centroid(img: np.ndarray) -> np.ndarray:
    """Mean radial velocity per column of the energy above the noise, outside the
    zero-Doppler clutter band (m/s, + approaching)."""
    v = velocity_axis(img.shape[0])
    band = np.abs(v) > 0.3
    w = np.clip(img[band] - np.median(img[band]) - 0.25, 0, None)  # > ~11 dB above the noise
    c = (w * v[band, None]).sum(0) / (w.sum(0) + 0.5)  # columns of noise only stay near 0
    return np.convolve(c, np.ones(5) / 5, mode="same")  # ~0.3 s: a lobe, not a speckle


def test_stand_up_is_sit_down_reversed_in_time():
    """Time reversal flips time AND the sign of Doppler: with the same parameters the
    stand_up signature (above the noise, outside the clutter band) is the sit_down
    one rotated by 180 degrees, and clearly not the sit_down one itself."""
    v = velocity_axis(64)
    band = (np.abs(v) > 0.3)[:, None]

    def signature(img):
        return np.clip(img - np.median(img[band[:, 0]]) - 0.1, 0, None) * band

    for i in range(3):
        seed = sample_seed(0, "train", "sit_down", i)
        p = draw_params("sit_down", np.random.default_rng(seed), RADAR)
        sit, _ = render("sit_down", dict(p), RADAR, 64, np.random.default_rng(seed))
        stand, _ = render("stand_up", dict(p), RADAR, 64, np.random.default_rng(seed))
        s_sit, s_stand = signature(sit), signature(stand)
        mirrored = np.corrcoef(s_stand.ravel(), s_sit[::-1, ::-1].ravel())[0, 1]
        same = np.corrcoef(s_stand.ravel(), s_sit.ravel())[0, 1]
        assert mirrored > 0.9 and mirrored > same + 0.1, (mirrored, same)


def test_pick_up_has_two_lobes_of_opposite_sign():
    """Bending down moves head and trunk one way, coming up the other way."""
    dt = RADAR.duration_s / 64
    for i in range(4):
        img, p = simulate_one("pick_up", sample_seed(0, "train", "pick_up", i), 64)
        c = doppler_centroid(img)
        hi, lo = np.argmax(c), np.argmin(c)
        assert c[hi] > 0.2 and c[lo] < -0.2, (i, c[hi], c[lo])
        assert abs(hi - lo) * dt > 0.5  # separated by about the bend + hold time
        first = min(hi, lo)
        toward = p["facing"] == "toward"
        assert (first == hi) == toward  # facing the radar, the bend approaches it first


def test_decimated_kinematics_match_pulse_rate_kinematics(monkeypatch):
    """Kinematics at PRF / 4 with cubic range interpolation give the image that
    kinematics at every pulse give (noise and clutter off), within 2 dB anywhere."""
    for cls in ("run", "box"):
        imgs = []
        for dec in (sim.KIN_DECIMATION, 1):
            monkeypatch.setattr(sim, "KIN_DECIMATION", dec)
            rng = np.random.default_rng(sample_seed(0, "train", cls, 0))
            p = draw_params(cls, rng, RADAR)
            p.update(snr_db=80.0, clutter_db=-80.0)
            imgs.append(render(cls, p, RADAR, 128, rng)[0])
        assert np.abs(imgs[0] - imgs[1]).max() * RADAR.dynamic_range_db < 2.0, cls


def test_images_are_in_range_and_deterministic():
    a, pa = simulate_one("box", [5, 0, 7, 2], 64)
    b, pb = simulate_one("box", [5, 0, 7, 2], 64)
    c, _ = simulate_one("box", [5, 0, 7, 3], 64)
    assert a.dtype == np.float32 and a.shape == (64, 64)
    assert a.min() >= 0 and a.max() == 1.0
    assert np.array_equal(a, b) and pa == pb
    assert not np.array_equal(a, c)
    big, _ = simulate_one("box", [5, 0, 7, 2], 128)
    assert big.shape == (128, 128)


@pytest.fixture
def pool_allowed(monkeypatch):
    """generate runs in one process when other threads exist (a fork beside them can
    deadlock), and libraries used by earlier tests of a session leave threads running:
    the pool tests say there are none, or they would test the serial path. Returns a list
    that grows by one for each pool started."""
    monkeypatch.setattr(sim.threading, "active_count", lambda: 1)
    started = []
    real = sim._pooled
    monkeypatch.setattr(sim, "_pooled", lambda *a: started.append(1) or real(*a))
    return started


def test_pool_equals_serial(pool_allowed):
    serial = generate(["walk", "fall"], 3, "val", 11, 64, RADAR, workers=0)
    pooled = generate(["walk", "fall"], 3, "val", 11, 64, RADAR, workers=2)
    assert len(pool_allowed) == 1  # the pool ran
    assert np.array_equal(serial[0], pooled[0]) and np.array_equal(serial[1], pooled[1])
    assert serial[2] == pooled[2]
    # a subset of classes keeps each class's samples (class index is into CLASSES)
    fall_only = generate(["fall"], 3, "val", 11, 64, RADAR)
    assert np.array_equal(fall_only[0], serial[0][3:])


def test_no_pool_is_forked_beside_other_threads(monkeypatch, caplog):
    """A fork copies only the calling thread, so a lock another thread holds stays locked in
    the workers: with another thread running, generate simulates in this process and says so."""
    import threading

    started = []
    monkeypatch.setattr(sim, "_pooled", lambda *a: started.append(1) or [])
    release = threading.Event()
    other = threading.Thread(target=release.wait, daemon=True)
    other.start()
    try:
        with caplog.at_level("INFO", logger=sim.__name__):
            beside = generate(["walk", "fall"], 3, "val", 11, 64, RADAR, workers=2)
    finally:
        release.set()
        other.join()
    assert not started
    assert any("a fork could deadlock" in r.message for r in caplog.records)
    serial = generate(["walk", "fall"], 3, "val", 11, 64, RADAR, workers=0)
    assert np.array_equal(serial[0], beside[0])


def _stuck_in_workers(parent: int, how: str):
    """simulate_one as a pool worker would run it if it deadlocked or died; the parent
    process itself simulates normally (forked workers inherit the patched module)."""
    import os
    import time

    real = sim.simulate_one

    def simulate_one(*args, **kwargs):
        if os.getpid() != parent:
            if how == "dies":
                os._exit(3)
            time.sleep(3600)  # a deadlocked worker: never returns, never exits
        return real(*args, **kwargs)

    return simulate_one


@pytest.mark.parametrize("how", ["hangs", "dies"])
def test_a_stuck_or_dead_pool_worker_does_not_hang_the_run(how, pool_allowed, monkeypatch, caplog):
    """generate goes on in this process when its forked workers stop answering or die (a
    fork beside other threads can deadlock; Pool.map waits for ever on a dead worker): the
    same spectrograms, a warning, and seconds instead of for ever."""
    import os
    import time

    serial = generate(["walk", "fall"], 3, "val", 11, 64, RADAR, workers=0)
    monkeypatch.setattr(sim, "simulate_one", _stuck_in_workers(os.getpid(), how))
    monkeypatch.setattr(sim, "STALL_S", 2.0)
    t0 = time.perf_counter()
    with caplog.at_level("WARNING", logger=sim.__name__):
        pooled = generate(["walk", "fall"], 3, "val", 11, 64, RADAR, workers=2)
    assert time.perf_counter() - t0 < 30
    assert np.array_equal(serial[0], pooled[0]) and serial[2] == pooled[2]
    said = "returned nothing for 2 s" if how == "hangs" else "died"
    assert any(said in r.message and "remaining 6 of 6" in r.message for r in caplog.records)
    import multiprocessing

    assert not multiprocessing.active_children()  # no worker left behind


@pytest.mark.slow
def test_classes_are_separable_by_a_simple_classifier():
    """Logistic regression on time-invariant features of held-out seeds, far above 1/8."""

    def features(pix):
        x = torch.from_numpy(pix.astype(np.float32) / 65535)  # (N, H, W)
        both = torch.cat([x, x.flip(1)], 2)  # facing towards / away: both Doppler signs
        return torch.cat([x.mean(2), x.std(2), both.amax(2), x.std(1).mean(1, keepdim=True)], 1)

    tr_x, tr_y, _ = generate(list(CLASSES), 16, "train", 0, 64, RADAR, workers=2)
    te_x, te_y, _ = generate(list(CLASSES), 8, "test", 0, 64, RADAR, workers=2)
    ftr, fte = features(tr_x), features(te_x)
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    ftr, fte = (ftr - mu) / sd, (fte - mu) / sd
    torch.manual_seed(0)
    lin = torch.nn.Linear(ftr.shape[1], len(CLASSES))
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=200)
    ytr = torch.from_numpy(tr_y)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(ftr), ytr) + 1e-2 * lin.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    acc = (lin(fte).argmax(1).numpy() == te_y).mean()
    assert acc > 0.6, acc


def test_source_splits_cache_and_errors(tmp_path, monkeypatch):
    src = MicroDopplerSource(
        n_per_class=4,
        classes=["walk", "box"],
        cache_dir=tmp_path,
        val_per_class=2,
        test_per_class=3,
    )
    assert src.class_names == ["walk", "box"] and src.channels == 1 and src.image_size == 64
    train, val, test = (src.split(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (8, 4, 6)
    x, y = train[5]
    assert x.dtype == torch.float32 and x.shape == (1, 64, 64)
    assert x.min() >= -1 and x.max() == 1 and y == 1
    # disjoint seed streams: no seed and no image is shared between any two splits
    seeds = {
        s: {
            tuple(sample_seed(0, s, c, i))
            for c in ("walk", "box")
            for i in range({"train": 4, "val": 2, "test": 3}[s])
        }
        for s in ("train", "val", "test")
    }
    assert sum(len(v) for v in seeds.values()) == len(set().union(*seeds.values())) == 18
    images = [d[i][0].numpy().tobytes() for d in (train, val, test) for i in range(len(d))]
    assert len(set(images)) == 18
    # pixels are the simulator's, quantised the same way with or without a cache
    img, _ = simulate_one("walk", sample_seed(0, "train", "walk", 0), 64)
    assert torch.equal(x.new_tensor(sim.quantize(img) / 65535.0)[None] * 2 - 1, train[0][0])
    files = sorted(p.name for p in tmp_path.rglob("*.npz"))
    assert files == ["test.npz", "train.npz", "val.npz"]

    # a second construction reads the cache instead of simulating
    def boom(*a, **k):
        raise AssertionError("simulated again instead of reading the cache")

    monkeypatch.setattr(sim, "generate", boom)
    again = MicroDopplerSource(
        n_per_class=4,
        classes=["walk", "box"],
        cache_dir=tmp_path,
        val_per_class=2,
        test_per_class=3,
    )
    assert torch.equal(again.split("train")[3][0], train[3][0])
    monkeypatch.undo()

    with pytest.raises(UserError, match="unknown or repeated class"):
        MicroDopplerSource(classes=["walk", "swim"])
    with pytest.raises(UserError, match="image_size"):
        MicroDopplerSource(image_size=100)
    with pytest.raises(UserError, match="unknown radar option"):
        MicroDopplerSource(radar={"carrier": 24e9})
    with pytest.raises(UserError, match="unambiguous"):
        MicroDopplerSource(radar={"prf_hz": 200})
    with pytest.raises(UserError, match="window_s < duration_s"):
        MicroDopplerSource(radar={"window_s": 5})
    assert RadarConfig.make({"v_max": None, "prf_hz": 2000}) == RadarConfig(
        prf_hz=2000.0
    )  # null = default


def test_build_source_by_name():
    from latent_diffusion.data.source import build_source

    src = build_source(
        "microdoppler", n_per_class=1, classes=["jump"], radar={"carrier_hz": 24e9, "prf_hz": 4000}
    )
    x, y = src.split("test")[0]
    assert x.shape == (1, 64, 64) and y == 0 and len(src.split("test")) == 8
    assert src.fingerprint()["radar"]["carrier_hz"] == 24e9


def _cli(*args, cwd):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "latent_diffusion.simulate",
            *args,
            "hydra.run.dir=" + str(cwd / "hydra"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.slow
def test_cli_writes_the_documented_layout(tmp_path):
    out = tmp_path / "set"
    r = _cli(f"out_dir={out}", "n_per_class=3", "workers=1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["class_names"] == list(CLASSES) and meta["radar"]["carrier_hz"] == 5.8e9
    assert len(meta["samples"]) == 24 and "snr_db" in meta["samples"][0]["params"]
    for c in CLASSES:
        files = sorted(p.name for p in (out / c).iterdir())
        assert files == [f"{c}_{i:05d}.png" for i in range(3)]
    png = Image.open(out / "walk" / "walk_00001.png")
    assert png.mode == "L" and png.size == (64, 64)
    img, _ = simulate_one("walk", sample_seed(0, "train", "walk", 1), 64)
    assert np.abs(np.asarray(png).astype(int) - np.round(img * 255)).max() <= 1  # row 0 = +v_max
    prev = Image.open(out / "preview.png")
    assert prev.size[1] >= 8 * 64
    # simulate may replace its own folder, never someone else's (in-process: same code path)
    from hydra import compose, initialize_config_dir

    from latent_diffusion.simulate import simulate

    def cfg(out_dir):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return compose(
                "simulate", [f"out_dir={out_dir}", "n_per_class=1", "classes=[fall]", "workers=0"]
            )

    simulate(cfg(out))
    assert sorted(p.name for p in out.iterdir()) == ["fall", "metadata.json", "preview.png"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not written by simulate"):
        simulate(cfg(foreign))
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_cli_bad_class_exits_2_with_a_clear_message(tmp_path):
    r = _cli(f"out_dir={tmp_path / 'x'}", "classes=[walk,swim]", cwd=tmp_path)
    assert r.returncode == 2
    assert "unknown class ['swim']" in r.stderr and "walk" in r.stderr
    assert not (tmp_path / "x").exists()


def test_cli_prints_config():
    r = subprocess.run(
        [sys.executable, "-m", "latent_diffusion.simulate", "--cfg", "job", "n_per_class=5"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "n_per_class: 5" in r.stdout and "image_size: 64" in r.stdout
