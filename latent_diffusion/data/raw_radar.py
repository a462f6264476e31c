"""Raw radar recordings -> micro-Doppler spectrograms in the simulator's convention.

Two kinds of recording (data=raw_radar, read by image_folder.py with `data.raw`):

  slow-time I/Q   1-D complex: a CW or pulse-Doppler radar sampled at data.raw.prf_hz
  FMCW data cube  (chirps, samples[, channels]) complex beat signal, one chirp every
                  data.raw.chirp_s (PRF = 1 / chirp_s)

in .npy / .npz / .mat / .h5 files, or the text .dat files of the Glasgow "Radar signatures
of human activities" set (read_glasgow_dat). The chain:

  FMCW: range FFT of each chirp (Hann, referenced to the chirp's middle; positive beat
        frequencies = ranges)
        -> range bins: data.raw.range_bins, or automatic: the bins whose *moving* energy
           (after a slow-time high-pass, so a wall or a table does not win) is within
           range_auto_db of the strongest, contiguous around it
        -> coherent sum over those bins (and the channels) -> a slow-time signal
  both: optional MTI: a 4th-order Butterworth high-pass on slow time at mti_hz, zero phase
        (the Glasgow scripts' butter(4, 0.0075, 'high') at 1 kHz PRF is mti_hz=3.75)
        -> windows of duration_s every hop_s (a long recording gives several spectrograms;
           one shorter than duration_s is zero-padded, and said)
        -> radar.spectrogram: the simulator's own STFT (Hann window_s, `size` frames centred
           on the window, rows = radial velocity from +v_max (approaching, top) to -v_max,
           20 log10 |S| / max clipped to the dynamic range and mapped to [0, 1]).

The Doppler sign: a target approaching the radar shortens its range, so its phase
exp(-j 4 pi R / lambda) advances: positive Doppler, top rows (as the simulator). An FMCW
beat signal with the opposite mixing convention shows mirrored images: data.flip_doppler.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latent_diffusion.data import radar as rad
from latent_diffusion.data.readers import mat_variables
from latent_diffusion.utils.errors import UserError

RAW_EXTS = (".dat", ".npy", ".npz", ".mat", ".h5", ".hdf5")
META_KEYS = ("prf_hz", "carrier_hz", "chirp_s", "bandwidth_hz")
GLASGOW_HEADER = (
    "carrier frequency (Hz)",
    "chirp duration (ms)",
    "samples per chirp",
    "bandwidth (Hz)",
)


@dataclass(frozen=True)
class RawRadar:
    """data.raw: how recordings become spectrograms (conf/data/raw_radar.yaml says each key)."""

    prf_hz: float | None = None
    carrier_hz: float | None = None
    chirp_s: float | None = None
    bandwidth_hz: float | None = None
    samples_per_chirp: int | None = None
    range_bins: tuple[int, int] | None = None
    range_auto_db: float = 10.0
    mti_hz: float = 0.0
    duration_s: float = 4.0
    hop_s: float | None = None
    window_s: float = 0.2
    v_max: float = 8.0

    @classmethod
    def make(cls, raw) -> RawRadar:
        fields = {f.name for f in dataclasses.fields(cls)}
        given = {k: v for k, v in dict(raw or {}).items() if k != "enabled" and v is not None}
        unknown = sorted(set(given) - fields)
        if unknown:
            raise UserError(f"data.raw: unknown option(s) {unknown}; valid: {sorted(fields)}")
        out = {}
        for k, v in given.items():
            try:
                if k == "range_bins":
                    lo, hi = (int(b) for b in v)
                    if not 0 <= lo <= hi:
                        raise ValueError
                    out[k] = (lo, hi)
                elif k == "samples_per_chirp":
                    out[k] = int(v)
                else:
                    out[k] = float(v)
            except (TypeError, ValueError):
                want = (
                    "[first, last] bin indices, 0 <= first <= last"
                    if k == "range_bins"
                    else "a number"
                )
                raise UserError(f"data.raw.{k}={v}: must be {want}") from None
        cfg = cls(**out)
        for k in ("duration_s", "window_s", "v_max", "range_auto_db"):
            if not getattr(cfg, k) > 0:
                raise UserError(f"data.raw.{k}={getattr(cfg, k)}: must be > 0")
        for k in ("prf_hz", "carrier_hz", "chirp_s", "bandwidth_hz", "hop_s", "samples_per_chirp"):
            v = getattr(cfg, k)
            if v is not None and not v > 0:
                raise UserError(f"data.raw.{k}={v}: must be > 0 (or null)")
        if cfg.mti_hz < 0:
            raise UserError(f"data.raw.mti_hz={cfg.mti_hz}: must be >= 0 (0 = no MTI)")
        if cfg.window_s >= cfg.duration_s:
            raise UserError(
                f"data.raw.window_s={cfg.window_s} must be shorter than duration_s={cfg.duration_s}"
            )
        return cfg


@dataclass
class Recording:
    """A loaded recording: samples (N,) slow-time I/Q or (chirps, samples, channels) cube."""

    samples: np.ndarray
    prf_hz: float
    carrier_hz: float
    bandwidth_hz: float | None = None
    kind: str = "iq"  # iq | fmcw


# ------------------------------------------------------------------ reading
def read_glasgow_dat(path: Path) -> tuple[np.ndarray, dict]:
    """The text .dat files of the Glasgow "Radar signatures of human activities" set (an
    Ancortek FMCW radar). Layout assumed, as the set's own MATLAB scripts read it
    (textscan '%f'): four header values, one per line, then one complex sample per line
    written as MATLAB does ('0.0012+0.0034i'):

      line 1  carrier frequency, Hz            (5.8e9)
      line 2  chirp (sweep) duration, ms       (1)
      line 3  samples per chirp                (128)
      line 4  bandwidth, Hz; 0 for a CW record (4e8)
      line 5- the samples, chirp after chirp (MATLAB's reshape(Data, [NTS nc]))

    Returns (samples (N,) complex128, header)."""
    try:
        text = path.read_text(encoding="ascii")
    except (UnicodeDecodeError, OSError) as err:
        raise UserError(
            f"{path}: not a text .dat file ({type(err).__name__}); the Glasgow layout is 4 header "
            "lines then one complex sample per line"
        ) from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) < 5:
        raise UserError(
            f"{path}: {len(lines)} lines; a Glasgow .dat file has 4 header lines "
            f"({', '.join(GLASGOW_HEADER)}) and then the complex samples"
        )
    header = []
    for i, (name, tok) in enumerate(zip(GLASGOW_HEADER, lines[:4], strict=True)):
        try:
            header.append(float(tok))
        except ValueError:
            raise UserError(
                f"{path}: malformed header line {i + 1} '{tok[:40]}': expected the {name} as a "
                "real number; the 4 header lines are " + ", ".join(GLASGOW_HEADER)
            ) from None
    fc, sweep_ms, nts, bw = header
    if fc <= 0 or sweep_ms <= 0 or nts < 1 or nts != int(nts) or bw < 0:
        raise UserError(
            f"{path}: header values {header} are not a carrier > 0 Hz, a chirp > 0 ms, a whole "
            "number of samples per chirp and a bandwidth >= 0 Hz"
        )
    try:
        samples = np.array([complex(t.replace("i", "j")) for t in lines[4:]], np.complex128)
    except ValueError:
        bad = next(
            (k, t) for k, t in enumerate(lines[4:], start=5) if not _is_complex(t.replace("i", "j"))
        )
        raise UserError(
            f"{path}: line {bad[0]} '{bad[1][:40]}' is not a complex sample (e.g. 0.0012+0.0034i)"
        ) from None
    nts = int(nts)
    if bw > 0 and samples.size % nts:
        raise UserError(
            f"{path}: {samples.size} samples is not a whole number of chirps of {nts} samples "
            "(header line 3); the file is truncated or its header is wrong"
        )
    return samples, {"carrier_hz": fc, "chirp_s": sweep_ms / 1000.0, "samples_per_chirp": nts,
                     "bandwidth_hz": bw}  # fmt: skip


def _is_complex(t: str) -> bool:
    try:
        complex(t)
        return True
    except ValueError:
        return False


def _scalar(v) -> float | None:
    a = np.asarray(v)
    if a.dtype.kind in "biuf" and a.size == 1:
        return float(a.reshape(()))
    return None


def _as_complex(a: np.ndarray, path: Path, key: str) -> np.ndarray:
    """Complex samples from a complex array, an HDF5 compound (real, imag), or a real array
    whose last axis of 2 is (I, Q)."""
    if a.dtype.names and {"real", "imag"} <= set(a.dtype.names):  # MATLAB v7.3 / h5py compound
        return a["real"] + 1j * a["imag"]
    if a.dtype.kind == "c":
        return a.astype(np.complex128)
    if a.dtype.kind in "iuf" and a.ndim >= 1 and a.shape[-1] == 2:
        return a[..., 0].astype(np.float64) + 1j * a[..., 1]
    raise UserError(
        f"{path}: '{key}' {a.shape} {a.dtype} is not complex I/Q; save complex samples, or real "
        "ones with a last axis of 2 (I, Q)"
    )


def _named_arrays(path: Path) -> dict[str, np.ndarray]:
    ext = path.suffix.lower()
    if ext == ".npy":
        return {"array": np.load(path, allow_pickle=False)}
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if ext == ".mat":
        return mat_variables(path)
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        out.update({k: np.asarray(v) for k, v in f.attrs.items()})
        f.visititems(
            lambda k, v: out.__setitem__(k, v[()]) if isinstance(v, h5py.Dataset) else None
        )
    return out


def read_recording(path: Path, raw: RawRadar, variable: str | None = None) -> Recording:
    """A raw file -> Recording. Parameters come from the file (Glasgow header; npz / mat / h5
    entries or attributes named prf_hz, carrier_hz, chirp_s, bandwidth_hz) or, where it has
    none, from data.raw. Every error names the file and the key that fixes it."""
    path = Path(path)
    meta: dict[str, float] = {}
    if path.suffix.lower() == ".dat":
        a, head = read_glasgow_dat(path)
        if head["bandwidth_hz"] > 0:
            a = a.reshape(-1, head["samples_per_chirp"])  # (chirps, samples)
            meta = {"carrier_hz": head["carrier_hz"], "chirp_s": head["chirp_s"],
                    "bandwidth_hz": head["bandwidth_hz"]}  # fmt: skip
        else:  # CW: one sample every chirp_s / samples_per_chirp
            meta = {"carrier_hz": head["carrier_hz"],
                    "prf_hz": head["samples_per_chirp"] / head["chirp_s"]}  # fmt: skip
    else:
        try:
            named = _named_arrays(path)
        except Exception as err:  # numpy / scipy / h5py raise many types for a bad file
            raise UserError(
                f"cannot read {path}: {type(err).__name__}: {err}; the file is corrupt, truncated "
                "or not what its extension says: replace or remove it (or set data.strict=false "
                "to skip it)"
            ) from None
        meta = {k: s for k in META_KEYS if k in named and (s := _scalar(named[k])) is not None}
        arrays = {k: np.asarray(v) for k, v in named.items() if k not in meta and np.size(v) > 1}
        if variable is not None:
            if variable not in arrays:
                raise UserError(
                    f"{path} has no array '{variable}'; it holds {sorted(arrays)} (data.variable)"
                )
            key = variable
        elif len(arrays) == 1:
            key = next(iter(arrays))
        else:
            shapes = ", ".join(f"'{k}' {v.shape}" for k, v in arrays.items())
            raise UserError(
                f"{path} holds {'no' if not arrays else 'several'} arrays that could be the "
                f"recording ({shapes or 'none'}); name it with data.variable=<name>"
            )
        a = _as_complex(arrays[key], path, key)
    values = {k: meta.get(k, getattr(raw, k)) for k in META_KEYS}
    if a.ndim == 1:
        kind = "iq"
        need = {"prf_hz": "the sample rate of the slow-time I/Q", "carrier_hz": "the carrier"}
    elif a.ndim in (2, 3):
        kind = "fmcw"
        need = {"chirp_s": "the chirp repetition interval", "carrier_hz": "the carrier"}
        if raw.samples_per_chirp is not None and a.shape[1] != raw.samples_per_chirp:
            raise UserError(
                f"{path}: the cube is {a.shape} (chirps, samples[, channels]) but "
                f"data.raw.samples_per_chirp={raw.samples_per_chirp}; a cube saved samples x "
                "chirps needs a transpose, or fix the setting"
            )
        if a.shape[0] < 2:
            raise UserError(f"{path}: the cube {a.shape} holds fewer than 2 chirps")
    else:
        raise UserError(
            f"{path}: a {a.ndim}-D array {a.shape}; expected 1-D slow-time I/Q or an FMCW cube "
            "(chirps, samples[, channels])"
        )
    missing = [k for k in need if values[k] is None and not (k == "chirp_s" and values["prf_hz"])]
    if missing:
        raise UserError(
            f"{path}: {kind} recording without {' and '.join(need[k] for k in missing)}; set "
            + " and ".join(f"data.raw.{k}" for k in missing)
            + " (or store them in the file under those names)"
        )
    prf = values["prf_hz"] if kind == "iq" or not values["chirp_s"] else 1.0 / values["chirp_s"]
    if kind == "fmcw" and a.ndim == 2:
        a = a[:, :, None]
    if not np.isfinite(a).all():
        raise UserError(f"{path}: the recording holds NaN or infinite samples")
    return Recording(a, float(prf), float(values["carrier_hz"]), values["bandwidth_hz"], kind)


# ------------------------------------------------------------------ processing
def _highpass(x: np.ndarray, cutoff_hz: float, prf_hz: float) -> np.ndarray:
    """4th-order Butterworth high-pass along axis 0 (slow time), zero phase."""
    from scipy.signal import butter, sosfiltfilt

    sos = butter(4, cutoff_hz / (prf_hz / 2), btype="highpass", output="sos")
    return sosfiltfilt(sos, x, axis=0)


def range_profiles(cube: np.ndarray) -> np.ndarray:
    """(chirps, samples, channels) beat signal -> (chirps, range bins, channels): Hann-tapered
    FFT of each chirp, phase-referenced to the chirp's middle sample; the positive beat
    frequencies (samples // 2 bins) are the ranges.

    Why the reference: a coherent sum of adjacent bins is the beat signal band-passed to
    those ranges and read at the reference instant. With the FFT's own reference (sample 0)
    that instant is where the taper is ~0, and leakage wins (measured: a 1 m/s target came
    out at 0 m/s); an untapered FFT (the Glasgow scripts') leaks a strong static reflector
    into every bin. At the middle sample the taper is 1: (-1)^k moves the reference there."""
    n = cube.shape[1]
    spec = np.fft.fft(cube * np.hanning(n)[None, :, None], axis=1)[:, : n // 2]
    return spec * ((-1.0) ** np.arange(n // 2))[None, :, None]


def pick_range_bins(profiles: np.ndarray, prf_hz: float, raw: RawRadar) -> tuple[int, int]:
    """data.raw.range_bins, or the contiguous bins around the strongest moving one whose
    moving energy is within range_auto_db of it. 'Moving' = above 1 Hz of Doppler (a 0.02
    m/s radial speed at 5.8 GHz): static clutter, often far stronger than a person, never
    wins."""
    n_bins = profiles.shape[1]
    if raw.range_bins is not None:
        lo, hi = raw.range_bins
        if hi >= n_bins:
            raise UserError(
                f"data.raw.range_bins={list(raw.range_bins)}: the recording has {n_bins} range "
                f"bins (0..{n_bins - 1})"
            )
        return lo, hi
    moving = _highpass(profiles, min(1.0, prf_hz / 8), prf_hz)
    energy = (np.abs(moving) ** 2).sum(axis=(0, 2))  # (bins,)
    energy[0] = 0.0  # the DC / leakage bin
    peak = int(np.argmax(energy))
    keep = energy >= energy[peak] * 10 ** (-raw.range_auto_db / 10)
    lo = hi = peak
    while lo > 0 and keep[lo - 1]:
        lo -= 1
    while hi < n_bins - 1 and keep[hi + 1]:
        hi += 1
    return lo, hi


def slow_time(rec: Recording, raw: RawRadar) -> tuple[np.ndarray, dict]:
    """Recording -> (slow-time signal (N,), what was chosen)."""
    info: dict = {"kind": rec.kind, "prf_hz": rec.prf_hz, "carrier_hz": rec.carrier_hz}
    if rec.kind == "fmcw":
        prof = range_profiles(rec.samples)
        lo, hi = pick_range_bins(prof, rec.prf_hz, raw)
        s = prof[:, lo : hi + 1].sum(axis=(1, 2))  # coherent sum over bins and channels
        info["range_bins"] = [lo, hi]
        if rec.bandwidth_hz:
            res = rad.C0 / (2 * rec.bandwidth_hz)  # range resolution, m per bin
            info["range_m"] = [round(lo * res, 3), round((hi + 1) * res, 3)]
    else:
        s = rec.samples
    if raw.mti_hz > 0:
        if raw.mti_hz >= rec.prf_hz / 2:
            raise UserError(
                f"data.raw.mti_hz={raw.mti_hz} is not below half the PRF ({rec.prf_hz / 2:g} Hz)"
            )
        s = _highpass(s, raw.mti_hz, rec.prf_hz)
    return s, info


def spectrograms(
    s: np.ndarray,
    prf_hz: float,
    carrier_hz: float,
    raw: RawRadar,
    size: int,
    dynamic_range_db: float,
) -> tuple[np.ndarray, dict]:
    """Slow-time signal -> (K, size, size) float32 in [0, 1]: one spectrogram per window of
    duration_s every hop_s (each window also holds half an STFT window either side, as the
    simulator renders)."""
    lam = rad.C0 / carrier_hz
    v_unamb = lam * prf_hz / 4
    if raw.v_max > v_unamb:
        raise UserError(
            f"data.raw.v_max={raw.v_max} m/s exceeds the unambiguous velocity lambda*PRF/4 = "
            f"{v_unamb:.2f} m/s of this recording (carrier {carrier_hz:g} Hz, PRF {prf_hz:g} Hz); "
            "lower data.raw.v_max"
        )
    n = int(round((raw.duration_s + raw.window_s) * prf_hz))
    hop = int(round((raw.hop_s or raw.duration_s) * prf_hz))
    padded = max(0, n - s.shape[0])
    if padded:
        s = np.concatenate([s, np.zeros(padded, s.dtype)])
    starts = range(0, s.shape[0] - n + 1, max(1, hop))
    imgs = np.stack(
        [
            rad.spectrogram(
                s[a : a + n], prf_hz, raw.window_s, lam, raw.v_max, dynamic_range_db, size
            )
            for a in starts
        ]
    )
    return imgs, {"windows": len(imgs), "padded_s": round(padded / prf_hz, 3),
                  "seconds_per_column": raw.duration_s / size,
                  "velocity_per_row_mps": 2 * raw.v_max / size}  # fmt: skip


def read_raw(
    path, raw: RawRadar, size: int, dynamic_range_db: float = 45.0, variable: str | None = None,
    flip_doppler: bool = False,
) -> tuple[np.ndarray, dict]:  # fmt: skip
    """One raw file -> ((K, size, size) spectrograms in [0, 1], info)."""
    rec = read_recording(Path(path), raw, variable)
    s, info = slow_time(rec, raw)
    imgs, more = spectrograms(s, rec.prf_hz, rec.carrier_hz, raw, size, dynamic_range_db)
    if flip_doppler:
        imgs = imgs[:, ::-1]
    return np.ascontiguousarray(imgs, np.float32), {**info, **more}


__all__ = ["RAW_EXTS", "RawRadar", "Recording", "read_glasgow_dat", "read_raw", "read_recording"]
