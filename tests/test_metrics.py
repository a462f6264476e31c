"""Evaluation metrics on the built-in simulator: each number must react the way its definition says.

One small real set (4 classes x 30 train / 30 test) and one small domain classifier
are shared by the module; the CLI test (test_evaluate.py) reuses the same simulator cache.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latent_diffusion.data import build_source
from latent_diffusion.data.simulator import sample_seed, simulate_one
from latent_diffusion.metrics import distances, kinematics, memorisation, protocol
from latent_diffusion.metrics.classifier import ClassifierConfig, predict, train_classifier
from latent_diffusion.metrics.features import DomainFeatures, extract_features
from latent_diffusion.metrics.generated import load_generated
from latent_diffusion.metrics.suite import stack_split
from latent_diffusion.utils.errors import UserError

CLASSES = ["walk", "run", "fall", "box"]
REAL = dict(
    n_per_class=30, val_per_class=5, test_per_class=30, image_size=64, seed=0, classes=CLASSES
)
SMALL = ClassifierConfig(width=8, steps=150, batch_size=32)


@pytest.fixture(scope="module")
def real(workdir):
    src = build_source(
        "microdoppler", **REAL, cache_dir=str(workdir / ".cache" / "latent_diffusion" / "simulator")
    )
    return {s: stack_split(src.split(s)) for s in ("train", "val", "test")}


@pytest.fixture(scope="module")
def model(real):
    return train_classifier(*real["train"], len(CLASSES), SMALL)


def _blur(x: torch.Tensor, k: int) -> torch.Tensor:
    return torch.nn.functional.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)[
        ..., :64, :64
    ]


# ------------------------------------------------------------------ distances


@pytest.mark.slow
def test_fid_orders_real_blurred_and_noise(real, model):
    """FID(train, test) ~ real-vs-real; blurring the test images raises it monotonically with the
    kernel; noise images are far beyond; a set against itself is ~0."""
    feats = DomainFeatures(model)
    ref, test = real["train"][0], real["test"][0]
    self_fid = distances.fid(feats, test, test)
    rr = distances.fid(feats, ref, test)
    blurred = [distances.fid(feats, ref, _blur(test, k)) for k in (3, 5, 9)]
    noise = distances.fid(feats, ref, torch.rand_like(test) * 2 - 1)
    assert abs(self_fid) < 1e-3 * rr
    assert rr < blurred[0] < blurred[1] < blurred[2] < noise, (rr, blurred, noise)
    assert noise > 10 * rr


@pytest.mark.slow
def test_precision_recall_and_kid(real, model):
    feats = DomainFeatures(model)
    ref, test = real["train"][0], real["test"][0]
    same = distances.compare(feats, ref, test, kid_subsets=10)
    noise = distances.compare(feats, ref, torch.rand_like(test) * 2 - 1, kid_subsets=10)
    assert same["precision"] > 0.6 and same["recall"] > 0.6, same
    # a few noise features land in the wide balls of outlying real points (the k-NN manifold's
    # known weakness), but noise covers none of the real set
    assert noise["precision"] < 0.3 and noise["recall"] < 0.05, noise
    assert noise["kid"] > 20 * abs(same["kid"])


def test_precision_recall_of_known_point_sets():
    """Kynkaanniemi k-NN manifolds: a set inside the real cloud has precision 1; a shifted one 0."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 5, generator=g)
    p, r = distances.precision_recall(a, a[:100] * 0.5, k=3)
    assert p == 1.0 and r < 0.9
    p, r = distances.precision_recall(a, a + 50, k=3)
    assert p == 0.0 and r == 0.0


def test_feature_module_is_what_torchmetrics_needs(model):
    feats = DomainFeatures(model)
    assert feats.num_features == 32  # 4 x width
    x = torch.rand(5, 1, 64, 64) * 2 - 1
    u8 = torch.round((x + 1) * 127.5).to(torch.uint8)
    assert torch.allclose(feats(x), feats(u8), atol=0.05)
    feats.train()
    assert not feats.training and not feats.classifier.training


# ------------------------------------------------------------------ protocol


