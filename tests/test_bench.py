"""`python -m latent_diffusion.bench quick=true` through the real CLI: the JSON has every
documented field, every throughput is positive and finite, and every ratio is the
quotient of the same run's numbers. The speeds themselves are not asserted (a shared CI
machine's timings are noise; `bench` measures them, docs/benchmarks.md reports them). That
guidance is one batched forward of 2B is structural and asserted on the call batch sizes
(test_samplers.py::test_guidance_one_batched_call_all_channels_and_w1_is_conditional)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from cli import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench(tmp_path_factory, request):
    out = tmp_path_factory.mktemp("bench")
    root = request.config.rootpath
    run_cli(
        "bench",
        f"out_dir={out}",
        "quick=true",
        "parts=[train,sample,vae,inference,student,resolution,gpu_switches]",
        "lightning.steps=1",
        "sample.repeats=1",
        "repeats=1",
        "warmup=0",
        cwd=root,
        timeout=300,
    )
    return json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text()


def _rates(tree):
    """Every images/s, batches/s or spectrograms/min number anywhere in the result."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k in ("images_per_s", "batches_per_s", "spectrograms_per_min"):
                yield v
            else:
                yield from _rates(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _rates(v)


def test_documented_keys_and_finite_rates(bench):
    res, md = bench
    assert set(res) == {"meta", "parts", "summary"}
    meta = res["meta"]
    for key in (
        "command",
        "device",
        "torch",
        "threads",
        "loadavg_before",
        "loadavg_after",
        "repeats",
        "config",
    ):
        assert key in meta
    assert meta["quick"] is True and meta["device"] == "cpu"
    assert set(res["parts"]) == {
        "train", "sample", "vae", "inference", "student", "resolution", "gpu_switches"
    }  # fmt: skip
    rates = list(_rates(res["parts"]))
    assert len(rates) >= 12
    assert all(math.isfinite(r) and r > 0 for r in rates), rates
    t = res["parts"]["train"]["models"]["tiny"]
    assert set(t["variants"]) == {"latent_cached", "latent_online", "pixel", "latent_cached_bf16"}
    # the pixel UNet is the latent one with two leading levels for the f4 VAE's two halvings
    assert t["pixel_channel_mult"] == [1, 1] + t["latent_channel_mult"]
    assert t["pixel_shape"] == [1, 64, 64] and t["latent_shape"] == [4, 16, 16]
    for v in t["variants"].values():
        assert len(v["times_s"]) == 1  # repeats=1
        assert v["peak_mem_mb"] is None or v["peak_mem_mb"] > 0
    assert "skipped" in res["parts"]["gpu_switches"]  # no CUDA here: a note, not numbers
    # the summary lists what was measured, each with its target
    assert {
        "latent_over_pixel",
        "cached_over_online",
        "lightning_over_bare",
        "guided_over_unguided_time",
    } <= set(res["summary"])
    assert "## Training throughput" in md and "lightning_over_bare" in md


def test_ratios_are_quotients_of_the_same_run(bench):
    res, _ = bench
    t = res["parts"]["train"]
    m = t["models"]["tiny"]
    ips = {k: v["images_per_s"] for k, v in m["variants"].items()}
    assert m["ratios"]["latent_over_pixel"] == pytest.approx(ips["latent_cached"] / ips["pixel"])
    assert m["ratios"]["cached_over_online"] == pytest.approx(
        ips["latent_cached"] / ips["latent_online"]
    )
    assert m["ratios"]["bf16_over_fp32"] == pytest.approx(
        ips["latent_cached_bf16"] / ips["latent_cached"]
    )
    # images/s is images over the median time of one repeat
    n = t["batch_size"] * t["steps_per_repeat"]
    assert ips["pixel"] == pytest.approx(n / m["variants"]["pixel"]["median_s"])
    lt = t["lightning"]
    assert lt["ratios"]["lightning_over_bare"] == pytest.approx(
        lt["variants"]["lightning"]["images_per_s"] / lt["variants"]["bare_loop"]["images_per_s"]
    )
    assert res["summary"]["latent_over_pixel"]["value"] == m["ratios"]["latent_over_pixel"]
    s = res["parts"]["sample"]
    sv = s["variants"]
    assert s["ratios"]["guided_over_unguided_time[dpmpp-20]"] == pytest.approx(
        sv["dpmpp-20-guided"]["median_s"] / sv["dpmpp-20"]["median_s"]
    )
    assert res["summary"]["guided_over_unguided_time"]["met"] == (
        res["summary"]["guided_over_unguided_time"]["value"] <= 1.2
    )


def test_guidance_cost_is_the_quotient_of_its_variants(bench):
    g = bench[0]["parts"]["sample"]["guidance_forward"]
    med = {k: v["median_s"] for k, v in g["variants"].items()}
    assert g["ratios"]["guided_over_two_forwards"] == pytest.approx(
        med["guided_batched"] / med["two_forwards"]
    )


def test_resolution_part_times_the_128_experiments_model(bench):
    """128x128 runs the model experiment=microdoppler_128 builds (its keys read from the file)
    on 4x32x32 latents beside model=tiny's 64x64 path; ratios are this run's quotients."""
    from omegaconf import OmegaConf

    res, md = bench
    r = res["parts"]["resolution"]
    exp = OmegaConf.load(Path(__file__).parents[1] / "conf/experiment/microdoppler_128.yaml")
    assert r["model_128_overrides"] == OmegaConf.to_container(exp.model)
    assert r["latent_shapes"] == {"64": [4, 16, 16], "128": [4, 32, 32]}
    assert r["params_M"]["128"] > r["params_M"]["64"]  # the extra level's weights
    ips = {k: v["images_per_s"] for k, v in r["variants"].items()}
    for stage in ("train", "sample", "decode"):
        assert r["ratios"][f"{stage}_64_over_128"] == pytest.approx(
            ips[f"{stage}_64"] / ips[f"{stage}_128"]
        )
    assert "## 128x128 vs 64x64" in md


def test_inference_part_compares_switches_and_splits_the_stages(bench):
    """channels_last beside fp32 in one run; bf16 is run only where the CPU has bf16
    arithmetic and otherwise named with the reason; ms per image for each stage."""
    from latent_diffusion.inference import cpu_bf16_flags

    res, md = bench
    r = res["parts"]["inference"]
    ips = {k: v["images_per_s"] for k, v in r["variants"].items()}
    assert {"fp32", "channels_last"} <= set(ips)
    assert r["ratios"]["channels_last_over_fp32"] == pytest.approx(
        ips["channels_last"] / ips["fp32"]
    )
    assert ("bf16" in ips) == bool(cpu_bf16_flags()) != ("bf16" in r["skipped"])
    ms = r["per_image_ms_fp32"]
    assert ms["denoise"] > 0 and ms["decode"] > 0 and ms["write_png"] > 0
    assert "## Sampling switches" in md


def test_student_part_times_teacher_and_student_end_to_end(bench):
    """The teacher (40 forwards per image) and the student at each K, side by side; fewer
    forwards are faster, and each ratio is the ratio of the reported rates."""
    res, md = bench
    r = res["parts"]["student"]
    ips = {k: v["images_per_s"] for k, v in r["variants"].items()}
    assert set(ips) == {"teacher_dpmpp20", "student_k4", "student_k1"}
    assert ips["student_k1"] > ips["student_k4"] > ips["teacher_dpmpp20"]
    assert r["ratios"]["student_k4_over_teacher"] == pytest.approx(
        ips["student_k4"] / ips["teacher_dpmpp20"], rel=0.01
    )
    assert "## Distilled student vs teacher" in md


def test_unknown_part_is_a_user_error(tmp_path, request):
    proc = run_cli(
        "bench",
        f"out_dir={tmp_path}",
        "parts=[train,warp]",
        cwd=request.config.rootpath,
        check=False,
        timeout=120,
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "warp" in lines[0] and "choose from" in lines[0]
    assert not (tmp_path / "bench.json").exists()
