"""Human body kinematics for the micro-Doppler simulator.

A stick figure of 12 segments (head, trunk, upper arms, forearms, thighs,
shanks, feet) with lengths as fractions of the height H (Boulic-Thalmann /
V.C. Chen, *The Micro-Doppler Effect in Radar*, ch. 5: thigh 0.245 H, shank
0.246 H, upper arm 0.188 H, forearm 0.152 H, ...). Limbs move in the sagittal
plane of the body: every segment angle `phi` is measured from the downward
vertical, positive = pointing forward, so a segment's unit vector is
(sin phi, 0, -cos phi) in the body frame (x forward, y left, z up).

Every activity is a pure function `(t, p, body) -> joints` of the time axis and
the drawn parameters `p` (no randomness in here), so a sample is reproducible
from its parameter dict alone. Walking follows Boulic et al., "A global human
walking model with real-time kinematic personification", The Visual Computer
6, 1990 (gait cycle from the relative velocity). The other activities are
joint-angle / pelvis trajectories built from minimum-jerk profiles
10 s^3 - 15 s^4 + 6 s^5 (Flash & Hogan 1985), so that no position or velocity
ever jumps: a jump in position would draw a false broadband streak.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator

G = 9.81  # m/s^2, ballistic flight of the jump

# ---------------------------------------------------------------- body model


@dataclass(frozen=True)
class Body:
    height: float
    leg_scale: float = 1.0  # subject proportions (the hard simulator preset): legs and arms
    arm_scale: float = 1.0  # as multiples of the anthropometric fractions below

    # Segment lengths as fractions of the height (Boulic 1990 / Chen 2011).
    @property
    def thigh(self):
        return 0.245 * self.height * self.leg_scale

    @property
    def shank(self):
        return 0.246 * self.height * self.leg_scale

    @property
    def upper_arm(self):
        return 0.188 * self.height * self.arm_scale

    @property
    def forearm(self):  # forearm + hand centre
        return 0.152 * self.height * self.arm_scale

    @property
    def trunk(self):  # hip joint line to shoulder line
        return 0.288 * self.height

    @property
    def head(self):
        return 0.130 * self.height

    @property
    def foot(self):
        return 0.143 * self.height

    @property
    def half_hips(self):
        return 0.191 / 2 * self.height

    @property
    def half_shoulders(self):
        return 0.259 / 2 * self.height

    @property
    def ankle_height(self):
        return 0.039 * self.height

    @property
    def leg(self):  # Boulic's H_t, the unit of the relative velocity
        return self.thigh + self.shank

    @property
    def pelvis_height(self):  # standing, knees almost straight (IK must stay solvable)
        return self.ankle_height + 0.985 * self.leg


# (name, proximal joint, distal joint, ellipsoid radius in m): the radar model
# turns each into an ellipsoid scatterer (radar.py).
SEGMENTS = (
    ("head", "neck", "head_top", 0.10),
    ("trunk", "pelvis", "neck", 0.15),
    ("upper_arm_l", "shoulder_l", "elbow_l", 0.05),
    ("upper_arm_r", "shoulder_r", "elbow_r", 0.05),
    ("forearm_l", "elbow_l", "wrist_l", 0.04),
    ("forearm_r", "elbow_r", "wrist_r", 0.04),
    ("thigh_l", "hip_l", "knee_l", 0.07),
    ("thigh_r", "hip_r", "knee_r", 0.07),
    ("shank_l", "knee_l", "ankle_l", 0.05),
    ("shank_r", "knee_r", "ankle_r", 0.05),
    ("foot_l", "ankle_l", "toe_l", 0.05),
    ("foot_r", "ankle_r", "toe_r", 0.05),
)

# ------------------------------------------------------------ profile helpers


def min_jerk(s):
    """Minimum-jerk blend 0 -> 1 on s in [0, 1] (clipped outside): zero velocity and
    acceleration at both ends, so a composed trajectory is C2."""
    s = np.clip(s, 0.0, 1.0)
    return s**3 * (10.0 - 15.0 * s + 6.0 * s**2)


def ramp(t, t0, duration):
    """min_jerk of the time axis: 0 before t0, 1 after t0 + duration."""
    return min_jerk((t - t0) / max(duration, 1e-6))


def bump(t, t0, rise, hold, fall):
    """0 -> 1 -> 0 made of two minimum-jerk ramps (a punch, a bend-and-return)."""
    return ramp(t, t0, rise) - ramp(t, t0 + rise + hold, fall)


def periodic(phase, knots):
    """Periodic shape-preserving cubic (PCHIP) through (phase, value) control points.

    Boulic's joint curves are control points read off gait plots, interpolated
    by a cubic that does not overshoot (Chen's code uses the same); tiling the
    knots over three periods keeps the angular velocity continuous at the seam."""
    pts = {}
    for x, y in knots:
        pts.setdefault(round(x % 1.0, 9), y)  # a knot at -0.1 and one at 0.9 are the same
    xs, ys = np.array(sorted(pts)), np.array([pts[k] for k in sorted(pts)])
    xs3, ys3 = np.concatenate([xs - 1, xs, xs + 1]), np.tile(ys, 3)
    return PchipInterpolator(xs3, ys3)(phase % 1.0)


def _dir(phi):
    """Unit vectors (T, 3) of segments at sagittal angles phi (rad) from the downward vertical."""
    return np.stack([np.sin(phi), np.zeros_like(phi), -np.cos(phi)], axis=-1)


def _lateral(half_width, side, yaw):
    """Offset (T, 3) of a left (side=+1) / right (-1) joint across a line turned by yaw (rad)."""
    w = side * half_width
    return np.stack([-w * np.sin(yaw), w * np.cos(yaw), np.zeros_like(yaw)], axis=-1)


def _leg_ik(hip, ankle, body):
    """Sagittal two-link inverse kinematics: thigh / shank angles (rad) that put the
    ankle at `ankle` from `hip` (both (T, 3)), knee bending forward."""
    d = ankle[:, [0, 2]] - hip[:, [0, 2]]
    # A hard clip at full extension would snap the knee (a broadband streak); saturate
    # softly instead: the foot may trail its target by millimetres near full stretch.
    dmax, soft = 0.999 * body.leg, 0.01 * body.leg
    dist = dmax - soft * np.logaddexp(0.0, (dmax - np.hypot(d[:, 0], d[:, 1])) / soft)
    dist = np.maximum(dist, 0.2 * body.leg)
    a, b = body.thigh, body.shank
    phi_line = np.arctan2(d[:, 0], -d[:, 1])  # hip->ankle line angle from the vertical
    cos_hip = np.clip((a * a + dist * dist - b * b) / (2 * a * dist), -1.0, 1.0)
    cos_knee = np.clip((a * a + b * b - dist * dist) / (2 * a * b), -1.0, 1.0)
    phi_thigh = phi_line + np.arccos(cos_hip)  # knee in front of the hip->ankle line
    phi_shank = phi_thigh - (np.pi - np.arccos(cos_knee))
    return phi_thigh, phi_shank


def skeleton(
    body, pelvis, lean, thigh, shank, foot, upper_arm, forearm, pelvis_yaw=None, thorax_yaw=None
):
    """Forward kinematics. pelvis (T, 3); lean (T,) trunk angle from the upward vertical;
    the limb angles are (2, T) arrays [left, right] of absolute sagittal angles (rad).
    Returns joint name -> (T, 3) positions in the body frame."""
    zero = np.zeros(pelvis.shape[0])
    pelvis_yaw = zero if pelvis_yaw is None else pelvis_yaw
    thorax_yaw = zero if thorax_yaw is None else thorax_yaw
    up = -_dir(-lean)  # trunk axis, leaning forward for lean > 0
    j = {"pelvis": pelvis, "neck": pelvis + body.trunk * up}
    j["head_top"] = j["neck"] + body.head * up
    for i, (s, side) in enumerate(((+1, "l"), (-1, "r"))):
        sh = j["neck"] + _lateral(body.half_shoulders, s, thorax_yaw)
        j[f"shoulder_{side}"] = sh
        j[f"elbow_{side}"] = sh + body.upper_arm * _dir(upper_arm[i])
        j[f"wrist_{side}"] = j[f"elbow_{side}"] + body.forearm * _dir(forearm[i])
        hip = pelvis + _lateral(body.half_hips, s, pelvis_yaw)
        j[f"hip_{side}"] = hip
        j[f"knee_{side}"] = hip + body.thigh * _dir(thigh[i])
        j[f"ankle_{side}"] = j[f"knee_{side}"] + body.shank * _dir(shank[i])
        j[f"toe_{side}"] = j[f"ankle_{side}"] + body.foot * _dir(foot[i])
    return j


def _pelvis(x, z, y=None):
    return np.stack([x, np.zeros_like(x) if y is None else y, z], axis=-1)


def _both(a, b=None):
    return np.stack([a, a if b is None else b])


# ------------------------------------------------------------------ gaits


def walk(t, p, body):
    """Boulic-Thalmann walking, gait cycle from the relative velocity rv = v / H_t.

    Relative cycle length RL_c = 1.346 sqrt(rv) (in units of H_t), so the cycle
    lasts RL_c H_t / v = 1.346 / sqrt(rv) s (draw_params sets p["cycle_s"]);
    relative support duration 0.752 D_c - 0.143. Control points of the hip /
    knee / ankle / elbow curves: Boulic appendices C-D (gait 'b', blended to 'c'
    above rv = 1.3 as in Chen's implementation)."""
    rv, ht = p["speed"] / body.leg, body.leg
    dc = 1.346 * np.sqrt(rv) / rv  # relative cycle duration (in units of H_t / v)
    ds = (0.752 * dc - 0.143) / dc  # relative support duration
    phase_r = t / p["cycle_s"] + p["phase0"]
    k = np.clip((rv - 1.3) / 1.7, 0.0, 1.0)
    knots = {  # (phase, degrees)
        "hip": [(0.2 * k - 0.1, 25 + 5 * k), (0.5, -15), (0.9, 25 + 6 * k)],
        "knee": [
            (0.17 - 0.05 * k, 3 + 22 * k),
            (0.4, 3),
            (0.75 - 0.05 * k, 70 - 5 * k),
            (0.97 - 0.03 * k, 3 + 3 * k),
        ],
        "ankle": [
            (0.0, -3 + 5 * k),
            (0.08, -18 + 4 * k),
            (0.5 - 0.1 * k, 8 - 3 * k),
            (ds, -20 - 8 * k),
            (0.85, -3 + 5 * k),
        ],
        "elbow": [(0.05, 14 - 6 * k), (0.51 + 0.04 * k, 44 + 26 * k), (0.9 - 0.1 * k, 17 - 6 * k)],
    }
    ash = 9.88 * rv  # shoulder flexion amplitude (deg)
    deg = np.pi / 180
    ph = np.stack([phase_r + 0.5, phase_r])  # [left, right]: legs in antiphase
    thigh = periodic(ph, knots["hip"]) * deg
    shank = thigh - periodic(ph, knots["knee"]) * deg
    foot = shank + (90 + periodic(ph, knots["ankle"])) * deg
    upper = (3 - ash / 2 - ash * np.cos(2 * np.pi * ph)) * deg  # arm opposite to the same-side leg
    fore = upper + periodic(ph, knots["elbow"]) * deg
    # Pelvis translations (Boulic appendix A), in units of H_t.
    vert = 0.015 * rv * (-1 + np.sin(2 * np.pi * (2 * phase_r - 0.35)))
    lat = -0.032 * np.sin(2 * np.pi * (phase_r - 0.1))
    fwd = -0.021 * np.sin(2 * np.pi * (2 * phase_r + 2 * (0.625 - ds)))
    pelvis = _pelvis(p["speed"] * t + ht * fwd, body.pelvis_height + ht * vert, ht * lat)
    torsion = -4 * rv * np.cos(2 * np.pi * phase_r) * deg  # pelvis rotation about the spine
    thorax = (
        periodic(
            phase_r, [(0.1, 4 / 3 * rv), (0.4, -1.5 * rv), (0.6, -4 / 3 * rv), (0.9, 1.5 * rv)]
        )
        * deg
    )
    lean = np.full_like(t, 3 * deg)
    return skeleton(body, pelvis, lean, thigh, shank, foot, upper, fore, torsion, thorax)


def run(t, p, body):
    """Running: flight phases, deep knee flexion in swing, arms bent ~80 deg.

    Boulic's model stops at rv = 3 (walking), so running uses joint curves read
    off running biomechanics (heel strike at phase 0, toe-off ~0.35); the hip
    range grows with speed so the swing foot reaches 2-2.5x the torso speed."""
    deg = np.pi / 180
    phase_r = t / p["cycle_s"] + p["phase0"]
    ph = np.stack([phase_r + 0.5, phase_r])
    a = 0.8 + 0.12 * (p["speed"] - 2.5)  # hip range grows with speed
    thigh = a * periodic(ph, [(0.0, 25), (0.3, -15), (0.42, -22), (0.85, 40)]) * deg
    knee = periodic(ph, [(0.0, 15), (0.15, 40), (0.35, 20), (0.7, 110 + 10 * a), (0.95, 20)])
    shank = thigh - knee * deg
    foot = shank + (90 + periodic(ph, [(0.0, 0), (0.2, 15), (0.4, -25), (0.7, 0)])) * deg
    upper = -0.9 * (thigh - 10 * a * deg) + p["lean"] * deg  # arms swing against the legs
    fore = upper + (80 + 15 * np.sin(2 * np.pi * (ph + 0.2))) * deg
    bounce = 0.03 * np.cos(4 * np.pi * (phase_r - 0.2))  # two flight phases per cycle
    pelvis = _pelvis(p["speed"] * t, body.pelvis_height - 0.05 + bounce)
    torsion = -10 * np.cos(2 * np.pi * phase_r) * deg
    lean = np.full_like(t, p["lean"] * deg)
    return skeleton(body, pelvis, lean, thigh, shank, foot, upper, fore, torsion, -torsion)


# ------------------------------------------------------------- transients


def _standing(t, body, pelvis, lean, upper, fore):
    """Feet planted under the origin, legs solved by IK under a moving pelvis."""
    ankle = _pelvis(np.zeros_like(t), np.full_like(t, body.ankle_height))
    th, sh = _leg_ik(pelvis, ankle, body)
    thigh, shank = _both(th), _both(sh)
    return skeleton(body, pelvis, lean, thigh, shank, shank + np.pi / 2, upper, fore)


def _sway(t, p, amp=0.01):
    """A person standing is never frozen: a slow postural sway of ~1 cm."""
    return amp * np.sin(2 * np.pi * p["sway_hz"] * t + p["phase0"] * 2 * np.pi)


def sit_down(t, p, body):
    """Pelvis moves back and down onto a chair while the trunk leans forward then back."""
    deg = np.pi / 180
    s = ramp(t, p["onset"], p["duration"])
    s_late = ramp(
        t, p["onset"] + 0.15 * p["duration"], 0.85 * p["duration"]
    )  # sink after the lean starts
    lean_bump = bump(t, p["onset"], 0.45 * p["duration"], 0.0, 0.55 * p["duration"])
    x = -p["back"] * s_late + _sway(t, p)
    z = body.pelvis_height - (body.pelvis_height - p["seat"]) * s_late
    lean = (p["lean"] * lean_bump + 10 * s) * deg
    upper = _both(lean + 25 * deg * lean_bump)
    fore = upper + 15 * deg
    return _standing(t, body, _pelvis(x, z), lean, upper, fore)


def stand_up(t, p, body):
    """The time reverse of sit_down with the same parameters: the same person, the same chair."""
    joints = sit_down(t[0] + t[-1] - t, p, body)  # t -> T - t on the same grid
    return joints


def pick_up(t, p, body):
    """Bend down (trunk pitches forward, knees give), reach, come back up: two Doppler
    lobes of opposite sign because the head and trunk move toward then away."""
    deg = np.pi / 180
    b = bump(t, p["onset"], p["down_s"], p["hold_s"], p["up_s"])
    x = -p["back"] * b + _sway(t, p)
    z = body.pelvis_height - p["squat"] * b
    lean = p["lean"] * deg * b
    upper = _both(lean + 10 * deg * b)  # arms hang towards the floor
    return _standing(t, body, _pelvis(x, z), lean, upper, upper + 10 * deg)


def fall(t, p, body):
    """One transient: the body pivots about the feet (forward or backward) and hits the
    floor; afterwards it lies still. The angle profile is min_jerk(s^1.4): it starts
    slowly like a toppling pendulum and stops late and fast."""
    deg = np.pi / 180
    s = np.clip((t - p["onset"]) / p["duration"], 0.0, 1.0)
    gamma = p["direction"] * p["angle"] * deg * min_jerk(s**1.4)  # (T,) pitch about the ankles
    arms = _both(90 * deg * p["direction"] * ramp(t, p["onset"] + 0.1, 0.5 * p["duration"]))
    knee = 25 * deg * ramp(t, p["onset"], p["duration"])
    pelvis = _pelvis(_sway(t, p) * (1 - s), body.pelvis_height - body.leg * (1 - np.cos(knee)) / 2)
    j = _standing(t, body, pelvis, 0 * t, arms, arms + 20 * deg)
    c, sn = np.cos(gamma), np.sin(gamma)  # rigid pitch about the ankle line
    for name, q in j.items():
        x, z = q[:, 0], q[:, 2] - body.ankle_height
        j[name] = np.stack([c * x + sn * z, q[:, 1], -sn * x + c * z + body.ankle_height], axis=-1)
    return j


def hermite5(s, p0, p1, v0, v1, duration):
    """Quintic Hermite on s in [0, 1]: position p0 -> p1, velocity v0 -> v1 (per second),
    zero acceleration at both ends; min_jerk is the special case v0 = v1 = 0."""
    s2, s3 = s * s, s**3
    h01 = s3 * (10 - 15 * s + 6 * s2)
    h10 = s - 6 * s3 + 8 * s3 * s - 3 * s3 * s2
    h11 = -4 * s3 + 7 * s3 * s - 3 * s3 * s2
    return p0 + (p1 - p0) * h01 + duration * (h10 * v0 + h11 * v1)


def jump(t, p, body):
    """Counter-movement jumps, each: crouch (arms back) -> push-off to the take-off
    speed v0 -> ballistic flight 2 v0 / g -> landing absorbed by the knees -> stand.

    Each phase is a quintic Hermite piece matching position and velocity of its
    neighbours (flight is the parabola), so the pelvis path is C1 across
    take-off and landing; the feet are solved by IK: planted, carried rigidly
    under the pelvis in flight, planted again where they land."""
    deg = np.pi / 180
    h = body.pelvis_height
    x, z = np.zeros_like(t), np.zeros_like(t)  # pelvis offsets from standing over the origin
    ax, az = np.zeros_like(t), np.full_like(t, body.ankle_height)  # ankle line
    arm, lean = np.zeros_like(t), np.zeros_like(t)
    x_base = 0.0
    for k in range(p["n_jumps"]):
        t0 = p["onset"] + k * p["period_s"]
        tc, tp, tl, tr = p["crouch_s"], p["push_s"], p["land_s"], p["recover_s"]
        v0, u, d = p["takeoff_mps"], p["forward_mps"], p["depth"]
        tf = 2 * v0 / G
        dl = v0 * tl / 3  # landing depth: decelerating from v0 over tl
        edges = np.cumsum([t0, tc, tp, tf, tl, tr])
        xp, xf = u * tp / 2, u * tp / 2 + u * tf  # forward travel at take-off / landing
        pieces = [  # (z0, z1, vz0, vz1, x0, x1, vx0, vx1) per phase
            (0, -d, 0, 0, 0, 0, 0, 0),
            (-d, 0, 0, v0, 0, xp, 0, u),
            None,  # flight
            (0, -dl, -v0, 0, xf, xf + u * tl / 2, u, 0),
            (-dl, 0, 0, 0, xf + u * tl / 2, xf - xp, 0, 0),  # straighten up over the feet
        ]
        for i, piece in enumerate(pieces):
            m = (t >= edges[i]) & (t < edges[i + 1])
            tau = t[m] - edges[i]
            if piece is None:
                z[m] = v0 * tau - G * tau**2 / 2
                x[m] = x_base + xp + u * tau
                az[m] = body.ankle_height + z[m]  # legs hang rigidly under the pelvis
                ax[m] = x[m] - xp
                continue
            s = tau / (edges[i + 1] - edges[i])
            z0, z1, vz0, vz1, x0, x1, vx0, vx1 = piece
            z[m] = hermite5(s, z0, z1, vz0, vz1, edges[i + 1] - edges[i])
            x[m] = x_base + hermite5(s, x0, x1, vx0, vx1, edges[i + 1] - edges[i])
            ax[m] = x_base + (xf - xp if i >= 3 else 0.0)
        x_base += xf - xp  # standing again over the landing spot
        after = t >= edges[-1]
        x[after], ax[after] = x_base, x_base
        # arms: back during the crouch, swung forward-up through push-off and flight
        arm += -40 * bump(t, t0, tc, 0, tp + tf / 2) + 90 * bump(
            t, t0 + tc, tp + tf / 2, 0, tf / 2 + tl + tr
        )
        lean += 25 * bump(t, t0, tc, tp * 0.3, tp * 0.7) + 15 * bump(t, edges[3], tl * 0.5, 0, tr)
    pelvis = _pelvis(x, h + z)
    # A foot leaves and meets the floor over ~0.1 s, not instantly: smoothing the
    # planted -> flying -> planted ankle path removes its velocity steps.
    ankle = _pelvis(_smooth(ax, t, 0.1), _smooth(az, t, 0.1))
    th, sh = _leg_ik(pelvis, ankle, body)
    upper = _both(arm * deg)
    return skeleton(
        body,
        pelvis,
        lean * deg,
        _both(th),
        _both(sh),
        _both(sh + np.pi / 2),
        upper,
        upper + 20 * deg,
    )


def _smooth(x, t, width_s):
    """Hann-window moving average over width_s seconds (edges held)."""
    n = max(3, int(round(width_s / (t[1] - t[0]))) | 1)
    k = np.hanning(n + 2)[1:-1]
    xp = np.pad(x, n // 2, mode="edge")
    return np.convolve(xp, k / k.sum(), mode="valid")


def boxing(t, p, body):
    """Boxing in place: the trunk barely moves; fists alternate left / right in fast
    punches (extension ~0.1 s, peak hand speed 1.875 x travel / duration, 4-7 m/s)
    and slower retractions, from a guard with elbows bent ~120 deg."""
    deg = np.pi / 180
    guard_u, guard_e = 20.0, 120.0
    up = [np.full_like(t, guard_u), np.full_like(t, guard_u)]
    el = [np.full_like(t, guard_e), np.full_like(t, guard_e)]
    yaw = np.zeros_like(t)
    for k, (t0, ext, ret) in enumerate(p["punches"]):
        side = k % 2  # alternate left / right
        b = bump(t, t0, ext, 0.03, ret)
        up[side] = up[side] + (85 - guard_u) * b
        el[side] = el[side] - (guard_e - 5) * b
        yaw += (1 if side == 0 else -1) * -12 * b  # the shoulder drives the punch
    upper = np.stack(up) * deg
    fore = upper + np.stack(el) * deg
    x = 0.02 * np.sin(2 * np.pi * p["sway_hz"] * t)
    z = body.pelvis_height - 0.06 + 0.015 * np.sin(4 * np.pi * p["sway_hz"] * t + 1.0)
    pelvis = _pelvis(x, z)
    ankle = _pelvis(np.zeros_like(t), np.full_like(t, body.ankle_height))
    th, sh = _leg_ik(pelvis, ankle, body)
    lean = np.full_like(t, 8 * deg)
    return skeleton(
        body,
        pelvis,
        lean,
        _both(th),
        _both(sh),
        _both(sh + np.pi / 2),
        upper,
        fore,
        yaw * 0.5 * deg,
        yaw * deg,
    )


ACTIVITIES = {
    "walk": walk,
    "run": run,
    "jump": jump,
    "fall": fall,
    "sit_down": sit_down,
    "stand_up": stand_up,
    "pick_up": pick_up,
    "box": boxing,
}
