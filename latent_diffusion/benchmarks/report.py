"""bench.json -> the headline ratios against their targets, and a Markdown report."""

from __future__ import annotations

import math

# name -> (where in parts, comparison, target, meaning); issues 4 and 8 set the targets.
TARGETS = {
    "latent_over_pixel": (
        "train.models.{model}.ratios.latent_over_pixel",
        ">=",
        16.0,
        "training images/s, latent 4x16x16 / pixel 64x64",
    ),
    "cached_over_online": (
        "train.models.{model}.ratios.cached_over_online",
        ">=",
        2.0,
        "training images/s, cached / online latents",
    ),
    "lightning_over_bare": (
        "train.lightning.ratios.lightning_over_bare",
        ">=",
        0.9,
        "training images/s, our Lightning step / bare PyTorch loop",
    ),
    "dpmpp20_over_ddpm1000": (
        "sample.ratios.dpmpp20_over_ddpm1000",
        ">=",
        40.0,
        "sampling images/s, DPM-Solver++-20 / DDPM-1000",
    ),
    "guided_over_unguided_time": (
        "sample.ratios.guided_over_unguided_time[dpmpp-20]",
        "<=",
        1.2,
        "sampling time with / without guidance (DPM-Solver++-20)",
    ),
}


def _get(tree: dict, path: str):
    node = tree
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def summary(parts: dict, model: str) -> dict:
    out = {}
    for name, (path, op, target, meaning) in TARGETS.items():
        path = path.format(model=model)
        v = _get(parts, path)  # keys hold no dots, so a dotted path is unambiguous
        if v is None:
            continue
        met = v >= target if op == ">=" else v <= target
        out[name] = {
            "value": v,
            "target": f"{op} {target:g}",
            "met": bool(met),
            "from": path,
            "meaning": meaning,
        }
    return out


def _f(v, nd=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, float):
        return f"{v:,.{nd}f}" if abs(v) < 1e5 else f"{v:,.0f}"
    return str(v)


