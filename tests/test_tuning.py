"""The launch-configuration chooser (fusedgrad.kernels.tuning): heuristic, candidate lists,
shape buckets, the autotuner's cache file, and its refusal to time inside a CUDA-graph capture.
Timing is replaced by a fake clock, so these run anywhere; tier 3 tunes for real on a GPU."""

import json
import subprocess
import sys

import pytest
import torch

from fusedgrad.kernels import tuning

SMS = 132


@pytest.fixture
def compiled_gpu(monkeypatch, tmp_path):
    """Pretend to be a compiled-mode launch on a 132-multiprocessor GPU, with autotuning on and
    a fresh cache file."""
    monkeypatch.setattr(tuning, "multiprocessors", lambda index: SMS)
    monkeypatch.setattr(tuning, "device_index", lambda device: 0)
    monkeypatch.setattr(tuning, "has_tma", lambda index: True)
    monkeypatch.setenv(tuning.CACHE_ENV_VAR, str(tmp_path))
    monkeypatch.setattr(tuning, "TUNER", tuning.Tuner())
    tuning.set_autotune(True)
    yield tmp_path / "autotune.json"
    tuning.set_autotune(None)


def fake_clock(fastest: dict, calls: list):
    def time_ms(config):
        calls.append(config)
        return 1.0 if config == fastest else 2.0 + len(calls)
    return time_ms


def operands(M, K, N, dtype=torch.float32):
    return torch.empty(M, K, dtype=dtype), torch.empty(K, N, dtype=dtype)


def test_heuristic_fills_the_multiprocessors():
    tutorial = tuning.heuristic(64, 100, 1000, torch.float32, SMS)  # 64 x 100 output
    assert (tutorial["BLOCK_M"], tutorial["BLOCK_N"], tutorial["SPLIT_K"]) == (16, 16, 1)
    large = tuning.heuristic(4096, 4096, 4096, torch.bfloat16, SMS)
    assert (large["BLOCK_M"], large["BLOCK_N"], large["BLOCK_K"], large["num_warps"]) == (128, 128, 64, 8)
    assert tuning.heuristic(1000, 100, 64, torch.float32, SMS)["num_stages"] == 1  # one K step: no pipeline


