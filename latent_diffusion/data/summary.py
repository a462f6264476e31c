"""What the model will see, before any training: per split and class the number of items,
the figure crops and colour maps, value ranges, the physical axes, and a preview grid of
the final model inputs. `python -m latent_diffusion.inspect` prints it in full; `train`
logs the short form and writes the full one into its run folder."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from latent_diffusion.data.datamodule import split_labels
from latent_diffusion.data.source import SPLITS


def summarise(dm) -> dict:
    """The data module after setup() -> a JSON-able summary."""
    src = dm.source
    names = list(dm.class_names)
    out: dict = {"source": dm.source_name, "classes": names, "image_size": dm.image_size}
    out["channels"] = dm.channels
    counts, ranges = {}, {}
    for split in SPLITS:
        ds = src.split(split)
        labels = split_labels(ds) if len(ds) else np.zeros(0, np.int64)
        counts[split] = {c: int((labels == k).sum()) for k, c in enumerate(names)}
        if len(ds):  # the first 512 inputs as the model gets them
            x = np.stack([np.asarray(ds[i][0], np.float32) for i in range(min(512, len(ds)))])
            ranges[split] = [float(x.min()), float(x.max()), float(x.mean())]
    out["counts"], out["value_range"] = counts, ranges
    radar = getattr(src, "radar", None)
    if radar is not None:  # the simulator or raw recordings: the axes follow from the radar
        out["axes"] = {
            "velocity_m_s": [-float(radar.v_max), float(radar.v_max)],
            "duration_s": float(radar.duration_s),
            "seconds_per_column": float(radar.duration_s) / dm.image_size,
            "m_s_per_row": 2 * float(radar.v_max) / dm.image_size,
        }
    for key in ("read_info", "crop_report", "skipped"):
        if getattr(src, key, None) is not None:
            out[key] = getattr(src, key)
    info = out.get("read_info") or {}
    if info:
        # raw recordings (they carry "windows") have no colour map
        maps = Counter(i.get("colormap", "grey/array") for i in info.values() if "windows" not in i)
        filled = [i["masked_fraction"] for i in info.values() if "masked_fraction" in i]
        if maps:
            out["colormaps"] = dict(maps)
        if filled:
            out["filled_share"] = {"median": float(np.median(filled)), "max": float(max(filled))}
        windows = [i["windows"] for i in info.values() if "windows" in i]
        if windows:  # raw recordings (raw_radar.py): files -> spectrograms
            out["recordings"] = {
                "files": len(windows),
                "spectrograms": int(sum(windows)),
                "padded": sum(1 for i in info.values() if i.get("padded_s")),
                "range_bins": dict(
                    Counter(str(i["range_bins"]) for i in info.values() if "range_bins" in i)
                ),
            }
        crops = Counter(tuple(i["plot_box"][2:]) for i in info.values() if "plot_box" in i)
        if crops:
            out["crop_sizes"] = {f"{h}x{w}": n for (h, w), n in crops.most_common()}
        out.pop("read_info")
    return out


def short_form(s: dict) -> str:
    """One line for the training log."""
    n = {sp: sum(c.values()) for sp, c in s["counts"].items()}
    parts = [
        f"{s['source']}: {len(s['classes'])} classes",
        "train/val/test " + "/".join(str(n[sp]) for sp in SPLITS),
        f"{s['channels']}x{s['image_size']}x{s['image_size']}",
    ]
    if "recordings" in s:
        r = s["recordings"]
        parts.append(f"{r['files']} recordings -> {r['spectrograms']} spectrograms")
    if "crop_sizes" in s:
        parts.append("plot crops " + ", ".join(f"{k} ({v})" for k, v in s["crop_sizes"].items()))
    if "colormaps" in s:
        parts.append("colour maps " + ", ".join(f"{k} {v}" for k, v in s["colormaps"].items()))
    if s.get("skipped"):
        parts.append(f"{len(s['skipped'])} files skipped")
    return "; ".join(parts)


def long_form(s: dict) -> str:
    """The full summary as text (what `inspect` prints)."""
    lines = [short_form(s), "", "items per split and class:"]
    width = max(len(c) for c in s["classes"])
    lines.append(f"  {'class':<{width}}  " + "  ".join(f"{sp:>6}" for sp in SPLITS))
    for c in s["classes"]:
        lines.append(f"  {c:<{width}}  " + "  ".join(f"{s['counts'][sp][c]:>6}" for sp in SPLITS))
    for sp, (lo, hi, mean) in s.get("value_range", {}).items():
        lines.append(
            f"values in {sp}: min {lo:.3f}, max {hi:.3f}, mean {mean:.3f} ([-1, 1] inputs)"
        )
    if "axes" in s:
        a = s["axes"]
        lines.append(
            f"axes: rows {a['velocity_m_s'][1]:+.1f} (top, towards the radar) to "
            f"{a['velocity_m_s'][0]:+.1f} m/s, {a['m_s_per_row']:.3f} m/s per row; columns "
            f"{a['duration_s']:.2f} s, {a['seconds_per_column'] * 1e3:.1f} ms each"
        )
    else:
        lines.append("axes: not known for this source (rows must be Doppler, + at the top)")
    if "recordings" in s:
        r = s["recordings"]
        lines.append(
            f"raw recordings: {r['files']} files -> {r['spectrograms']} spectrograms, "
            f"{r['padded']} zero-padded"
            + (f"; range bins summed: {r['range_bins']}" if r["range_bins"] else "")
        )
    if "crop_sizes" in s:
        lines.append(
            "plot crops (px): " + ", ".join(f"{k}: {v}" for k, v in s["crop_sizes"].items())
        )
        differ = (s.get("crop_report") or {}).get("differ") or []
        if differ:
            lines.append(f"  differing from the majority: {', '.join(differ[:10])}")
    if "colormaps" in s:
        fs = s.get("filled_share", {})
        lines.append(
            "colour maps: "
            + ", ".join(f"{k} {v}" for k, v in s["colormaps"].items())
            + (f"; pixels filled: median {fs['median']:.1%}, max {fs['max']:.1%}" if fs else "")
        )
    for f in s.get("skipped") or []:
        lines.append(f"skipped: {f}")
    return "\n".join(lines)


def preview_grid(dm, per_class: int = 6) -> np.ndarray:
    """uint8 grid of the first training inputs of each class, as the model sees them (after
    reading, normalising and resizing): (K*H, per_class*W) grey. Where the inputs come from
    colour figures, each input follows its original file, squeezed to the tile, so a wrong
    crop or colour map shows at a glance: (K*H, 2*per_class*W, 3) RGB."""
    import torch

    from latent_diffusion.utils.pixels import to_uint8

    src = dm.source
    ds = src.split("train")
    labels = split_labels(ds)
    info = getattr(src, "read_info", None) or {}
    files = getattr(ds, "files", None)
    figures = files is not None and any("colormap" in info.get(f, {}) for f in files)
    s = dm.image_size
    rows = []
    for k in range(len(dm.class_names)):
        idx = np.flatnonzero(labels == k)[:per_class]
        x = [np.asarray(ds[int(i)][0], np.float32)[:1] for i in idx]  # (1, H, W) in [-1, 1]
        x += [np.full((1, s, s), -1.0, np.float32)] * (per_class - len(x))
        tiles = to_uint8(torch.from_numpy(np.stack(x)))  # (n, H, W, 1)
        if not figures:
            rows.append(np.concatenate(list(tiles[..., 0]), axis=1))
            continue
        pairs = []
        for j, tile in enumerate(tiles):
            rel = files[int(idx[j])] if j < len(idx) else None
            pairs += [_original_tile(src.root / rel, s) if rel else np.zeros((s, s, 3), np.uint8),
                      np.repeat(tile, 3, axis=-1)]  # fmt: skip
        rows.append(np.concatenate(pairs, axis=1))
    return np.concatenate(rows, axis=0)


def _original_tile(path: Path, size: int) -> np.ndarray:
    """The file as it is on disk, RGB, squeezed to size x size (axes, labels and all)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
    except OSError:
        return np.zeros((size, size, 3), np.uint8)


def write(s: dict, dm, out_dir: Path, per_class: int = 6) -> list[Path]:
    """data_summary.json, data_summary.txt and data_preview.png into out_dir."""
    import json

    from latent_diffusion.utils.io import atomic_write_bytes
    from latent_diffusion.utils.pixels import png_bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        out_dir / "data_summary.json",
        out_dir / "data_summary.txt",
        out_dir / "data_preview.png",
    ]
    atomic_write_bytes(paths[0], json.dumps(s, indent=2).encode())
    atomic_write_bytes(paths[1], (long_form(s) + "\n").encode())
    atomic_write_bytes(paths[2], png_bytes(preview_grid(dm, per_class)))
    return paths


__all__ = ["long_form", "preview_grid", "short_form", "summarise", "write"]
