"""The distilled student against its teacher, side by side: images/s end to end.

Variants, alternated in one process, each a whole job of `student.n_images` images: the
pipeline call (denoise + VAE decode) and the PNGs of the sample writer. The teacher is
guided DPM-Solver++-20 (two forwards per step, one batched [x; x]); the student is LCM's
sampler at each K of `student.steps` (one forward per step, w as an input). The cost does
not depend on the weights, so both are the architecture at its initial weights; the
quality of a trained student is `sample` + `evaluate`'s job (docs/sampling.md).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from latent_diffusion.benchmarks import setup
from latent_diffusion.benchmarks.timing import alternate, rate, ratio
from latent_diffusion.diffusion import create_diffusion
from latent_diffusion.diffusion.consistency import GRID_POINTS
from latent_diffusion.pipeline import LatentDiffusionPipeline
from latent_diffusion.sample_writer import SampleWriter


def run_student(cfg, device, vae, pool) -> dict:
    c = cfg.student
    size, n, w = c.model, int(c.n_images), float(cfg.sample.guidance)
    shape = vae.latent_shape(pool[0].shape[-1])
    labels = [i % setup.NUM_CLASSES for i in range(n)]
    items = [(lab, k) for k, lab in enumerate(labels)]
    teacher = setup.make_denoiser(size, shape).to(device).eval()
    width = int(teacher.denoiser_config["base_channels"])
    student = setup.make_denoiser(size, shape, guidance_embed_dim=width).to(device).eval()
    record = {"grid_points": GRID_POINTS, "default_steps": 4, "guidance_range": [1.0, max(8.0, w)],
              "teacher": {"export": None}}  # fmt: skip
    pipes = {
        "teacher": LatentDiffusionPipeline(teacher, create_diffusion(), setup.CLASSES, shape, vae),
        "student": LatentDiffusionPipeline(
            student, create_diffusion(), setup.CLASSES, shape, vae, {"distilled": record}
        ),
    }
    for pipe in pipes.values():
        pipe.optimize_for_inference(precision="fp32")
    tmp = Path(tempfile.mkdtemp(prefix="bench-student-"))
    count = {"i": 0}

    def job(name, sampler, steps):
        def run():
            out = pipes[name](
                labels, num_inference_steps=steps, guidance_scale=w, sampler=sampler,
                batch_size=n, output_type="uint8",
            )  # fmt: skip
            count["i"] += 1
            folder = tmp / f"{count['i']}"
            with SampleWriter(folder, list(setup.CLASSES), sorted(set(labels))) as wr:
                wr.add(out.images, items)
                wr.finish({"seed": 0}, 0)

        return run

    variants = {"teacher_dpmpp20": job("teacher", "dpmpp", 20)}
    for k in c.steps:
        variants[f"student_k{int(k)}"] = job("student", "lcm", int(k))
    res = alternate(variants, cfg.repeats, max(1, cfg.warmup), device)
    for r in res.values():
        r["images_per_s"] = rate(r["median_s"], n)
    ips = {k: r["images_per_s"] for k, r in res.items()}
    return {
        "model": size,
        "n_images": n,
        "guidance": w,
        "latent_shape": list(shape),
        "variants": res,
        "ratios": {
            f"{k}_over_teacher": ratio(v, ips["teacher_dpmpp20"])
            for k, v in ips.items()
            if k != "teacher_dpmpp20"
        },
        "forwards_per_image": {
            "teacher_dpmpp20": 40,  # 20 steps x [x; x]
            **{f"student_k{int(k)}": int(k) for k in c.steps},
        },
    }