def test_candidates():
    large = tuning.candidates(4096, 4096, 4096, torch.bfloat16, None, SMS)
    assert large[0] == tuning.heuristic(4096, 4096, 4096, torch.bfloat16, SMS)
    assert len(large) == len({json.dumps(c, sort_keys=True) for c in large}) >= 6  # distinct
    assert all(c["SPLIT_K"] == 1 for c in large)  # enough tiles: never split K
    assert all(min(c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"]) >= 16 for c in large)
    ieee = tuning.candidates(4096, 4096, 4096, torch.float32, "ieee", SMS)
    assert max(c["BLOCK_M"] * c["BLOCK_N"] for c in ieee) == 128 * 128  # FMA dots: no 128 x 256
    skinny = tuning.candidates(64, 100, 1000, torch.float32, "ieee", SMS)
    assert sorted(c["SPLIT_K"] for c in skinny if c["SPLIT_K"] > 1) == [2, 4, 8]  # 16 K steps of 64
    assert all(c["BLOCK_M"] <= 64 for c in skinny)  # no tile beyond the bucketed shape
    with_tma = tuning.candidates(4096, 4096, 4096, torch.bfloat16, None, SMS, tma=True)
    twins = [c for c in with_tma if c.get("TMA") and not c.get("PERSISTENT")]
    assert len(twins) == tuning.TMA_TWINS and all(dict(c, TMA=False) != c for c in twins)
    persistent = [c for c in with_tma if c.get("PERSISTENT")]
    assert len(persistent) == len(tuning.PERSISTENT_TILES["16-bit"]) and all(c["TMA"] for c in persistent)
    assert [dict(c) for c in with_tma if not c.get("TMA")] == large
    # Persistent programs only where there are more tiles than multiprocessors.
    assert not any(c.get("PERSISTENT") for c in tuning.candidates(1024, 1024, 4096, torch.bfloat16, None, SMS, tma=True))


@pytest.mark.parametrize("precision, layout_a, layout_b, expected", [
    ("tf32", "row", "col", True), ("tf32", "row", "row", False), ("tf32", "col", "col", False),
    ("tf32x3", "row", "row", False), ("ieee", "row", "col", False), (None, "col", "row", True)])
def test_tma_is_offered_only_where_it_suits(compiled_gpu, precision, layout_a, layout_b, expected):
    """tf32 wgmma reads both operands K-major from shared memory, where a TMA block keeps its
    storage layout: TMA candidates for tf32 need A row-major and B column-major; IEEE (FMA)
    dots get none; 16-bit ones get them in any layout."""
    dtype = torch.bfloat16 if precision is None else torch.float32
    a = torch.empty(4096, 4096, dtype=dtype) if layout_a == "row" else torch.empty(4096, 4096, dtype=dtype).T
    b = torch.empty(4096, 4096, dtype=dtype) if layout_b == "row" else torch.empty(4096, 4096, dtype=dtype).T
    assert tuning.tma_suits(a, b, precision) == expected
    calls = []
    tuning.choose(a, b, "relu mask=0", precision, interpreted=False, time_ms=fake_clock({}, calls),
                  tma_ready=lambda: True)
    assert any(c.get("TMA") for c in calls) == expected


def test_buckets_share_a_key_and_layouts_do_not():
    a, b = operands(1000, 300, 100)
    assert tuning.key(a, b, "relu mask=0", "ieee") == tuning.key(*operands(600, 500, 70), "relu mask=0", "ieee")
    assert tuning.key(a, b, "relu mask=0", "ieee") != tuning.key(*operands(1100, 300, 100), "relu mask=0", "ieee")
    assert tuning.key(a, b, "relu mask=0", "ieee") != tuning.key(a.T.contiguous().T, b, "relu mask=0", "ieee")
    assert tuning.key(a, b, "relu mask=0", "ieee") != tuning.key(a, b, "none mask=2", "ieee")
    assert tuning.key(a, b, "relu mask=0", "ieee") != tuning.key(a, b, "relu mask=0", "tf32")
    assert [tuning.bucket(n) for n in (1, 16, 17, 100, 1024, 1025)] == [16, 16, 32, 128, 1024, 2048]


def test_autotune_times_once_per_bucket_and_writes_the_cache(compiled_gpu):
    a, b = operands(64, 1000, 100)
    configs = tuning.candidates(64, 100, 1000, torch.float32, "ieee", SMS, tma=True)
    fastest = configs[2]
    calls = []
    chosen = tuning.choose(a, b, "relu mask=0", "ieee", interpreted=False, time_ms=fake_clock(fastest, calls),
                           tma_ready=lambda: True)
    assert chosen == fastest and calls == configs
    again = tuning.choose(*operands(60, 900, 90), "relu mask=0", "ieee", interpreted=False,
                          time_ms=fake_clock(fastest, calls), tma_ready=lambda: True)
    assert again == fastest and calls == configs  # same bucket: nothing timed again
    entry = json.loads(compiled_gpu.read_text())[tuning.key(a, b, "relu mask=0 tma", "ieee")]
    assert entry["config"] == fastest and entry["ms"] == 1.0 and len(entry["timed"]) == len(calls)
    # Operands TMA cannot describe: their own entry, and no TMA candidate timed.
    pointer_calls = []
    tuning.choose(a, b, "relu mask=0", "ieee", interpreted=False, time_ms=fake_clock(fastest, pointer_calls),
                  tma_ready=lambda: False)
    assert pointer_calls and not any(c.get("TMA") for c in pointer_calls)
    assert tuning.key(a, b, "relu mask=0", "ieee") in json.loads(compiled_gpu.read_text())


def test_tuned_configs_survive_the_process(compiled_gpu):
    """A new process (a fresh Tuner) reads the file instead of timing again."""
    a, b = operands(64, 1000, 100)
    fastest = tuning.candidates(64, 100, 1000, torch.float32, "ieee", SMS)[1]
    tuning.choose(a, b, "relu mask=0", "ieee", interpreted=False, time_ms=fake_clock(fastest, []))
    code = ("import json, sys, torch; from fusedgrad.kernels import tuning; "
            "key = tuning.key(torch.empty(64, 1000), torch.empty(1000, 100), 'relu mask=0', 'ieee'); "
            "print(json.dumps(tuning.Tuner().lookup(key)))")
    env = {"FUSEDGRAD_CACHE_DIR": str(compiled_gpu.parent), "TRITON_INTERPRET": "1", "PATH": ""}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert json.loads(result.stdout) == fastest, result.stderr


def test_no_timing_inside_a_cuda_graph_capture(compiled_gpu, monkeypatch):
    monkeypatch.setattr(tuning, "_capturing", lambda device: True)
    a, b = operands(64, 1000, 100)
    calls = []
    chosen = tuning.choose(a, b, "relu mask=0", "ieee", interpreted=False, time_ms=fake_clock({}, calls))
    assert calls == [] and chosen == tuning.heuristic(64, 100, 1000, torch.float32, SMS)
    assert not compiled_gpu.exists()


def test_failing_candidates_are_skipped_and_all_failing_is_an_error(compiled_gpu):
    configs = tuning.candidates(4096, 4096, 4096, torch.bfloat16, None, SMS)

    def time_ms(config):
        if config["BLOCK_N"] == 256:
            raise RuntimeError("out of resources: shared memory")
        return config["BLOCK_M"] / config["num_stages"]

    best = tuning.TUNER.tune("k", configs, time_ms)
    assert best["BLOCK_N"] != 256 and best == min(
        (c for c in configs if c["BLOCK_N"] != 256), key=lambda c: c["BLOCK_M"] / c["num_stages"])
    entry = tuning.TUNER.entries()["k"]
    assert all(("out of resources" in timed[2]) == (timed[0]["BLOCK_N"] == 256) if len(timed) == 3 else
               timed[0]["BLOCK_N"] != 256 for timed in entry["timed"])
    with pytest.raises(RuntimeError, match="no candidate.*ZeroDivisionError"):
        tuning.TUNER.tune("k2", configs, lambda config: 1 / 0)


def test_cached_configs_of_another_schema_are_retuned(compiled_gpu):
    a, b = operands(64, 1000, 100)
    key = tuning.key(a, b, "relu mask=0", "ieee")
    assert key.startswith(tuning.SCHEMA + "|")
    compiled_gpu.write_text(json.dumps({key: {"config": {"BLOCK_M": 16, "OLD_KNOB": 1}}}))
    calls = []
    fastest = tuning.candidates(64, 100, 1000, torch.float32, "ieee", SMS, tma=True)[1]
    assert tuning.choose(a, b, "relu mask=0", "ieee", interpreted=False,
                         time_ms=fake_clock(fastest, calls)) == fastest
    assert calls  # the unknown knob was not launched: the bucket was tuned again


def test_off_by_default_and_a_corrupt_cache_is_ignored(compiled_gpu, monkeypatch):
    tuning.set_autotune(None)
    monkeypatch.delenv(tuning.ENV_VAR, raising=False)
    assert not tuning.autotune_enabled()
    monkeypatch.setenv(tuning.ENV_VAR, "1")
    assert tuning.autotune_enabled()
    compiled_gpu.write_text("{not json")
    assert tuning.Tuner().lookup("anything") is None
    a, b = operands(64, 1000, 100)
    assert tuning.choose(a, b, "relu mask=0", "ieee", interpreted=True) == tuning.INTERPRETER_CONFIG