def test_classification_report_by_hand():
    rep = protocol.classification_report([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"])
    assert rep["accuracy"] == pytest.approx(3 / 5)
    # F1: a = 2PR/(P+R) with P=1/2, R=1/2 -> 1/2; b: P=2/3, R=1 -> 0.8; c: 0
    assert rep["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert rep["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


@pytest.mark.slow
def test_cas_on_real_test_is_trtr_and_tstr_on_real_train_matches_trtr(real, model):
    (tx, ty), (sx, sy) = real["train"], real["test"]
    trtr = float((predict(model, sx) == sy.numpy()).mean())
    assert trtr > 0.8  # the simulator's classes are separable
    assert protocol.cas(model, sx, sy.numpy(), CLASSES)["accuracy"] == pytest.approx(trtr)
    rep = protocol.tstr(tx, ty.numpy(), ty.numpy(), sx, sy.numpy(), CLASSES, SMALL)
    assert rep["n_train"] == len(ty)
    assert abs(rep["accuracy"] - trtr) <= 0.05, (rep["accuracy"], trtr)


@pytest.mark.slow
def test_augmentation_curve_adds_the_generated_images(real):
    """The arms train on what they say: 'samples' that are the real images the 20% subset
    lacks raise the accuracy over real only; the same images with every label moved to the next
    class lower it (noise with random labels lowered it by only 0.05 in one run: too close to
    call). The paired differences and the gain are those of the same runs."""
    (tx, ty), (sx, sy) = real["train"], real["test"]
    cfg = ClassifierConfig(width=8, steps=60, batch_size=32)
    wrong_y = (ty.numpy() + 1) % len(CLASSES)

    def curve(gen_x, gen_y):
        return protocol.augmentation_curve(
            tx, ty.numpy(), gen_x, gen_y, sx, sy.numpy(), CLASSES, cfg,
            fractions=[0.1], multipliers=[0, 4], seeds=[0],
        )["0.1"]  # fmt: skip

    helped, hurt = curve(tx, ty.numpy()), curve(tx, wrong_y)
    assert helped["accuracy"]["0"] == hurt["accuracy"]["0"]  # the same real-only runs
    real_only = helped["accuracy"]["0"]["mean"]
    assert helped["accuracy"]["4"]["mean"] > real_only + 0.05, helped["accuracy"]
    assert hurt["accuracy"]["4"]["mean"] < real_only - 0.05, hurt["accuracy"]
    assert helped["gain"] == pytest.approx(helped["accuracy"]["4"]["mean"] - real_only)


def test_stratified_subset_counts():
    y = np.repeat(np.arange(3), [10, 4, 6])
    idx = protocol.stratified_subset(y, [5, 8, 0], np.random.default_rng(0), replace_if_short=True)
    assert np.bincount(y[idx], minlength=3).tolist() == [5, 8, 0]
    assert len(set(idx[y[idx] == 0])) == 5  # no repeats where there are enough


# ------------------------------------------------------------------ kinematics


def test_kinematics_recover_walker_torso_velocity_and_cadence():
    """Torso velocity within a row (0.25 m/s) of the simulator's measured torso radial velocity,
    cadence = steps per second = 2 / gait cycle within 10 %."""
    imgs, params = [], []
    for i in range(8):
        img, p = simulate_one("walk", sample_seed(11, "train", "walk", i), 64)
        imgs.append(img * 2 - 1)
        params.append(p)
    st = kinematics.kinematic_stats(np.stack(imgs))
    true_v = np.array([p["torso_radial_mps"] for p in params])
    assert np.median(np.abs(st["torso"] - true_v)) < 0.2, (st["torso"], true_v)
    assert np.all(np.abs(st["torso"] - true_v) < 0.35)
    steps_hz = np.array([2 / p["cycle_s"] for p in params])
    assert np.median(np.abs(st["cadence"] / steps_hz - 1)) < 0.1, (st["cadence"], steps_hz)
    # feet swing faster than the torso: the envelope reaches beyond it
    assert np.all(st["max_doppler"] - st["min_doppler"] > 2 * np.abs(true_v))


def test_kinematic_wasserstein_real_vs_real_small_vs_other_class(real):
    (tx, ty), (sx, sy) = real["train"], real["test"]
    a, b = kinematics.kinematic_stats(tx.numpy()), kinematics.kinematic_stats(sx.numpy())
    walk, run = CLASSES.index("walk"), CLASSES.index("run")
    fid = kinematics.kinematic_fidelity(b, sy.numpy(), a, ty.numpy(), CLASSES)
    # "generated" = real test labelled run, compared with real walk
    swapped = np.where(sy.numpy() == run, walk, -1)
    other = kinematics.kinematic_fidelity(b, swapped, a, ty.numpy(), CLASSES)
    for s in ("bandwidth", "max_doppler"):
        assert fid["walk"][s]["w1"] * 3 < other["walk"][s]["w1"], (
            s,
            fid["walk"][s],
            other["walk"][s],
        )
    assert fid["fall"]["cadence"]["w1"] is None or np.isfinite(fid["fall"]["cadence"]["w1"])


def test_paired_envelope_shifts_read_a_known_doppler_shift(real):
    """Reconstructions that move every image down by two Doppler rows (0.5 m/s, the top
    filled with the clip floor) are read as a 0.5 m/s shift of max Doppler in every class and
    of min Doppler wherever the envelope stays inside the crop, with bandwidth and cadence
    unmoved; an exact copy reads 0 everywhere."""
    from latent_diffusion.vae.export import reconstruction_kinematics

    x, y = real["test"]
    unit = (x + 1) / 2  # (N, 1, 64, 64) in [0, 1], as the export holds them
    moved = torch.cat([torch.zeros_like(unit[..., :2, :]), unit[..., :-2, :]], dim=-2)
    axes = dict(class_names=CLASSES, v_max=8.0, duration_s=4.0, dynamic_range_db=45.0)
    shift = reconstruction_kinematics(unit, moved, y, **axes)
    same = reconstruction_kinematics(unit, unit, y, **axes)
    assert shift["doppler_row_m_s"] == 0.25
    for name in CLASSES:
        row = shift["per_class"][name]
        assert row["max_doppler"] == pytest.approx(0.5), (name, row)
        if name == "run":  # its feet reach the crop's lower edge, the shift pushes them out
            assert 0.0 < row["min_doppler"] <= 0.5, row
        else:
            assert row["min_doppler"] == pytest.approx(0.5), (name, row)
        assert row["bandwidth"] == pytest.approx(0.0) and row["cadence"] in (0.0, None)
        assert all(v in (0.0, None) for v in same["per_class"][name].values())
    assert shift["worst"]["max_doppler"]["median_abs_shift"] == pytest.approx(0.5)
    assert shift["worst"]["max_doppler"]["unit"] == "m/s"
    assert shift["worst"]["bandwidth"]["class"] is None  # nothing moved: no class is named


def test_vae_report_reads_the_axes_from_the_radar_settings(tmp_path):
    """data.radar.dynamic_range_db / v_max reach train_vae's speckle and kinematics (the data
    module itself has no radar; the source has), an explicit evaluate setting wins over them,
    and an image folder without axes falls back to the simulator's, said as defaulted."""
    from latent_diffusion.data.datamodule import SpectrogramDataModule
    from latent_diffusion.train_vae import radar_axes

    dm = SpectrogramDataModule(
        source="microdoppler",
        radar={"dynamic_range_db": 60.0, "v_max": 6.0},
        cache_dir=str(tmp_path),
    )
    axes = radar_axes(dm, {})
    assert axes["dynamic_range_db"] == 60.0 and axes["kinematics"]["v_max"] == 6.0
    assert axes["kinematics"]["duration_s"] == 4.0
    explicit, defaulted = kinematics.data_axes(dm.source, {}, {"v_max": 7.0})
    assert explicit["v_max"] == 7.0 and explicit["dynamic_range_db"] == 60.0 and not defaulted
    folder, defaulted = kinematics.data_axes(None, {"dynamic_range_db": 50.0})
    assert folder == {"v_max": 8.0, "dynamic_range_db": 50.0, "duration_s": 4.0}
    assert defaulted == ["v_max", "duration_s"]


# ------------------------------------------------------------------ memorisation


def test_memorisation_flags_copies_not_fresh_samples(real, model):
    (tx, _), (sx, _) = real["train"], real["test"]
    feats = DomainFeatures(model)
    ftr = extract_features(feats, tx)
    copies = tx[:40]
    m = memorisation.memorisation(
        copies, sx, tx, extract_features(feats, copies), extract_features(feats, sx), ftr
    )
    assert m["pixel"]["ratio"] < 0.01 and m["pixel"]["frac_copies"] == 1.0
    assert m["feature"]["ratio"] < 0.01
    fresh, held = sx[::2], sx[1::2]  # disjoint halves of fresh simulator draws
    m = memorisation.memorisation(
        fresh, held, tx, extract_features(feats, fresh), extract_features(feats, held), ftr
    )
    assert 0.75 < m["pixel"]["ratio"] < 1.33 and m["pixel"]["frac_copies"] < 0.1, m["pixel"]
    assert 0.6 < m["feature"]["ratio"] < 1.6


# ------------------------------------------------------------------ reading generated sets


def _write_folder(root, names, n=3, size=64):
    from PIL import Image

    for c in names:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((size, size), 40 * i, np.uint8), mode="L").save(
                root / c / f"{c}_{i:05d}.png"
            )


def test_generated_folder_and_npz(tmp_path):
    _write_folder(tmp_path / "g", ["run", "walk"])
    (tmp_path / "g" / "grid.png").write_bytes(b"not read")
    x, y, counts = load_generated(tmp_path / "g", CLASSES, 64)
    assert x.shape == (6, 1, 64, 64) and x.min() == -1.0
    assert y.tolist() == [1, 1, 1, 0, 0, 0] and counts.tolist() == [3, 3, 0, 0]  # mapped by name
    u8 = np.zeros((4, 64, 64, 1), np.uint8)
    np.savez(tmp_path / "s.npz", u8, np.array([0, 1, 1, 0]), class_names=np.array(["box", "walk"]))
    x, y, _ = load_generated(tmp_path / "s.npz", CLASSES, 64)
    assert y.tolist() == [3, 0, 0, 3]


def test_generated_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_generated(tmp_path / "nope", CLASSES, 64)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        load_generated(tmp_path / "empty", CLASSES, 64)
    _write_folder(tmp_path / "bad", ["walk", "swim"])
    with pytest.raises(UserError, match=r"\['swim'\].*walk.*run"):
        load_generated(tmp_path / "bad", CLASSES, 64)
    _write_folder(tmp_path / "big", ["walk"], size=128)
    with pytest.raises(UserError, match=r"128, 128.*64x64.*resize=true"):
        load_generated(tmp_path / "big", CLASSES, 64)
    x, _, _ = load_generated(tmp_path / "big", CLASSES, 64, resize=True)
    assert x.shape == (3, 1, 64, 64)


def test_training_callback_scores(real, model):
    """The callback's numbers: half of the real test set as 'samples', the other half as the
    held-out real set (two different draws): FID near the real-vs-real floor and CAS equal to
    the classifier's accuracy on those images, their labels rolled by one class a CAS near 0;
    noise scores far worse on both against an unchanged floor."""
    from latent_diffusion.metrics.callback import domain_scores

    (tx, _), (sx, sy) = real["train"], real["test"]
    ref = tx[torch.randperm(len(tx), generator=torch.Generator().manual_seed(0))]  # as the callback
    held, gen_x, gen_y = sx[0::2], sx[1::2], sy[1::2].numpy()  # both halves hold every class
    feats = DomainFeatures(model)
    good = domain_scores(model, feats, ref, held, gen_x, gen_y)
    mislabelled = domain_scores(model, feats, ref, held, gen_x, (gen_y + 1) % len(CLASSES))
    bad = domain_scores(model, feats, ref, held, torch.rand_like(gen_x) * 2 - 1, gen_y)
    floor = good["eval/fid_real_vs_real"]
    assert bad["eval/fid_real_vs_real"] == floor
    assert good["eval/fid_domain"] != floor  # two real draws, two values
    assert good["eval/fid_domain"] < 3 * floor
    assert bad["eval/fid_domain"] > 10 * good["eval/fid_domain"]
    assert good["eval/cas"] == pytest.approx(float((predict(model, gen_x) == gen_y).mean()))
    assert good["eval/cas"] > 0.8 and bad["eval/cas"] < 0.5
    assert mislabelled["eval/cas"] < 1 - good["eval/cas"] + 0.05


def test_vae_ceiling_vae_from_a_run_export(tmp_path):
    """run= finds the VAE named in export.json (hash-checked); vae_path= alone loads a folder."""
    import json

    from omegaconf import OmegaConf
    from test_evaluate import _tiny_vae

    from latent_diffusion.metrics.suite import load_vae, vae_roundtrip
    from latent_diffusion.vae.resolve import vae_reference

    vae = load_vae(OmegaConf.create({"vae_path": str(_tiny_vae(tmp_path / "vae")), "run": None}))
    (tmp_path / "run" / "export").mkdir(parents=True)
    (tmp_path / "run" / "export" / "export.json").write_text(
        json.dumps({"vae": vae_reference(vae)})
    )
    again = load_vae(OmegaConf.create({"vae_path": None, "run": str(tmp_path / "run")}))
    assert again.weights_hash == vae.weights_hash
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    y = vae_roundtrip(again, x)
    assert y.shape == x.shape and torch.equal(y, vae_roundtrip(vae, x))
    assert torch.equal(y, torch.round((y + 1) * 127.5) / 127.5 - 1)  # on the 8-bit grid
    assert load_vae(OmegaConf.create({"vae_path": None, "run": None})) is None


# ------------------------------------------------------------------ background texture
def _speckle_image(n_looks: int, seed: int = 0, n: int = 6, size: int = 64) -> np.ndarray:
    """Gamma(L) speckle (contrast 1/sqrt(L)) at -20 dB of full scale, a zero-Doppler line
    30 dB up and a sinusoidal envelope 20 dB up, mapped to [0, 1] over 45 dB and 8 bits."""
    rng = np.random.default_rng(seed)
    p = rng.gamma(n_looks, 1.0 / n_looks, size=(n, size, size)) * 1e-2
    p[:, size // 2 - 1 : size // 2 + 2, :] *= 1e3
    cols = np.arange(size)
    rows = (size // 2 - 12 * np.sin(cols / 5.0)).astype(int)
    for c, r in zip(cols, rows, strict=True):
        p[:, r - 1 : r + 2, c] *= 1e2
    u = np.clip((10 * np.log10(p) + 45.0) / 45.0, 0, 1)
    return np.round(u * 255) / 255


@pytest.mark.parametrize("looks", [1, 4])
def test_speckle_contrast_recovers_the_known_value(looks):
    """Fully developed speckle (exponential power, contrast 1) and 4-look speckle (0.5),
    with bright structure the signal mask must leave out, in 8-bit pixels."""
    from latent_diffusion.metrics.texture import signal_free_mask, speckle_contrast

    u = _speckle_image(looks)
    got = speckle_contrast(u, dynamic_range_db=45.0)
    assert np.all(np.abs(got - 1 / np.sqrt(looks)) < 0.06), got
    mask = signal_free_mask(u, 45.0)
    assert not mask[:, 30:35, :].any()  # the zero-Doppler line and its guard cells
    assert 0.3 < mask.mean() < 0.9


def test_speckle_contrast_falls_when_the_background_is_smoothed():
    """A 3x3 average of the linear power (what a blurring VAE does) divides the contrast of
    exponential speckle by about 3; the summary's ratio says so."""
    from scipy import ndimage

    from latent_diffusion.metrics.texture import contrast_summary, linear_power

    u = _speckle_image(1, seed=1)
    p = ndimage.uniform_filter(linear_power(u, 45.0), size=(1, 3, 3))
    smooth = np.clip((10 * np.log10(p) + 45.0) / 45.0, 0, 1)
    s = contrast_summary(u, smooth, dynamic_range_db=45.0)
    assert s["speckle_contrast_original"] == pytest.approx(1.0, abs=0.06)
    assert 0.25 < s["speckle_contrast_ratio"] < 0.5, s
    assert s["speckle_images"] == len(u)


def test_speckle_contrast_is_nan_without_background():
    from latent_diffusion.metrics.texture import speckle_contrast

    clipped = np.zeros((2, 64, 64))  # everything at the dB mapping's floor
    assert np.isnan(speckle_contrast(clipped)).all()