def _variants(title: str, variants: dict, unit: str, extra_cols=()) -> list[str]:
    cols = ["variant", unit, "median s / repeat", "peak mem MB", *extra_cols]
    lines = [f"**{title}**", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, r in variants.items():
        lines.append(
            f"| {name} | {_f(r.get(unit))} | {_f(r['median_s'], 3)} | "
            f"{_f(r.get('peak_mem_mb'), 0)} |"
        )
    return lines + [""]


def _ratio_line(ratios: dict, nd: int = 2, label: str = "ratios") -> str:
    return f"{label}: " + ", ".join(f"{k} = {_f(v, nd)}" for k, v in ratios.items())


def to_markdown(result: dict) -> str:
    meta, parts = result["meta"], result["parts"]
    L = [
        f"# Benchmarks ({meta['device_name']})",
        "",
        f"`{meta['command']}`",
        "",
        f"torch {meta['torch']}, {meta['threads']} threads, load average before/after "
        f"{meta['loadavg_before']} / {meta['loadavg_after']}, repeats={meta['repeats']}, "
        f"warm-up={meta['warmup']}, {meta['wall_s']:.0f} s. Medians of alternating repetitions; "
        "the ratios compare variants measured side by side in this one process.",
        "",
    ]
    if result.get("summary"):
        L += [
            "## Targets",
            "",
            "| ratio | measured | target | met | what |",
            "|---|---|---|---|---|",
        ]
        for k, s in result["summary"].items():
            L.append(
                f"| {k} | {_f(s['value'])} | {s['target']} | {'yes' if s['met'] else 'NO'} | "
                f"{s['meaning']} |"
            )
        L.append("")
    if "train" in parts:
        t = parts["train"]
        L += [
            "## Training throughput",
            "",
            f"batch {t['batch_size']}, {t['steps_per_repeat']} steps per "
            "repeat, bare step (loss, backward, clip, AdamW, EMA; batches in memory)",
            "",
        ]
        for size, m in t["models"].items():
            L += _variants(
                f"model={size}: latent {m['latent_shape']} ({m['latent_params_M']} M params, "
                f"channel_mult {m['latent_channel_mult']}) vs pixel {m['pixel_shape']} "
                f"({m['pixel_params_M']} M params, channel_mult {m['pixel_channel_mult']})",
                m["variants"],
                "images_per_s",
            )
            L += [_ratio_line(m["ratios"]), ""]
        lt = t["lightning"]
        L += _variants(
            f"Lightning Trainer vs bare loop (model={lt['model']}, batch {lt['batch_size']}, "
            f"{lt['steps_per_repeat']} steps after {lt['warm_steps']} warm steps, cached latents "
            "through a DataLoader)",
            lt["variants"],
            "images_per_s",
        )
        L += [f"lightning_over_bare = {_f(lt['ratios']['lightning_over_bare'], 3)}", ""]
    if "batch" in parts:
        b = parts["batch"]
        L += ["## Batch-size scaling", ""]
        L += _variants(
            f"model={b['model']}, cached latents, {b['steps_per_repeat']} steps per repeat",
            b["variants"],
            "images_per_s",
        )
    if "data" in parts:
        d = parts["data"]
        L += ["## Data", ""]
        L += _variants(
            f"simulator, one process, {d['simulator']['per_class']} per class x 8 classes",
            d["simulator"]["variants"],
            "spectrograms_per_min",
        )
        L += _variants(
            f"DataLoader vs training step (batch {d['loader']['batch_size']}, "
            f"{d['loader']['batches_per_repeat']} batches, workers={d['loader']['num_workers']}, "
            f"step model={d['loader']['step_model']})",
            d["loader"]["variants"],
            "batches_per_s",
        )
        L += [_ratio_line(d["ratios"], 4), ""]
    if "vae" in parts:
        v = parts["vae"]
        L += ["## VAE", ""]
        L += _variants(
            f"{v['vae']}, {v['params_M']} M params, batch {v['batch_size']}, latent "
            f"{v['latent_shape']}",
            v["variants"],
            "images_per_s",
        )
    if "sample" in parts:
        s = parts["sample"]
        L += ["## Sampling", ""]
        L += _variants(
            f"model={s['model']}, {s['n_images']} images, guidance w={s['guidance']} "
            "(one batched forward over [x; x])",
            s["variants"],
            "images_per_s",
        )
        L += [_ratio_line(s["ratios"], 3), ""]
        g = s["guidance_forward"]
        L += _variants(
            f"one denoiser call, batch {g['batch']} ({g['calls_per_repeat']} calls per repeat)",
            g["variants"],
            "images_per_s",
        )
        L += [_ratio_line(g["ratios"], 3, "ratios (time)"), ""]
    if "inference" in parts:
        r = parts["inference"]
        L += ["## Sampling switches (`sample precision= channels_last= compile=`)", ""]
        L += _variants(
            f"model={r['model']}, {r['n_images']} images, guided DPM-Solver++-20 "
            f"(w={r['guidance']}) + VAE decode, latent {r['latent_shape']}",
            r["variants"],
            "images_per_s",
        )
        L += [_ratio_line(r["ratios"])]
        L += [f"not run: {k}: {why}" for k, why in r["skipped"].items()]
        if r.get("compile_s") is not None:
            L += [f"torch.compile: the first (compiling) call took {r['compile_s']} s"]
        L += [
            "ms per image (fp32): "
            + ", ".join(f"{k} {_f(v)}" for k, v in r["per_image_ms_fp32"].items()),
            "",
        ]
    if "student" in parts:
        r = parts["student"]
        L += ["## Distilled student vs teacher (`distill`, `sample run=<student>`)", ""]
        L += _variants(
            f"model={r['model']}, {r['n_images']} images end to end (denoise + decode + PNGs), "
            f"w={r['guidance']}, latent {r['latent_shape']}; forwards per image "
            + ", ".join(f"{k} {v}" for k, v in r["forwards_per_image"].items()),
            r["variants"],
            "images_per_s",
        )
        L += [_ratio_line(r["ratios"]), ""]
    if "resolution" in parts:
        r = parts["resolution"]
        L += ["## 128x128 vs 64x64", ""]
        L += _variants(
            f"model={r['model']}: latent {r['latent_shapes']['64']} ({r['params_M']['64']} M "
            f"params) vs {r['latent_shapes']['128']} ({r['params_M']['128']} M params, "
            f"{r['model_128_overrides']}); train = cached-latent step at batch "
            f"{r['batch_size']}, sample = {r['n_images']} images DPM-Solver++-20 at "
            f"w={r['guidance']}, decode = VAE decode of {r['n_images']} latents",
            r["variants"],
            "images_per_s",
        )
        L += [_ratio_line(r["ratios"]), ""]
    if "gpu_switches" in parts:
        gs = parts["gpu_switches"]
        L += ["## GPU switches", ""]
        if "skipped" in gs:
            L += [gs["skipped"], ""]
        else:
            L += _variants(
                f"{gs['gpu']}, model={gs['model']}, batch {gs['batch_size']}",
                gs["variants"],
                "images_per_s",
            )
            L += [_ratio_line(gs["speedup_over_fp32"], 2, "speed-up over fp32"), ""]
            L += _variants("cached-latent DataLoader, one epoch", gs["loaders"], "images_per_s")
    if "profile" in parts:
        p = parts["profile"]
        L += ["## Profile", ""]
        for key, title in (
            ("train_step", "training step"),
            ("dpmpp20_guided", "DPM-Solver++-20, guided"),
        ):
            L += [
                f"**{title}, model={p['model']}** (self time, top items)",
                "",
                "| op | self ms | % | calls |",
                "|---|---|---|---|",
            ]
            L += [
                f"| `{r['name']}` | {r['self_ms']} | {r['percent']} | {r['calls']} |"
                for r in p[key]["top"]
            ]
            L.append("")
    return "\n".join(L) + "\n"
