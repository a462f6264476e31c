"""The built-in micro-Doppler simulator: the default data set (no download).

One sample = one person doing one activity for `duration_s` in front of a CW /
pulse-Doppler radar: kinematics.py moves a 12-segment body, radar.py turns the
segments into ellipsoid scatterers, sums their echoes and makes the
spectrogram. Everything random about a sample (height, speed, aspect angle,
facing direction, range, onset, SNR, clutter, activity timings) is drawn from
one generator seeded by (base_seed, split_id, class_idx, index), so sample i is
the same whatever the worker count, order or class subset; train / val / test
use disjoint split ids and so act like disjoint subjects.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import multiprocessing as mp
import os
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from latent_diffusion.data import kinematics as kin
from latent_diffusion.data import radar as rad
from latent_diffusion.data import scene as scenes
from latent_diffusion.data.source import SPLITS, register_source
from latent_diffusion.utils.errors import UserError
from latent_diffusion.utils.io import atomic_write_bytes, atomic_write_json, stable_hash

log = logging.getLogger(__name__)

CLASSES = ("walk", "run", "jump", "fall", "sit_down", "stand_up", "pick_up", "box")
SIM_VERSION = 2  # bump when the physics changes: it is part of every cache key
KIN_DECIMATION = 4  # kinematics at PRF / 4 (250 Hz), ranges interpolated (radar.upsample_cubic)
SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}  # disjoint seed streams


@dataclass(frozen=True)
class RadarConfig:
    carrier_hz: float = 5.8e9  # ISM C-band, common in micro-Doppler HAR sets; lambda = 5.2 cm
    prf_hz: float = 1000.0  # unambiguous +-lambda PRF / 4 = +-12.9 m/s covers a sprinting foot
    duration_s: float = 4.0  # long enough for 2-4 gait cycles or one transient with rest around it
    window_s: float = 0.2  # Hann STFT window: ~5 Hz (0.13 m/s) resolution, short vs a 0.5 s step
    v_max: float = 8.0  # crop +-8 m/s: human limbs rarely exceed it at walking / running aspect
    dynamic_range_db: float = 45.0  # keeps limbs (-20..-35 dB) above the clip, noise near it

    @property
    def wavelength(self) -> float:
        return rad.C0 / self.carrier_hz

    @classmethod
    def make(cls, radar) -> RadarConfig:
        if radar is None:
            return cls()
        if isinstance(radar, RadarConfig):
            return radar
        fields = {f.name for f in dataclasses.fields(cls)}
        given = {k: v for k, v in dict(radar).items() if v is not None}  # null = default
        unknown = set(given) - fields
        if unknown:
            raise UserError(
                f"unknown radar option(s) {sorted(unknown)}; valid: {sorted(fields)} (data.radar)"
            )
        try:
            cfg = cls(**{k: float(v) for k, v in given.items()})
        except (TypeError, ValueError) as err:
            raise UserError(f"radar options {given} must be numbers: {err}") from None
        if min(dataclasses.astuple(cfg)) <= 0 or cfg.window_s >= cfg.duration_s:
            raise UserError(f"radar options must be positive with window_s < duration_s, got {cfg}")
        if cfg.v_max > cfg.wavelength * cfg.prf_hz / 4:
            raise UserError(
                f"radar.v_max={cfg.v_max} exceeds the unambiguous velocity lambda*PRF/4="
                f"{cfg.wavelength * cfg.prf_hz / 4:.2f} m/s; raise prf_hz or lower v_max"
            )
        return cfg


# ------------------------------------------------------------ parameters


def draw_params(
    cls_name: str, rng: np.random.Generator, radar: RadarConfig, subject: dict | None = None
) -> dict:
    """Everything random about one sample, as a JSON-able dict (stored in metadata).
    subject: body traits of a known person (the hard preset, scene.py) instead of a fresh one."""
    u = rng.uniform
    T = radar.duration_s
    p = {
        "height": u(1.55, 1.95),
        "aspect_deg": u(-45, 45),  # heading vs line of sight
        "facing": "toward" if rng.random() < 0.5 else "away",
        "radar_height": u(0.8, 1.3),
        "range_m": u(3.0, 8.0),
        "snr_db": u(15, 32),
        "clutter_db": u(-25, -5),  # stationary return vs body return
        "phase0": u(0, 1),
        "sway_hz": u(0.2, 0.5),
        "speed": 0.0,
    }
    if subject is not None:
        p.update({k: subject[k] for k in ("height", "leg_scale", "arm_scale")})
    body = scenes.body_of(p)
    if cls_name == "walk":
        p["speed"] = u(0.6, 1.7)
        p["cycle_s"] = 1.346 / np.sqrt(p["speed"] / body.leg)  # Boulic: RL_c = 1.346 sqrt(rv)
    elif cls_name == "run":
        p["speed"] = u(2.5, 5.0)
        p["cycle_s"] = u(0.66, 0.80) - 0.03 * (p["speed"] - 2.5)
        p["lean"] = u(5, 15)
    elif cls_name == "jump":
        p.update(
            crouch_s=u(0.3, 0.5),
            push_s=u(0.15, 0.25),
            takeoff_mps=u(1.8, 2.8),
            land_s=u(0.2, 0.3),
            recover_s=u(0.4, 0.6),
            forward_mps=u(0.3, 1.5),
            depth=u(0.15, 0.28),
        )
        period = (
            p["crouch_s"]
            + p["push_s"]
            + 2 * p["takeoff_mps"] / kin.G
            + p["land_s"]
            + p["recover_s"]
        )
        p["period_s"] = period + u(0.1, 0.4)
        p["onset"] = u(0.1, 0.6)
        p["n_jumps"] = 2 if p["onset"] + p["period_s"] + period < T else 1
    elif cls_name == "fall":
        p["duration"] = u(0.6, 1.2)
        p["onset"] = u(0.3, T - 1.0 - p["duration"])  # >= 1 s of lying still at the end
        p["angle"] = u(80, 95)
        p["direction"] = 1.0 if rng.random() < 0.5 else -1.0  # forward / backward
    elif cls_name in ("sit_down", "stand_up"):
        p["duration"] = u(1.5, 2.5)
        p["onset"] = u(0.2, T - 0.3 - p["duration"])
        p["seat"] = body.ankle_height + body.shank * u(0.95, 1.1)
        p["back"] = body.thigh * u(0.6, 0.85)
        p["lean"] = u(30, 45)
    elif cls_name == "pick_up":
        p.update(down_s=u(0.8, 1.3), hold_s=u(0.2, 0.6), up_s=u(0.8, 1.3), lean=u(60, 95))
        p.update(back=u(0.05, 0.2), squat=u(0.02, 0.25))
        p["onset"] = u(0.1, max(0.15, T - 0.2 - p["down_s"] - p["hold_s"] - p["up_s"]))
    elif cls_name == "box":
        punches, t0 = [], u(0.05, 0.5)
        while t0 < T:
            ext, ret = u(0.12, 0.2), u(0.18, 0.3)
            punches.append((t0, ext, ret))
            t0 += ext + 0.03 + ret + u(0.05, 0.35)
        p["punches"] = punches
        p["sway_hz"] = u(1.0, 2.0)  # boxers bounce
    else:
        raise UserError(f"unknown activity class '{cls_name}'; choose from {list(CLASSES)}")
    # Translating gaits start far enough away that they never reach the radar, and a
    # runner keeps a narrower aspect so the line of sight does not swing by 60+ deg.
    travel = p["speed"] * T
    if cls_name == "run":
        p["aspect_deg"] *= 0.6
        p["range_m"] += 0.3 * travel
    if p["facing"] == "toward":
        p["range_m"] += travel * np.cos(np.radians(p["aspect_deg"]))
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in p.items()}


# ---------------------------------------------------------------- rendering


def render(
    cls_name: str,
    p: dict,
    radar: RadarConfig,
    image_size: int,
    rng: np.random.Generator,
    hard: bool = False,
):
    """Kinematics -> echo -> spectrogram for drawn parameters p. Returns (H, W) float32 in [0, 1]
    and adds the measured torso radial velocity (m/s, + approaching) to p."""
    s = echo_of(cls_name, p, radar, rng, hard)
    img = rad.spectrogram(
        s, radar.prf_hz, radar.window_s, radar.wavelength, radar.v_max, radar.dynamic_range_db,
        image_size,
    )  # fmt: skip
    return img, p


def echo_of(
    cls_name: str, p: dict, radar: RadarConfig, rng: np.random.Generator, hard: bool = False
) -> np.ndarray:
    """Kinematics -> the slow-time I/Q a CW radar at the PRF records: (N,) complex over
    duration_s plus half an STFT window either side. Adds the measured torso radial velocity
    (m/s, + approaching) to p."""
    lam, prf = radar.wavelength, radar.prf_hz
    n = int(round((radar.duration_s + radar.window_s) * prf))  # pulses: frames centred on [0, T]
    # Kinematics every KIN_DECIMATION pulses (+1 sample before, 2 after for the cubic
    # interpolation in radar.echo): pulse j sits at t = j / prf - window / 2.
    m = -(-n // KIN_DECIMATION) + 3
    t = (np.arange(m) - 1) * KIN_DECIMATION / prf - radar.window_s / 2
    body = scenes.body_of(p)
    joints = kin.ACTIVITIES[cls_name](t, p, body)  # name -> (T, 3), body frame
    # Body frame -> radar frame: the person starts at (range, 0) on the x axis; heading
    # makes aspect_deg with the line of sight, towards or away from the radar.
    a = np.radians(p["aspect_deg"])
    sign = -1.0 if p["facing"] == "toward" else 1.0
    fwd = sign * np.array([np.cos(a), np.sin(a), 0.0])
    left = np.array([-fwd[1], fwd[0], 0.0])
    up = np.array([0.0, 0.0, 1.0])
    rot = np.stack([fwd, left, up])  # rows: body axes in world coordinates
    start = np.array([p["range_m"], 0.0, 0.0])
    radar_pos = np.array([0.0, 0.0, p["radar_height"]])
    torso = np.einsum("td,de->te", (joints["pelvis"] + joints["neck"]) / 2, rot) + start - radar_pos
    dt = KIN_DECIMATION / prf
    p["torso_radial_mps"] = float(np.median(-np.gradient(np.linalg.norm(torso, axis=1), dt)))
    if hard:
        s = scenes.scene_echo(joints, t, p, radar_pos, lam, prf, n, rng, KIN_DECIMATION)
    else:
        s = rad.echo(
            joints, (rot, start), radar_pos, lam, p["snr_db"], p["clutter_db"], rng, KIN_DECIMATION
        )[:n]
    return s


def sample_seed(base_seed: int, split: str, cls_name: str, index: int) -> list[int]:
    """Seed of one sample; class index is into CLASSES so subsets keep their samples."""
    return [int(base_seed), SPLIT_IDS[split], CLASSES.index(cls_name), int(index)]


def simulate_one(
    cls_name: str,
    seed,
    image_size: int = 64,
    radar: RadarConfig | dict | None = None,
    hard: scenes.HardScene | None = None,
):
    """One spectrogram: (H, W) float32 in [0, 1] (row 0 = +v_max, approaching) and its parameters.
    hard: the hard preset's scene (scene.py); None = the easy default."""
    radar, rng, p = _drawn(cls_name, seed, radar, hard)
    return render(cls_name, p, radar, image_size, rng, hard=hard is not None)


