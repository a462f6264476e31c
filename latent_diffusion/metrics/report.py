"""metrics.json, report.md and PNG figures (drawn with PIL: matplotlib is not a dependency)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from latent_diffusion.metrics.kinematics import STATS, UNITS
from latent_diffusion.utils.io import atomic_write_bytes, atomic_write_json
from latent_diffusion.utils.pixels import png_bytes, to_uint8

COLOURS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def _f(v, nd=3) -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{nd}f}"


# ------------------------------------------------------------------ markdown


def markdown(m: dict) -> str:
    names = m["classes"]
    L = [
        f"# Evaluation of `{m['generated']['path']}`",
        "",
        f"Real data: {m['real']['n_train']} train / {m['real']['n_val']} val / "
        f"{m['real']['n_test']} test; "
        f"generated: {m['generated']['n']} images. Definitions: docs/evaluation.md.",
        "",
    ]
    if "cas" in m:
        L += [
            "## Classification (domain classifier)",
            "",
            "| | accuracy | macro-F1 |",
            "|---|---|---|",
            f"| TRTR (real test) | {_f(m['trtr']['accuracy'])} | {_f(m['trtr']['macro_f1'])} |",
            f"| CAS (generated) | {_f(m['cas']['accuracy'])} | {_f(m['cas']['macro_f1'])} |",
        ]
        if "tstr" in m:
            L += [
                f"| TRTR, protocol budget | {_f(m['tstr']['trtr_same_budget'])} | |",
                f"| TSTR (train generated, n={m['tstr']['n_train']}) | "
                f"{_f(m['tstr']['accuracy'])} | "
                f"{_f(m['tstr']['macro_f1'])} |",
            ]
        L += [
            "",
            f"CAS / TRTR = {_f(m['cas']['ratio_to_trtr'])}",
            "",
            "| class | TRTR acc | CAS acc | CAS F1 |" + (" TSTR acc |" if "tstr" in m else ""),
            "|---|---|---|---|" + ("---|" if "tstr" in m else ""),
        ]
        for c in names:
            row = (
                f"| {c} | {_f(m['trtr']['per_class'][c]['accuracy'])} | "
                f"{_f(m['cas']['per_class'][c]['accuracy'])}"
                f" | {_f(m['cas']['per_class'][c]['f1'])} |"
            )
            if "tstr" in m:
                row += f" {_f(m['tstr']['per_class'][c]['accuracy'])} |"
            L.append(row)
        L.append("")
    if "augmentation" in m:
        L += augmentation_section(m["augmentation"], m.get("generator_data"))
    if "sifting" in m:
        sf = m["sifting"]
        L += [
            f"## Sifting: kept {sf['kept']} of {sf['n']} generated images ({sf['settings']})",
            "",
            "| class | generated | dropped: kinematics | dropped: confidence | kept |",
            "|---|---|---|---|---|",
        ]
        L += [
            f"| {c} | {r['n']} | {r['dropped_kinematics']} | {r['dropped_confidence']} | "
            f"{r['kept']} |"
            for c, r in sf["per_class"].items()
        ]
        L.append("")
        if "augmentation_sifted" in m:
            sec = augmentation_section(m["augmentation_sifted"], m.get("generator_data"))
            L += ["## Augmentation curve with sifted generated images", *sec[1:]]
    if "distances" in m:
        d = m["distances"]
        L += [
            f"## Distances in the domain feature space (n = {d['n']} per set, reference: "
            f"{d['reference']})",
            "",
            "| set | FID | KID | precision | recall |",
            "|---|---|---|---|---|",
        ]
        for key, label in (
            ("generated", "generated"),
            ("real_vs_real", "real vs real"),
            ("vae_ceiling", "VAE ceiling"),
        ):
            if key in d["overall"]:
                r = d["overall"][key]
                L.append(
                    f"| {label} | {_f(r['fid'], 2)} | {_f(r['kid'], 4)} +- {_f(r['kid_std'], 4)} | "
                    f"{_f(r['precision'])} | {_f(r['recall'])} |"
                )
        L += [
            "",
            "| class | n | FID generated | FID real vs real | FID VAE ceiling |",
            "|---|---|---|---|---|",
        ]
        for c, r in d["per_class_fid"].items():
            L.append(
                f"| {c} | {r['n']} | {_f(r.get('generated'), 2)} | {_f(r.get('real_vs_real'), 2)} "
                f"| "
                f"{_f(r.get('vae_ceiling'), 2)} |"
            )
        L.append("")
    if "kinematics" in m:
        L += [
            "## Kinematic fidelity: Wasserstein-1, generated vs real train (real held-out vs real "
            "train)",
            "",
            "| class | " + " | ".join(f"{s} ({UNITS[s]})" for s in STATS) + " |",
            "|---|" + "---|" * len(STATS),
        ]
        for c, row in m["kinematics"]["per_class"].items():
            L.append(
                f"| {c} | "
                + " | ".join(
                    f"{_f(row[s]['w1'], 2)} ({_f(row[s].get('w1_real_vs_real'), 2)})" for s in STATS
                )
                + " |"
            )
        L += [
            "",
            "Means, generated / real:",
            "",
            "| class | " + " | ".join(STATS) + " |",
            "|---|" + "---|" * len(STATS),
        ]
        for c, row in m["kinematics"]["per_class"].items():
            L.append(
                f"| {c} | "
                + " | ".join(
                    f"{_f(row[s]['gen_mean'], 2)} / {_f(row[s]['real_mean'], 2)}" for s in STATS
                )
                + " |"
            )
        L.append("")
    if "memorisation" in m:
        L += [
            "## Memorisation (nearest training image)",
            "",
            "| space | median NN generated | median NN real test | ratio | share closer than real "
            "1st pct |",
            "|---|---|---|---|---|",
        ]
        for space, r in m["memorisation"].items():
            L.append(
                f"| {space} | {_f(r['gen_nn_median'])} | {_f(r['real_nn_median'])} | "
                f"{_f(r['ratio'])} | "
                f"{_f(r['frac_copies'])} |"
            )
        L.append("")
    L.append(f"Evaluated in {m['seconds']} s.")
    return "\n".join(L) + "\n"


def augmentation_section(curve: dict, gen: dict | None) -> list[str]:
    """Markdown: accuracy per arm, paired difference to real only (95% interval), leak labels."""
    from latent_diffusion.metrics.protocol import arm_label

    arms = list(next(iter(curve.values()))["accuracy"])
    L = ["## Augmentation curve (real test accuracy, mean +- std over seeds)", ""]
    if gen and gen.get("known"):
        L += [
            f"The generator trained on {gen['n']} real training images "
            f"(data.fraction={gen['fraction']:g}, "
            f"fraction_seed={gen['seed']}, file-list fingerprint {gen['fingerprint']}; VAE "
            f"trained on "
            f"{gen.get('vae_data')}). The classifiers it augments at that fraction train on "
            f"exactly "
            "these images.",
            "",
        ]
    else:
        L += [
            "The generator's training data is unknown: it is taken to have seen the whole real "
            "training "
            "split.",
            "",
        ]
    if any(r.get("leak", {}).get("leaky") for r in curve.values()):
        L += [
            "**LEAKY rows**: the generator saw real images the augmented classifier did not, so "
            "its synthetic "
            "images carry information from outside the classifier's data; their gain is an upper "
            "bound, not "
            "a result. Train the generator with data.fraction=F for a leak-free row.",
            "",
        ]
    L += [
        "| real fraction | " + " | ".join(arm_label(a) for a in arms) + " | leak |",
        "|---|" + "---|" * (len(arms) + 1),
    ]
    for f, row in curve.items():
        leak = row.get("leak", {})
        tag = f"LEAKY (+{leak['generator_saw_extra']} images)" if leak.get("leaky") else "none"
        L.append(
            f"| {float(f):.0%} | "
            + " | ".join(
                f"{_f(row['accuracy'][a]['mean'])} +- {_f(row['accuracy'][a]['std'])}" for a in arms
            )
            + f" | {tag} |"
        )
    paired = [a for a in arms if a != "0"]
    if paired and "paired" in next(iter(curve.values())):
        L += [
            "",
            "Paired difference to real only (same subset and classifier seed), mean [95% "
            "interval]:",
            "",
            "| real fraction | " + " | ".join(arm_label(a) for a in paired) + " |",
            "|---|" + "---|" * len(paired),
        ]
        for f, row in curve.items():
            cells = []
            for a in paired:
                d = row["paired"][a]
                ci = f" [{_f(d['ci95'][0])}, {_f(d['ci95'][1])}]" if d.get("ci95") else ""
                cells.append(f"{d['mean']:+.3f}{ci}")
            L.append(f"| {float(f):.0%} | " + " | ".join(cells) + " |")
    L.append("")
    return L


# ---------------------------------------------------------------------- plots


def _frame(w=520, h=360):
    img = Image.new("RGB", (w, h), "white")
    return img, ImageDraw.Draw(img)


def augmentation_plot(curve: dict) -> Image.Image:
    """Accuracy vs real fraction (log-spaced x), one line per arm, +- std bars."""
    from latent_diffusion.metrics.protocol import arm_label

    img, d = _frame()
    x0, y0, x1, y1 = 60, 30, 500, 320
    d.rectangle([x0, y0, x1, y1], outline="black")
    fr = [float(f) for f in curve]
    lx = np.log(fr)
    span = max(lx.max() - lx.min(), 1e-9)
    px = lambda f: x0 + 20 + (np.log(f) - lx.min()) / span * (x1 - x0 - 40)  # noqa: E731
    mults = list(next(iter(curve.values()))["accuracy"])
    vals = [v["mean"] - v["std"] for row in curve.values() for v in row["accuracy"].values()]
    lo = max(0.0, np.floor((min(vals) - 0.02) * 20) / 20)  # zoom on the data, 0.05 steps
    py = lambda a: y1 - (a - lo) / (1 - lo) * (y1 - y0)  # noqa: E731
    for a in np.linspace(lo, 1.0, 5):
        d.line([x0, py(a), x0 + 4, py(a)], fill="black")
        d.text((x0 - 40, py(a) - 6), f"{a:.3f}", fill="black")
    for f in fr:
        d.text((px(f) - 10, y1 + 6), f"{f:.0%}", fill="black")
    for j, mult in enumerate(mults):
        col = COLOURS[j % len(COLOURS)]
        pts = [
            (px(f), py(curve[k]["accuracy"][mult]["mean"])) for k, f in zip(curve, fr, strict=True)
        ]
        d.line(pts, fill=col, width=2)
        for (x, _), k in zip(pts, curve, strict=True):
            mu, sd = curve[k]["accuracy"][mult]["mean"], curve[k]["accuracy"][mult]["std"]
            d.line([x, py(mu - sd), x, py(mu + sd)], fill=col)
            d.ellipse([x - 3, py(mu) - 3, x + 3, py(mu) + 3], fill=col)
        d.text((x0 + 10, y0 + 6 + 14 * j), arm_label(mult), fill=col)
    d.text((x0 + 150, 8), "real test accuracy vs real training fraction", fill="black")
    return img


def confusion_plot(cm, names, title: str) -> Image.Image:
    cm = np.asarray(cm, np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    k, cell, left, top = len(names), 40, 80, 40
    img, d = _frame(left + k * cell + 20, top + k * cell + 70)
    d.text((left, 10), title, fill="black")
    for i in range(k):
        d.text((4, top + i * cell + cell // 2 - 6), names[i][:11], fill="black")
        d.text((left + i * cell + 2, top + k * cell + 6 + 12 * (i % 2)), names[i][:6], fill="black")
        for j in range(k):
            v = norm[i, j]
            shade = int(255 * (1 - v))
            d.rectangle(
                [
                    left + j * cell,
                    top + i * cell,
                    left + (j + 1) * cell - 1,
                    top + (i + 1) * cell - 1,
                ],
                fill=(shade, shade, 255),
            )
            d.text(
                (left + j * cell + 8, top + i * cell + 14),
                f"{v:.2f}",
                fill="black" if v < 0.5 else "white",
            )
    d.text(
        (left, top + k * cell + 40),
        "rows: class generated for / true; columns: predicted",
        fill="black",
    )
    return img


def kinematics_plot(gen: tuple, real: tuple, names, bins: int = 16) -> Image.Image:
    """Histograms per class (rows) and statistic (columns): real (blue) vs generated (orange)."""
    (gs, gy), (rs, ry) = gen, real
    cw, ch, left, top = 150, 70, 70, 24
    img, d = _frame(left + len(STATS) * cw + 10, top + len(names) * ch + 10)
    for j, s in enumerate(STATS):
        d.text((left + j * cw + 4, 6), f"{s} ({UNITS[s]})", fill="black")
        both = np.concatenate([gs[s][np.isfinite(gs[s])], rs[s][np.isfinite(rs[s])]])
        if both.size == 0:
            continue
        edges = np.linspace(both.min(), both.max() + 1e-9, bins + 1)
        for i, _ in enumerate(names):
            x0, y0 = left + j * cw + 4, top + i * ch
            d.rectangle([x0, y0, x0 + cw - 8, y0 + ch - 6], outline=(200, 200, 200))
            for vals, col, off in (
                (rs[s][ry == i], COLOURS[0], 0),
                (gs[s][gy == i], COLOURS[1], 1),
            ):
                vals = vals[np.isfinite(vals)]
                if vals.size == 0:
                    continue
                h, _ = np.histogram(vals, edges)
                h = h / h.max()
                bw = (cw - 8) / bins
                for b, v in enumerate(h):
                    xa = x0 + b * bw + off * bw / 2
                    d.rectangle(
                        [xa, y0 + ch - 6 - v * (ch - 10), xa + bw / 2 - 1, y0 + ch - 6], fill=col
                    )
    for i, c in enumerate(names):
        d.text((4, top + i * ch + ch // 2 - 6), c[:10], fill="black")
    return img


def sample_grid(real: tuple, gen: tuple, names, per_class: int = 6) -> Image.Image:
    """One row per class: `per_class` real images, a gap, `per_class` generated images."""
    (rx, ry), (gx, gy) = real, gen
    s = rx.shape[-1]
    pad, left = 2, 70
    img = Image.new("L", (left + (2 * per_class + 1) * (s + pad), len(names) * (s + pad) + 16), 255)
    d = ImageDraw.Draw(img)
    d.text((left, 2), "real", fill=0)
    d.text((left + (per_class + 1) * (s + pad), 2), "generated", fill=0)
    for i, c in enumerate(names):
        y = 16 + i * (s + pad)
        d.text((2, y + s // 2 - 6), c[:10], fill=0)
        for side, (x, lab) in enumerate(((rx, ry), (gx, gy))):
            idx = np.flatnonzero(np.asarray(lab) == i)[:per_class]
            for j, k in enumerate(idx):
                u8 = to_uint8(x[k : k + 1])[0, ..., 0]  # (H, W)
                img.paste(
                    Image.fromarray(u8, mode="L"),
                    (left + (j + side * (per_class + 1)) * (s + pad), y),
                )
    return img


# ---------------------------------------------------------------------- write


def write_report(m: dict, out_dir) -> Path:
    out = Path(out_dir)
    arrays = m.get("arrays", {})
    clean = {k: v for k, v in m.items() if k != "arrays"}
    atomic_write_json(out / "metrics.json", clean)
    atomic_write_bytes(out / "report.md", markdown(clean).encode())
    names = m["classes"]
    figs = {}
    if "augmentation" in m:
        figs["augmentation_curve.png"] = augmentation_plot(m["augmentation"])
    if "cas" in m:
        figs["confusion_cas.png"] = confusion_plot(
            m["cas"]["confusion"], names, "CAS: real-trained classifier on generated"
        )
        figs["confusion_trtr.png"] = confusion_plot(
            m["trtr"]["confusion"], names, "TRTR: real-trained classifier on real test"
        )
    if "kinematics" in arrays:
        figs["kinematics.png"] = kinematics_plot(
            arrays["kinematics"]["gen"], arrays["kinematics"]["real"], names
        )
    if "images" in arrays:
        figs["samples_real_vs_generated.png"] = sample_grid(
            arrays["images"]["real"], arrays["images"]["gen"], names
        )
    for name, fig in figs.items():
        atomic_write_bytes(out / name, png_bytes(fig))
    return out
