"""The hard simulator preset (data=microdoppler_hard): what makes measured data sets hard.

Published CNN accuracies on measured human-activity spectrograms are ~0.85-0.95,
limited by who is measured and how, not by the activities. The default (easy)
preset draws every sample as a fresh person at a friendly aspect and high SNR;
this one adds, per sample:

  subjects      a finite pool of people per split, each with a height, leg and arm
                proportions, a gait-speed factor and a sway rate of their own;
                subject ids are split-specific, so splits are subject-disjoint
  aspect        heading up to +-aspect_max_deg from the line of sight: oblique paths
                squash the Doppler spread towards zero (cos aspect)
  SNR vs range  snr = snr_at_3m - 40 log10(range / 3 m) (radar equation, power ~ R^-4),
                floored at snr_floor_db: 6 dB at the far end
  multipath     a ground bounce: the body mirrored in the floor (z -> -z), with an
                amplitude reflection coefficient
  moving clutter a swaying reflector (a branch, a fan, a curtain): a sinusoidal range
                wander of a few cm at 0.3-2 Hz
  interferers   sometimes a second person walking elsewhere, or a stray reflector moving
                at a constant radial velocity (a door, a passing object)

Each knob is a field of HardScene; docs/evaluation.md records the calibration (the
domain classifier's real test accuracy at the default training size).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from latent_diffusion.data import kinematics as kin
from latent_diffusion.data import radar as rad

SPLIT_NAMES = ("train", "val", "test")  # index = the split id in a sample seed


@dataclass(frozen=True)
class HardScene:
    subjects: tuple[int, int, int] = (20, 6, 6)  # people per split (train, val, test)
    height: tuple[float, float] = (1.45, 2.0)
    limb_scale: tuple[float, float] = (0.9, 1.1)
    speed_scale: tuple[float, float] = (0.75, 1.25)  # a subject's gait speed vs the class's draw
    aspect_max_deg: float = 65.0  # calibrated (docs/evaluation.md): 85 gave 0.78
    range_m: tuple[float, float] = (3.0, 12.0)
    snr_at_3m_db: tuple[float, float] = (20.0, 30.0)
    snr_floor_db: float = 6.0  # calibrated with aspect_max_deg
    multipath_gain: tuple[float, float] = (0.2, 0.6)  # amplitude of the floor-mirrored body
    p_moving_clutter: float = 0.5
    moving_clutter_db: tuple[float, float] = (-12.0, 0.0)
    p_second_person: float = 0.2
    p_stray_reflector: float = 0.2
    stray_db: tuple[float, float] = (-10.0, 0.0)

    @classmethod
    def make(cls, scene) -> HardScene:
        if isinstance(scene, cls):
            return scene
        given = {k: v for k, v in dict(scene or {}).items() if v is not None}
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(given) - fields
        if unknown:
            from latent_diffusion.utils.errors import UserError

            raise UserError(
                f"unknown data.scene option(s) {sorted(unknown)}; valid: {sorted(fields)}"
            )
        return cls(**{k: tuple(v) if isinstance(v, list | tuple) else v for k, v in given.items()})


def subject_of(seed, scene: HardScene) -> tuple[str, dict]:
    """(subject id, traits) of a sample seed [base, split_id, class, index]: sample i of every
    class belongs to subject i mod n_subjects of its split; traits depend on (base, split,
    subject)."""
    base, split_id, _, index = (int(v) for v in seed)
    j = index % scene.subjects[split_id]
    r = np.random.default_rng(
        [base, split_id, 10_000, j]
    )  # class-independent: one person, all activities
    traits = {
        "height": r.uniform(*scene.height),
        "leg_scale": r.uniform(*scene.limb_scale),
        "arm_scale": r.uniform(*scene.limb_scale),
        "speed_scale": r.uniform(*scene.speed_scale),
        "sway_hz": r.uniform(0.2, 0.5),
    }
    return f"{SPLIT_NAMES[split_id]}-{j:03d}", {k: float(v) for k, v in traits.items()}


def harden(
    p: dict, cls_name: str, seed, scene: HardScene, rng: np.random.Generator, duration_s: float
) -> dict:
    """The easy draw p -> the hard one: the subject's body and gait, the wider scene, the extra
    returns."""
    sid, traits = subject_of(seed, scene)
    p = dict(p)
    p["subject"] = sid  # height and proportions: already the subject's (draw_params)
    if cls_name != "box":  # boxers bounce at their own rate (draw_params)
        p["sway_hz"] = traits["sway_hz"]
    if p.get("speed"):
        p["speed"] *= traits["speed_scale"]
        body = body_of(p)
        if cls_name == "walk":
            p["cycle_s"] = 1.346 / np.sqrt(
                p["speed"] / body.leg
            )  # Boulic, with the new speed and legs
    p["aspect_deg"] = rng.uniform(-scene.aspect_max_deg, scene.aspect_max_deg)
    travel = p.get("speed", 0.0) * duration_s
    p["range_m"] = rng.uniform(*scene.range_m)
    if p["facing"] == "toward":  # a walker towards the radar starts far enough not to reach it
        p["range_m"] += travel * abs(np.cos(np.radians(p["aspect_deg"])))
    mid = max(p["range_m"] - 0.5 * travel * (1 if p["facing"] == "toward" else -1), 1.0)
    p["snr_db"] = max(
        scene.snr_floor_db, rng.uniform(*scene.snr_at_3m_db) - 40 * np.log10(mid / 3.0)
    )
    p["multipath_gain"] = rng.uniform(*scene.multipath_gain)
    if rng.random() < scene.p_moving_clutter:
        p["moving_clutter"] = {
            "db": rng.uniform(*scene.moving_clutter_db),
            "amp_m": rng.uniform(0.02, 0.12),
            "hz": rng.uniform(0.3, 2.0),
            "phase": rng.uniform(0, 2 * np.pi),
        }
    u = rng.random()
    if u < scene.p_second_person:
        p["second_person"] = {
            "height": rng.uniform(*scene.height),
            "speed": rng.uniform(0.6, 1.6),
            "aspect_deg": rng.uniform(-90, 90),
            "range_m": rng.uniform(4.0, 14.0),
            "phase0": rng.uniform(0, 1),
            "facing": "toward" if rng.random() < 0.5 else "away",
        }
    elif u < scene.p_second_person + scene.p_stray_reflector:
        p["stray"] = {
            "db": rng.uniform(*scene.stray_db),
            "v": rng.uniform(-4.0, 4.0),
            "phase": rng.uniform(0, 2 * np.pi),
        }
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in p.items()}


def body_of(p: dict) -> kin.Body:
    return kin.Body(p["height"], p.get("leg_scale", 1.0), p.get("arm_scale", 1.0))


def pose_of(p: dict) -> tuple[np.ndarray, np.ndarray]:
    """(rot, start): body frame -> radar frame for heading aspect_deg, towards / away."""
    a = np.radians(p["aspect_deg"])
    sign = -1.0 if p["facing"] == "toward" else 1.0
    fwd = sign * np.array([np.cos(a), np.sin(a), 0.0])
    left = np.array([-fwd[1], fwd[0], 0.0])
    rot = np.stack([fwd, left, np.array([0.0, 0.0, 1.0])])  # rows: body axes in world coordinates
    return rot, np.array([p["range_m"], 0.0, 0.0])


def scene_echo(
    joints, t, p: dict, radar_pos, wavelength: float, prf: float, n: int, rng, factor: int
):
    """Complex baseband (n,) of the person, their ground bounce, the extra returns, clutter and
    noise.
    The SNR and clutter levels stay relative to the person's direct return."""
    pose = pose_of(p)
    direct, r0 = rad.body_return(joints, pose, radar_pos, wavelength, factor)
    direct = direct[:n]
    p_body = float(np.mean(np.abs(direct) ** 2))
    k = 4 * np.pi / wavelength

    def at(sig, r):  # put a body's common range offset back: bodies add coherently
        return sig[:n] * np.exp(-1j * k * (r - r0))

    mirror = {
        name: j * np.array([1.0, 1.0, -1.0]) for name, j in joints.items()
    }  # image in the floor
    bounce, rb = rad.body_return(mirror, pose, radar_pos, wavelength, factor)
    s = direct + p["multipath_gain"] * at(bounce, rb)
    tt = np.arange(n) / prf
    if (mc := p.get("moving_clutter")) is not None:
        s = s + np.sqrt(p_body * 10 ** (mc["db"] / 10)) * np.exp(
            -1j * (k * mc["amp_m"] * np.sin(2 * np.pi * mc["hz"] * tt) + mc["phase"])
        )
    if (sp := p.get("second_person")) is not None:
        q = {
            "height": sp["height"],
            "speed": sp["speed"],
            "phase0": sp["phase0"],
            "sway_hz": 0.3,
            "aspect_deg": sp["aspect_deg"],
            "facing": sp["facing"],
            "range_m": sp["range_m"],
        }
        b2 = kin.Body(q["height"])
        q["cycle_s"] = 1.346 / np.sqrt(q["speed"] / b2.leg)
        j2 = kin.ACTIVITIES["walk"](t, q, b2)
        other, r2 = rad.body_return(j2, pose_of(q), radar_pos, wavelength, factor)
        s = s + at(other, r2)
    if (st := p.get("stray")) is not None:
        s = s + np.sqrt(p_body * 10 ** (st["db"] / 10)) * np.exp(
            1j * (k * st["v"] * tt + st["phase"])
        )
    return rad.add_clutter_noise(s, p_body, p["snr_db"], p["clutter_db"], rng)
