"""Radar side of the simulator: body joints -> baseband echo -> spectrogram image.

Echo model (Chen, *The Micro-Doppler Effect in Radar*, eq. 5.1 for a CW /
pulse-Doppler radar sampled at the PRF):

    s(t) = sum_k a_k(t) exp(-j 4 pi R_k(t) / lambda) + clutter + noise,
    a_k = sqrt(sigma_k) / R_k^2          (radar equation: power ~ sigma / R^4)

with sigma_k the RCS of segment k modelled as an ellipsoid seen under the aspect
angle theta between the line of sight and the segment axis (Chen eq. 5.4):

    sigma = pi a^4 c^2 / (a^2 sin^2 theta + c^2 cos^2 theta)^2

A limb segment is split in `SUB` scatterers along its length so that the
Doppler spread of a rotating limb (its distal end is faster) shows up.
The instantaneous Doppler of a scatterer is f_D = -2 dR/dt / lambda, positive
when it approaches. The spectrogram is an STFT magnitude in dB relative to its
maximum, clipped to [-D, 0] and mapped to [0, 1]; rows are radial velocity
(v = f_D lambda / 2, +v_max in row 0, i.e. approaching at the TOP), columns time.
"""

from __future__ import annotations

import functools

import numpy as np

from latent_diffusion.data.kinematics import SEGMENTS

C0 = 299_792_458.0  # speed of light, m/s
SUB = 2  # scatterers per limb segment (head: 1)


def scatterers(joints: dict[str, np.ndarray]):
    """Segment pieces as ellipsoids: centres (K, T, 3), unit axes (K, T, 3), half-lengths (K, 1),
    radii (K, 1)."""
    centres, axes, half, radii = [], [], [], []
    for name, a, b, r in SEGMENTS:
        pa, pb = joints[a], joints[b]
        seg = pb - pa  # (T, 3)
        length = np.linalg.norm(seg, axis=-1, keepdims=True)  # (T, 1)
        n = 1 if name == "head" else SUB
        for i in range(n):
            centres.append(pa + seg * ((i + 0.5) / n))
            axes.append(seg / np.maximum(length, 1e-9))
            half.append(float(length[0, 0]) / (2 * n))  # segments are rigid
            radii.append(r)
    return np.stack(centres), np.stack(axes), np.array(half)[:, None], np.array(radii)[:, None]


def ellipsoid_rcs(los, axis, a, c):
    """RCS (m^2) of a spheroid (semi-axes a, a, c) seen along unit vectors los (.., 3); Chen eq.
    5.4."""
    cos2 = np.clip(np.einsum("ktd,ktd->kt", los, axis) ** 2, 0.0, 1.0)
    sin2 = 1.0 - cos2
    return np.pi * a**4 * c**2 / (a**2 * sin2 + c**2 * cos2) ** 2


def upsample_cubic(x, factor):
    """(K, M) -> (K, (M - 3) * factor) by 4-tap cubic Lagrange interpolation between the
    middle two of every four samples; output sample j sits at input position 1 + j / factor.

    Body motion is below ~20 Hz, so ranges computed at PRF / 8 and interpolated
    are accurate to micrometres (error ~ h^4 max|R^(4)| / 384), a phase error of
    ~1e-3 rad; this makes the kinematics 8x cheaper."""
    r = np.arange(factor, dtype=x.dtype) / factor  # fractional positions in [0, 1) after tap 1
    # Lagrange weights for taps at -1, 0, 1, 2
    w = np.stack(
        [
            -r * (r - 1) * (r - 2) / 6,
            (r + 1) * (r - 1) * (r - 2) / 2,
            -(r + 1) * r * (r - 2) / 2,
            (r + 1) * r * (r - 1) / 6,
        ]
    )  # (4, factor)
    m = x.shape[1] - 3
    # Per output phase r, four contiguous multiply-adds (no BLAS: a multi-threaded BLAS
    # on such thin products is slower, badly so on a busy machine).
    out = np.empty((x.shape[0], m, factor), x.dtype)  # (K, m, factor)
    taps = [x[:, i : i + m] for i in range(4)]
    for r in range(factor):
        o = out[:, :, r]
        np.multiply(taps[0], w[0, r], out=o)
        for i in range(1, 4):
            o += taps[i] * w[i, r]
    return out.reshape(x.shape[0], m * factor)


