"""benchmarks/lm_ttt.py (issue 16 item 6): runs from a checkout without PYTHONPATH, builds the real Qwen2.5 shapes
from their configs, and counts FLOPs as 4 * N * training tokens for the MFU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import lm_ttt  # noqa: E402


def test_runs_from_a_checkout_without_pythonpath(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lm_ttt.py"), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--shape" in done.stdout and "4 * N * (training tokens)" in done.stdout


def test_flops_are_4_n_training_tokens():
    r = lm_ttt.throughput(0.5, n_params=494_032_768, steps=50, tokens=1024, peak_tflops=989.0)
    assert r["tokens_s"] == pytest.approx(51_200 / 0.5)
    assert r["tflops"] == pytest.approx(4 * 494_032_768 * 51_200 / 0.5 / 1e12)  # 202.35 TFLOP/s
    assert r["mfu"] == pytest.approx(r["tflops"] / 989.0) and 0.2 < r["mfu"] < 0.21
    assert lm_ttt.throughput(1.0, 10, 1, 1, None)["mfu"] is None


def test_tiny_shape_on_cpu_reports_consistent_rates(capsys):
    (r,) = lm_ttt.main(["--device", "cpu", "--tiny", "--batch", "2", "--skip-loop", "--peak-tflops", "1"])
    b = r["batched"]["none/2"]
    assert r["shape"] == "tiny" and r["steps"] == 4 and r["tokens"] == 64 and r["targets"] == ["q_proj", "v_proj"]
    assert b["tflops"] == pytest.approx(4 * r["params"] * 4 * 64 / b["s_per_seq"] / 1e12)
    assert b["mfu"] == pytest.approx(b["tflops"] / 1.0)
    assert "| tiny | 138,304 | none/2 |" in capsys.readouterr().out
    assert set(lm_ttt.SHAPES) == {"tiny", "0.5B", "1.5B", "3B", "7B", "14B", "32B"}


def _run(tmp_path, *args: str) -> tuple[str, dict]:
    import json

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"RAY_AUTH_MODE": "disabled"}
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lm_ray_scaling.py"), "--device", "cpu",
                           "--address", "local", "--json", str(out), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())


@pytest.mark.slow
def test_lm_ray_scaling_on_cpu_through_real_ray_data(tmp_path):
    """benchmarks/lm_ray_scaling.py at the tiny shape on a new local Ray (about a minute on 2 busy cores): 1 then
    2 actors through map_actor_pool, every sequence once, the study's columns (the LoRA count of q_proj + v_proj
    at r 64 on the tiny shape: 2 layers x 64 x ((64 + 64) + (64 + 32))), a ratio; the spread mode, which needs
    2 GPUs, says it did not run."""
    stdout, result = _run(tmp_path, "--shape", "tiny", "--actors", "1", "2", "--batch", "2", "--points", "12")
    assert [r["actors"] for r in result["runs"]] == [1, 2] and result["not_run"] == []
    for r in result["runs"]:
        assert r["points"] == 12 and r["lora_params"] == 2 * 64 * ((64 + 64) + (64 + 32))
        assert r["steady_seq_s"] > 0 and r["end_to_end_seq_s"] > 0 and r["s_per_seq_in_actor"] > 0
    assert result["runs"][1]["scaling_vs_1"] == pytest.approx(
        result["runs"][1]["steady_seq_s"] / result["runs"][0]["steady_seq_s"])
    assert "1 actor(s):" in stdout and "scaling 2 actors / 1 actor:" in stdout
    stdout, result = _run(tmp_path, "--mode", "spread", "--shape", "tiny")
    assert result["runs"] == [] and "one actor over 2 GPUs (tiny): not run" in stdout
