"""The sampling switches of `sample` / `optimize_for_inference`, side by side, and where the
time of one image goes (denoise, decode, PNG write).

Variants, alternated in one process, each the whole pipeline call (guided
DPM-Solver++-20 + VAE decode of `inference.n_images`): fp32 (the default), channels_last,
torch.compile (`inference.compile`; compiled by one untimed call first, its seconds
reported, and named with the error where this machine cannot compile),
and bf16 autocast where the device has bf16 arithmetic (elsewhere the part says why it
did not run it: emulated bf16 is several times slower). The stage split comes from the
pipeline's own clocks and from the sample writer's thread over the fp32 variant's images.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from latent_diffusion.benchmarks import setup
from latent_diffusion.benchmarks.timing import alternate, rate, ratio
from latent_diffusion.diffusion import create_diffusion
from latent_diffusion.inference import bf16_supported, resolve_precision
from latent_diffusion.pipeline import LatentDiffusionPipeline
from latent_diffusion.sample_writer import SampleWriter


def run_inference(cfg, device, vae, pool) -> dict:
    c = cfg.inference
    size, n, w = c.model, int(c.n_images), float(cfg.sample.guidance)
    shape = vae.latent_shape(pool[0].shape[-1])
    labels = [i % setup.NUM_CLASSES for i in range(n)]

    def pipeline(**switches):
        den = setup.make_denoiser(size, shape).to(device).eval()
        pipe = LatentDiffusionPipeline(den, create_diffusion(), list(setup.CLASSES), shape, vae)
        pipe.optimize_for_inference(**switches)
        return pipe

    pipes = {"fp32": pipeline(precision="fp32")}
    pipes["channels_last"] = pipeline(precision="fp32", channels_last=True)
    skipped, compile_s = {}, None
    if c.compile:
        # compile now, untimed (one call compiles), and say so if this machine cannot
        pipes["compile"] = pipeline(precision="fp32", compile=True)
        t0 = time.perf_counter()
        try:
            pipes["compile"](labels, num_inference_steps=2, guidance_scale=w, batch_size=n)
            compile_s = round(time.perf_counter() - t0, 1)
        except Exception as err:  # inductor needs a C++ toolchain; report, do not abort
            del pipes["compile"]
            skipped["compile"] = f"torch.compile failed here: {type(err).__name__}: {err}"[:300]
    if bf16_supported(device):
        pipes["bf16"] = pipeline(precision="bf16")
    else:
        skipped["bf16"] = resolve_precision("bf16", device)[1]

    last = {}  # variant -> its latest output (timings per stage, images)

    def call(name):
        def run():
            last[name] = pipes[name](
                labels, num_inference_steps=20, guidance_scale=w, sampler="dpmpp",
                batch_size=n, output_type="uint8",
            )  # fmt: skip

        return run

    res = alternate({k: call(k) for k in pipes}, cfg.repeats, max(1, cfg.warmup), device)
    for r in res.values():
        r["images_per_s"] = rate(r["median_s"], n)
    fp32 = last["fp32"]
    with tempfile.TemporaryDirectory() as tmp:
        with SampleWriter(Path(tmp) / "s", list(setup.CLASSES), sorted(set(labels))) as writer:
            writer.add(fp32.images, [(c_, k) for k, c_ in enumerate(labels)])
            writer.finish({"seed": 0}, 0)
    per_image_ms = {
        "denoise": 1000 * fp32.timings["denoise"] / n,
        "decode": 1000 * fp32.timings["decode"] / n,
        "write_png": 1000 * writer.write_s / n,
    }
    ips = {k: r["images_per_s"] for k, r in res.items()}
    return {
        "model": size,
        "n_images": n,
        "guidance": w,
        "latent_shape": list(shape),
        "variants": res,
        "skipped": skipped,
        "compile_s": compile_s,  # the first (compiling) call, not in the timed rounds
        "ratios": {f"{k}_over_fp32": ratio(v, ips["fp32"]) for k, v in ips.items() if k != "fp32"},
        "per_image_ms_fp32": {k: round(v, 3) for k, v in per_image_ms.items()},
    }