def body_return(joints, pose, radar_pos, wavelength, factor=1):
    """Noise-free complex baseband return (T,) of body-frame joints (T_kin, 3) placed in the
    radar's frame by pose = (rot (3, 3), origin (3,)): world = body @ rot + origin.
    Joints are sampled every `factor` pulses (upsample_cubic: T_pulses = (T_kin - 3) * factor)."""
    centres, axes, half, radii = scatterers(joints)  # body frame
    rot, origin = pose
    rel = np.einsum("ktd,de->kte", centres, rot) + (
        origin - radar_pos
    )  # (K, T_kin, 3) from the radar
    axes = np.einsum("ktd,de->kte", axes, rot)
    rng_k = np.sqrt(np.einsum("ktd,ktd->kt", rel, rel))  # (K, T_kin) ranges R_k(t)
    los = rel / rng_k[..., None]
    sigma = ellipsoid_rcs(los, axes, radii, np.maximum(half, radii))  # (K, T_kin)
    amp = np.sqrt(sigma) / rng_k**2
    # Work in float32 from here: ranges are taken relative to the nearest one first
    # (< ~30 m), where float32 keeps ~3 um, i.e. ~1e-3 rad of phase at 5.8 GHz. The common
    # offset is a constant phase per body, which only matters between bodies: it is put back.
    r0 = rng_k.min()
    both = np.concatenate([rng_k - r0, amp]).astype(np.float32)  # (2K, T_kin)
    if factor > 1:
        both = upsample_cubic(both, factor)  # (2K, T) one BLAS call for ranges and amplitudes
    k = rng_k.shape[0]
    phase = both[:k] * np.float32(4 * np.pi / wavelength)  # (K, T) exp(-j 4 pi R / lambda)
    amp = both[k:]
    return np.einsum("kt,kt->t", amp, np.cos(phase)) - 1j * np.einsum(
        "kt,kt->t", amp, np.sin(phase)
    ), r0


def add_clutter_noise(body, p_body, snr_db, clutter_db, rng):
    """body (T,) + a stationary reflector at clutter_db and white noise at snr_db, both
    relative to the power p_body of the person of interest."""
    t = body.shape[0]
    # Clutter: a stationary reflector with a slow, small amplitude wander (a few
    # percent), which broadens the zero-Doppler line by a fraction of a bin.
    wander = 1 + 0.03 * np.cumsum(rng.standard_normal(t)) / np.sqrt(t)
    clutter = np.sqrt(p_body * 10 ** (clutter_db / 10)) * np.exp(2j * np.pi * rng.random()) * wander
    noise_sd = np.sqrt(p_body * 10 ** (-snr_db / 10) / 2)
    noise = noise_sd * rng.standard_normal(2 * t).view(np.complex128)  # (re, im) pairs
    return body + clutter + noise


def echo(joints, pose, radar_pos, wavelength, snr_db, clutter_db, rng, factor=1):
    """Complex baseband returns sampled at the PRF (body_return + add_clutter_noise).

    snr_db: mean body return power over noise power per pulse.
    clutter_db: stationary (zero-Doppler) return power relative to the body return;
    no 2-pulse canceller is applied, so slow activities keep their low-Doppler
    energy (sitting down, standing up and picking up are mostly slow motion)."""
    body, _ = body_return(joints, pose, radar_pos, wavelength, factor)
    return add_clutter_noise(body, float(np.mean(np.abs(body) ** 2)), snr_db, clutter_db, rng)


@functools.lru_cache(maxsize=16)
def _velocity_resampler(nfft, prf_hz, wavelength, v_max, rows):
    """Antialiasing resize along Doppler: each image row integrates the FFT power over its
    velocity band (triangle weights of width 2 rows), row 0 = +v_max. Returned sparse as
    (bins (rows, taps), weights (rows, taps)) into the fftshift-ed spectrum."""
    f = np.fft.fftshift(np.fft.fftfreq(nfft, 1.0 / prf_hz))
    v = f * wavelength / 2.0  # radial velocity of each FFT bin
    dv = 2.0 * v_max / rows
    centres = v_max - dv * (np.arange(rows) + 0.5)
    w = np.clip(1.0 - np.abs(v[None, :] - centres[:, None]) / dv, 0.0, None)  # (rows, nfft)
    w = w / w.sum(axis=1, keepdims=True)
    taps = int((w > 0).sum(axis=1).max())
    bins = np.argsort(-w, axis=1, kind="stable")[:, :taps]  # the non-zero weights of each row
    return bins, np.take_along_axis(w, bins, axis=1)


def spectrogram(s, prf_hz, window_s, wavelength, v_max, dynamic_range_db, size):
    """s: (N,) samples covering [-window/2, T + window/2]. Returns (size, size) float32 in
    [0, 1]: `size` STFT frames centred at (i + 0.5) T / size, Hann window of
    window_s, velocity rows from +v_max (top) to -v_max."""
    win = int(round(window_s * prf_hz))
    n_cols = size
    span = s.shape[0] - win
    starts = np.round((np.arange(n_cols) + 0.5) * span / n_cols).astype(int)  # frame starts
    frames = s[starts[:, None] + np.arange(win)[None, :]] * np.hanning(win)  # (W, win)
    # FFT length: at least 2 bins per image row so the row integration antialiases
    f_row = 2 * (2 * v_max / size) / wavelength  # Doppler width of one row, Hz
    nfft = int(2 ** np.ceil(np.log2(max(win, 2 * prf_hz / f_row))))
    spec = np.fft.fftshift(np.fft.fft(frames, n=nfft, axis=1), axes=1)  # (W, nfft)
    power = np.abs(spec) ** 2
    bins, weights = _velocity_resampler(nfft, float(prf_hz), float(wavelength), float(v_max), size)
    img = np.einsum("whk,hk->hw", power[:, bins], weights)  # (H, W): sparse row integration
    db = 10 * np.log10(np.maximum(img, 1e-30) / max(img.max(), 1e-30))
    return ((np.clip(db, -dynamic_range_db, 0.0) + dynamic_range_db) / dynamic_range_db).astype(
        np.float32
    )