def simulate_recording(
    cls_name: str,
    seed,
    radar: RadarConfig | dict | None = None,
    hard: scenes.HardScene | None = None,
) -> tuple[np.ndarray, dict]:
    """The raw recording behind simulate_one's image: (slow-time I/Q (N,) complex128 at
    radar.prf_hz over duration_s + window_s, parameters). data/raw_radar.py turns it into
    simulate_one's image, bit for bit."""
    radar, rng, p = _drawn(cls_name, seed, radar, hard)
    return echo_of(cls_name, p, radar, rng, hard=hard is not None), p


def _drawn(cls_name, seed, radar, hard):
    """(radar, the sample's generator after drawing its parameters, the parameters)."""
    if cls_name not in CLASSES:
        raise UserError(f"unknown activity class '{cls_name}'; choose from {list(CLASSES)}")
    radar = RadarConfig.make(radar)
    rng = np.random.default_rng(seed)
    p = draw_params(
        cls_name, rng, radar, scenes.subject_of(seed, hard)[1] if hard is not None else None
    )
    if hard is not None:
        p = scenes.harden(p, cls_name, seed, hard, rng, radar.duration_s)
    return radar, rng, p


def _simulate_task(args):
    cls_name, seed, image_size, radar, hard, recording = args
    if recording:
        s, p = simulate_recording(cls_name, seed, radar, hard)
        return s.astype(np.complex64), p
    img, p = simulate_one(cls_name, seed, image_size, radar, hard)
    return quantize(img), p


