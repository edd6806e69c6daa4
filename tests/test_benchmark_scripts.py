"""The benchmark scripts a lent GPU runs (benchmarks/gpu_checks.sh) still run on today's code:
before, ``benchmarks/finetune.py`` built its model from a stand-in for ``Encoders`` that lacked an
attribute ``FinetuneModel`` had come to read, and crashed in the first seconds of the GPU's time.
Each runs here on a CPU at its smallest size, from a copy (its results go to the copy's folder,
not into this checkout's BENCHMARKS.md)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(tmp_path, script: str, *args: str) -> Path:
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    for name in (script, "common.py"):
        shutil.copy(REPO / "benchmarks" / name, tmp_path / "benchmarks" / name)
    (tmp_path / "BENCHMARKS.md").write_text("# Benchmarks\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(tmp_path / "benchmarks" / script), *args], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp_path / "benchmarks" / "results"


def test_finetune_benchmark_runs_its_gpu_stage_options_on_a_cpu(tmp_path):
    results = _run(tmp_path, "finetune.py", "--device", "cpu", "--size", "tiny", "--utterances", "32",
                   "--max-seconds", "3", "--micro-batch", "32", "--micro-batch-seconds", "8",
                   "--plain-micro-batch", "8", "--pos-conv", "matmul")
    res = json.loads((results / "finetune-posconv-matmul-budget.json").read_text())
    assert res["finetune"]["audio_s_per_s"] > 0 and res["plain"]["audio_s_per_s"] > 0
    assert "finetune (CMA joint, tiny)" in (tmp_path / "BENCHMARKS.md").read_text()


def test_grid_benchmark_runs_its_gpu_stage_options_on_a_cpu(tmp_path):
    results = _run(tmp_path, "grid.py", "--device", "cpu", "--scale", "0.003", "--epochs", "1",
                   "--rows", "Frame, linear", "--bf16", "--group-by-length", "--store", str(tmp_path / "g.h5"))
    res = json.loads((results / "grid.json").read_text())
    assert res["grid_speedup"] > 0
    assert "| grid |" in (tmp_path / "BENCHMARKS.md").read_text()


def test_grid_profile_writes_its_tables_and_records_no_timing(tmp_path):
    """--profile (the stage gpu_checks.sh profile): each path's top operators by name and by input
    shape; its timings carry the profiler's cost, so neither the JSON nor a BENCHMARKS row is written."""
    results = _run(tmp_path, "grid.py", "--device", "cpu", "--scale", "0.003", "--epochs", "1",
                   "--rows", "Frame, linear", "--paths", "per-run", "--bf16", "--profile")
    table = (results / "grid-profile" / "frame-linear-per-run-bf16.txt").read_text()
    assert "by input shape" in table and "aten::" in table
    assert not (results / "grid.json").exists()
    assert "| grid |" not in (tmp_path / "BENCHMARKS.md").read_text()


def test_finetune_profile_counts_each_kernel_once():
    """The profile's device-busy share: an operator's event carries its kernels' device time too,
    so summing every event counted each kernel twice (the H100's 26 % read 54 %)."""
    import importlib.util
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    spec = importlib.util.spec_from_file_location("finetune_benchmark", REPO / "benchmarks" / "finetune.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def event(kind, device_us, cpu_us=0.0):
        return SimpleNamespace(device_type=kind, self_device_time_total=device_us, self_cpu_time_total=cpu_us)
    # an operator (a host event) that launched a 300 µs kernel, the kernel itself, and a lone 100 µs kernel
    events = [event(DeviceType.CPU, 300.0, 50.0), event(DeviceType.CUDA, 300.0), event(DeviceType.CUDA, 100.0)]
    assert abs(bench.busy_seconds(events, cuda=True) - 400e-6) < 1e-12
    assert abs(bench.busy_seconds(events, cuda=False) - 50e-6) < 1e-12


def test_extract_sim_measures_this_tree_beside_another_trees_code(tmp_path):
    """extract_sim.py (the stage gpu_checks.sh writer-sim): the whole loop, encoding alone and
    commits alone for this tree and for an archived tree (``--baseline-tar``), one row each."""
    import tarfile
    tar = tmp_path / "emofuse-same.tar"
    with tarfile.open(tar, "w") as t:
        t.add(REPO / "emofuse", arcname="emofuse", filter=lambda m: None if "__pycache__" in m.name else m)
    results = _run(tmp_path, "extract_sim.py", "--seconds", "240", "--trials", "1", "--encode-rate", "20000",
                   "--baseline-tar", str(tar))
    res = json.loads((results / "extract-sim.json").read_text())
    assert set(res["rows"]) == {"same", "current"}
    for row in res["rows"].values():
        assert row["whole_audio_s_per_s"] > 0 and row["commits_audio_s_per_s"] > 0 and row["disk_audio_s_per_s"] > 0
    assert "| extract, simulated GPU encoder |" in (tmp_path / "BENCHMARKS.md").read_text()