def quantize(img: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint16; cached and in-memory pixels go through it alike."""
    return np.round(np.clip(img, 0, 1) * 65535).astype(np.uint16)


# A pool that returns no chunk for this long is taken as stuck (a spectrogram takes well
# under a second; a chunk is at most CHUNK of them).
STALL_S = 120.0
CHUNK = 32


def _simulate_chunk(chunk: list) -> list:
    return [_simulate_task(t) for t in chunk]


def _pooled(tasks: list, workers: int) -> list:
    """The tasks' results in order from a process pool, as far as the pool got. A forked
    worker can deadlock on a lock that another thread of this process held at the fork
    (`generate`'s thread check misses the threads C++ libraries start), and a dead worker
    leaves multiprocessing.Pool.map waiting for ever (this executor raises instead). Both end
    the pool: its workers are killed and the caller simulates the rest in this process."""
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    size = max(1, min(CHUNK, len(tasks) // (8 * workers)))
    out: list = []
    pool = ProcessPoolExecutor(workers, mp_context=ctx)
    try:
        chunks = [
            pool.submit(_simulate_chunk, tasks[i : i + size]) for i in range(0, len(tasks), size)
        ]
        for chunk in chunks:
            out += chunk.result(timeout=STALL_S)
    except (TimeoutError, BrokenProcessPool) as e:
        why = f"returned nothing for {STALL_S:.0f} s" if isinstance(e, TimeoutError) else "died"
        log.warning(
            "a simulator worker process %s: simulating the remaining %d of %d spectrograms in "
            "this process",
            why,
            len(tasks) - len(out),
            len(tasks),
        )
        # a stuck worker never exits on its own; killing it breaks the pool, and the
        # executor then stops the others and its own threads
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.kill()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def generate(
    classes, counts, split, base_seed, image_size, radar, workers=0, hard=None, recordings=False
):
    """Pixels (N, H, W) uint16, labels (N,) int64 (index into `classes`), params list.
    recordings=True: the slow-time I/Q behind each image (N, samples) complex64 instead.

    Order: class by class, index 0..n-1. workers > 1 maps the same tasks over a
    process pool; results come back in task order, so the arrays are identical."""
    radar = RadarConfig.make(radar)
    tasks, labels = [], []
    for label, c in enumerate(classes):
        for i in range(counts):
            seed = sample_seed(base_seed, split, c, i)
            tasks.append((c, seed, image_size, radar, hard, recordings))
            labels.append(label)
    if workers and workers > 1 and len(tasks) > 1 and threading.active_count() > 1:
        # A fork copies only the calling thread: a lock another Python thread holds at that
        # moment (a logger's, a stream's) stays locked in the workers for ever (seen: a
        # pool forked beside wandb's threads hung). spawn / forkserver would re-run the
        # caller's main module in every worker, which an unguarded script cannot take.
        log.info(
            "simulating in this process: %d threads are running, and a fork could deadlock",
            threading.active_count(),
        )
        workers = 0
    out = _pooled(tasks, workers) if workers and workers > 1 and len(tasks) > 1 else []
    out += [_simulate_task(t) for t in tasks[len(out) :]]
    empty = np.zeros((0, image_size, image_size), np.uint16)
    pix = np.stack([o[0] for o in out]) if out else empty
    return pix, np.asarray(labels, np.int64), [o[1] for o in out]


# ------------------------------------------------------------------ source


class SimulatedSplit(Dataset):
    """(x (1, H, W) float32 in [-1, 1], y int) over cached uint16 pixels."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, params: list[dict]):
        self.pixels, self.labels, self.params = pixels, labels, params

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = torch.from_numpy(self.pixels[i].astype(np.float32) / 65535.0)[None] * 2 - 1
        return x, int(self.labels[i])


@register_source("microdoppler")
class MicroDopplerSource:
    channels = 1

    def __init__(
        self,
        n_per_class: int = 200,
        image_size: int = 64,
        seed: int = 0,
        classes=None,
        radar=None,
        val_per_class: int | None = None,
        test_per_class: int | None = None,
        cache_dir: str | None = None,
        workers: int | None = None,
        preset: str = "easy",
        scene: dict | None = None,
    ):
        classes = list(CLASSES) if classes is None else [str(c) for c in classes]
        bad = [c for c in classes if c not in CLASSES]
        if bad or not classes or len(set(classes)) != len(classes):
            raise UserError(
                f"data.classes={classes}: unknown or repeated class {bad or classes}; choose from "
                f"{list(CLASSES)}"
            )
        if not isinstance(image_size, int) or image_size < 16 or image_size > 512 or image_size % 8:
            raise UserError(
                f"data.image_size={image_size!r} must be a multiple of 8 in [16, 512] (64 or 128)"
            )
        if int(n_per_class) < 1:
            raise UserError(f"data.n_per_class={n_per_class} must be >= 1")
        default_eval = max(8, int(n_per_class) // 8)
        if preset not in ("easy", "hard"):
            raise UserError(
                f"data.preset={preset!r}: choose easy (the default) or hard "
                f"(data=microdoppler_hard)"
            )
        if scene and preset != "hard":
            raise UserError(
                "data.scene is the hard preset's scene: set data.preset=hard "
                "(data=microdoppler_hard)"
            )
        self.hard = scenes.HardScene.make(scene) if preset == "hard" else None
        self.class_names = classes
        self.image_size = image_size
        self.seed = int(seed)
        self.radar = RadarConfig.make(radar)
        self.counts = {
            "train": int(n_per_class),
            "val": default_eval if val_per_class is None else int(val_per_class),
            "test": default_eval if test_per_class is None else int(test_per_class),
        }
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        # None: a process per core (at most 8) for splits big enough to pay the pool start-up
        self.workers = min(8, os.cpu_count() or 1) if workers is None else int(workers)
        self._splits: dict[str, SimulatedSplit] = {}

    def fingerprint(self) -> dict:
        fp = {
            "simulator_version": SIM_VERSION,
            "classes": self.class_names,
            "counts": self.counts,
            "image_size": self.image_size,
            "seed": self.seed,
            "radar": dataclasses.asdict(self.radar),
        }
        if self.hard is not None:  # absent for the easy preset: its caches keep their keys
            fp["scene"] = dataclasses.asdict(self.hard)
        return fp

    def _generate(self, name):
        n = self.counts[name] * len(self.class_names)
        workers = self.workers if n >= 64 else 0
        return generate(
            self.class_names,
            self.counts[name],
            name,
            self.seed,
            self.image_size,
            self.radar,
            workers,
            self.hard,
        )

    def split(self, name: str) -> Dataset:
        if name not in SPLITS:
            raise UserError(f"unknown split '{name}'; choose one of {SPLITS}")
        if name not in self._splits:
            ds = SimulatedSplit(*self._load_or_generate(name))
            # (base seed, split, class, index) is what makes a sample: its id in subset fingerprints
            ds.item_ids = [
                f"seed{self.seed}/{name}/{c}/{i}"
                for c in self.class_names
                for i in range(self.counts[name])
            ]
            # the hard preset's people (scene.py): splits never share one
            ds.subjects = [q.get("subject") for q in ds.params] if self.hard is not None else None
            self._splits[name] = ds
        return self._splits[name]

    def _load_or_generate(self, name):
        if self.cache_dir is None:
            return self._generate(name)
        from filelock import FileLock

        folder = self.cache_dir / stable_hash(self.fingerprint())
        path = folder / f"{name}.npz"
        folder.mkdir(parents=True, exist_ok=True)
        # One process builds, the others wait on the lock and then read.
        with FileLock(str(folder / f"{name}.lock")):
            if not path.exists():
                pix, labels, params = self._generate(name)
                buf = io.BytesIO()
                np.savez(buf, pixels=pix, labels=labels, params=np.array(json.dumps(params)))
                atomic_write_bytes(path, buf.getvalue())
                atomic_write_json(folder / "fingerprint.json", self.fingerprint())
                return pix, labels, params
        with np.load(path) as z:
            return z["pixels"], z["labels"], json.loads(str(z["params"]))


# ------------------------------------------------------------- throughput


def throughput(
    image_size: int = 64, n_per_class: int = 50, workers: int = 0
) -> tuple[float, float]:
    """Spectrograms per minute for one `generate` over all 8 classes: (wall clock, per CPU
    core from the CPU time of this process and its pool). On a busy machine the wall
    rate drops while the per-core rate stays close to what an idle core gives."""
    import resource
    import time

    def cpu():
        self_, kids = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        return self_.ru_utime + self_.ru_stime + kids.ru_utime + kids.ru_stime

    t0, c0 = time.perf_counter(), cpu()
    generate(list(CLASSES), n_per_class, "train", 0, image_size, RadarConfig(), workers)
    n = n_per_class * len(CLASSES)
    return 60 * n / (time.perf_counter() - t0), 60 * n / (cpu() - c0)


if __name__ == "__main__":
    # python -m latent_diffusion.data.simulator [n_per_class]: the numbers in docs/data.md
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    for size in (64, 128):
        for w in (0, os.cpu_count() or 1):
            wall, core = throughput(size, n, w)
            print(
                f"image_size={size} workers={w}: {wall:.0f} spectrograms/min wall, {core:.0f} per "
                f"core"
            )
