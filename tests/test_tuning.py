"""The launch-configuration chooser (fusedgrad.kernels.tuning): heuristic, candidate lists,
shape buckets, the autotuner's cache file, and its refusal to time inside a CUDA-graph capture.
Timing is replaced by a fake clock, so these run anywhere; tier 3 tunes for real on a GPU."""

import json
import subprocess
import sys

import pytest
import torch

from fusedgrad.kernels import GemmConfig, Variant, tuning

SMS = 132
RELU = Variant("relu", 0)


@pytest.fixture
def tuner(monkeypatch, tmp_path):
    """Pretend to be a compiled-mode launch on a 132-multiprocessor GPU, with a fresh cache file;
    the tuner's clock is faked (`fake_clock`)."""
    monkeypatch.setattr(tuning, "multiprocessors", lambda index: SMS)
    monkeypatch.setattr(tuning, "device_index", lambda device: 0)
    monkeypatch.setattr(tuning, "has_tma", lambda index: True)
    monkeypatch.setattr(tuning, "time_ms", lambda launch: launch())
    return tuning.Tuner(tmp_path / "autotune.json")


def fake_clock(fastest, calls: list):
    """A `prepare` for `tuning.choose` whose launches (timed by the patched `time_ms`) take
    1 ms for `fastest` and more for every other config; records the configs timed."""
    def prepare(config):
        calls.append(config)
        return lambda: 1.0 if config == fastest else 2.0 + len(calls)
    return prepare


def choose(a, b, precision, tuner, calls, fastest=None, tma_ready=None, variant=RELU):
    return tuning.choose(a, b, variant, precision, interpreted=False, tuner=tuner,
                         prepare=fake_clock(fastest, calls), tma_ready=tma_ready)


def operands(M, K, N, dtype=torch.float32):
    return torch.empty(M, K, dtype=dtype), torch.empty(K, N, dtype=dtype)


def test_heuristic_fills_the_multiprocessors():
    tutorial = tuning.heuristic(64, 100, 1000, torch.float32, SMS)  # 64 x 100 output
    assert (tutorial.BLOCK_M, tutorial.BLOCK_N, tutorial.SPLIT_K) == (16, 16, 1)
    large = tuning.heuristic(4096, 4096, 4096, torch.bfloat16, SMS)
    assert (large.BLOCK_M, large.BLOCK_N, large.BLOCK_K, large.num_warps) == (128, 128, 64, 8)
    assert tuning.heuristic(1000, 100, 64, torch.float32, SMS).num_stages == 1  # one K step: no pipeline


def test_candidates():
    large = tuning.candidates(4096, 4096, 4096, torch.bfloat16, None, SMS)
    assert large[0] == tuning.heuristic(4096, 4096, 4096, torch.bfloat16, SMS)
    assert len(large) == len(set(large)) >= 6  # distinct
    assert all(isinstance(c, GemmConfig) and c.SPLIT_K == 1 for c in large)  # enough tiles: never split K
    ieee = tuning.candidates(4096, 4096, 4096, torch.float32, "ieee", SMS)
    assert max(c.BLOCK_M * c.BLOCK_N for c in ieee) == 128 * 128  # FMA dots: no 128 x 256
    skinny = tuning.candidates(64, 100, 1000, torch.float32, "ieee", SMS)
    assert sorted(c.SPLIT_K for c in skinny if c.SPLIT_K > 1) == [2, 4, 8]  # 16 K steps of 64
    assert all(c.BLOCK_M <= 64 for c in skinny)  # no tile beyond the bucketed shape
    with_tma = tuning.candidates(4096, 4096, 4096, torch.bfloat16, None, SMS, tma=True)
    twins = [c for c in with_tma if c.TMA and not c.PERSISTENT]
    assert len(twins) == tuning.TMA_TWINS and all(c.replace(TMA=False) in large for c in twins)
    persistent = [c for c in with_tma if c.PERSISTENT]
    assert len(persistent) == len(tuning.PERSISTENT_TILES["bf16"]) and all(c.TMA for c in persistent)
    assert [c for c in with_tma if not c.TMA] == large
    # Persistent programs only where there are more tiles than multiprocessors.
    assert not any(c.PERSISTENT for c in tuning.candidates(1024, 1024, 4096, torch.bfloat16, None, SMS, tma=True))


@pytest.mark.parametrize("precision, layout_a, layout_b, expected", [
    ("tf32", "row", "col", True), ("tf32", "row", "row", False), ("tf32", "col", "col", False),
    ("tf32x3", "row", "row", False), ("ieee", "row", "col", False), (None, "col", "row", True)])
def test_tma_is_offered_only_where_it_suits(tuner, precision, layout_a, layout_b, expected):
    """tf32 wgmma reads both operands K-major from shared memory, where a TMA block keeps its
    storage layout: TMA candidates for tf32 need A row-major and B column-major; IEEE (FMA)
    dots get none; 16-bit ones get them in any layout."""
    dtype = torch.bfloat16 if precision is None else torch.float32
    a = torch.empty(4096, 4096, dtype=dtype) if layout_a == "row" else torch.empty(4096, 4096, dtype=dtype).T
    b = torch.empty(4096, 4096, dtype=dtype) if layout_b == "row" else torch.empty(4096, 4096, dtype=dtype).T
    assert tuning.tma_suits(a, b, precision) == expected
    calls = []
    choose(a, b, precision, tuner, calls, tma_ready=lambda: True)
    assert any(c.TMA for c in calls) == expected


def test_buckets_share_a_key_and_layouts_do_not():
    a, b = operands(1000, 300, 100)
    key = tuning.key(a, b, RELU, "ieee")
    assert key == tuning.key(*operands(600, 500, 70), RELU, "ieee")
    assert key != tuning.key(*operands(1100, 300, 100), RELU, "ieee")
    assert key != tuning.key(a.T.contiguous().T, b, RELU, "ieee")
    assert key != tuning.key(a, b, Variant("none", 2), "ieee")
    assert key != tuning.key(a, b, RELU._replace(tma=True), "ieee")
    assert key != tuning.key(a, b, RELU, "tf32")
    assert [tuning.bucket(n) for n in (1, 16, 17, 100, 1024, 1025)] == [16, 16, 32, 128, 1024, 2048]


def test_autotune_times_once_per_bucket_and_writes_the_cache(tuner):
    a, b = operands(64, 1000, 100)
    configs = tuning.candidates(64, 100, 1000, torch.float32, "ieee", SMS, tma=True)
    fastest = configs[2]
    calls = []
    assert choose(a, b, "ieee", tuner, calls, fastest, tma_ready=lambda: True) == fastest and calls == configs
    again = choose(*operands(60, 900, 90), "ieee", tuner, calls, fastest, tma_ready=lambda: True)
    assert again == fastest and calls == configs  # same bucket: nothing timed again
    key = tuning.key(a, b, RELU._replace(tma=True), "ieee")
    assert tuner.lookup(key) is tuner.lookup(key) is again  # validated once, not per launch
    entry = json.loads(tuner.path.read_text())[tuning.key(a, b, RELU._replace(tma=True), "ieee")]
    assert GemmConfig.of(entry["config"]) == fastest and entry["ms"] == 1.0 and len(entry["timed"]) == len(calls)
    # Operands TMA cannot describe: their own entry, and no TMA candidate timed.
    pointer_calls = []
    choose(a, b, "ieee", tuner, pointer_calls, fastest, tma_ready=lambda: False)
    assert pointer_calls and not any(c.TMA for c in pointer_calls)
    assert tuning.key(a, b, RELU, "ieee") in json.loads(tuner.path.read_text())


def test_tuned_configs_survive_the_process(tuner):
    """A new process (a fresh Tuner on the same file) reads the file instead of timing again."""
    a, b = operands(64, 1000, 100)
    fastest = tuning.candidates(64, 100, 1000, torch.float32, "ieee", SMS)[1]
    choose(a, b, "ieee", tuner, [], fastest)
    code = ("import json, sys, torch; from fusedgrad.kernels import Variant, tuning; "
            "key = tuning.key(torch.empty(64, 1000), torch.empty(1000, 100), Variant('relu', 0), 'ieee'); "
            f"print(json.dumps(tuning.Tuner({str(tuner.path)!r}).lookup(key).meta))")
    env = {"TRITON_INTERPRET": "1", "PATH": ""}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert GemmConfig.of(json.loads(result.stdout)) == fastest, result.stderr


def test_no_timing_inside_a_cuda_graph_capture(tuner, monkeypatch):
    monkeypatch.setattr(tuning, "_capturing", lambda device: True)
    a, b = operands(64, 1000, 100)
    calls = []
    assert choose(a, b, "ieee", tuner, calls) == tuning.heuristic(64, 100, 1000, torch.float32, SMS)
    assert calls == [] and not tuner.path.exists()


def test_failing_candidates_are_skipped_and_all_failing_is_an_error(tuner):
    configs = tuning.candidates(4096, 4096, 4096, torch.bfloat16, None, SMS)

    def time_ms(config):
        if config.BLOCK_N == 256:
            raise RuntimeError("out of resources: shared memory")
        return config.BLOCK_M / config.num_stages

    best = tuner.tune("k", configs, time_ms)
    assert best.BLOCK_N != 256 and best == min((c for c in configs if c.BLOCK_N != 256), key=time_ms)
    timed = tuner.entries()["k"]["timed"]
    assert all(("out of resources" in row[2]) == (row[0]["BLOCK_N"] == 256) if len(row) == 3 else
               row[0]["BLOCK_N"] != 256 for row in timed)
    with pytest.raises(RuntimeError, match="no candidate.*ZeroDivisionError"):
        tuner.tune("k2", configs, lambda config: 1 / 0)


@pytest.mark.parametrize("cached", [{"BLOCK_M": 16, "OLD_KNOB": 1}, {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 3}, "x"])
def test_cached_configs_that_are_not_valid_now_are_retuned(tuner, cached):
    """A cached entry with an unknown field (another schema) or a value GemmConfig refuses is
    never launched: the bucket is tuned again."""
    a, b = operands(64, 1000, 100)
    key = tuning.key(a, b, RELU, "ieee")
    assert key.startswith(tuning.SCHEMA + "|")
    tuner.path.write_text(json.dumps({key: {"config": cached}}))
    calls = []
    fastest = tuning.candidates(64, 100, 1000, torch.float32, "ieee", SMS)[1]
    assert choose(a, b, "ieee", tuner, calls, fastest) == fastest
    assert calls


def test_no_tuner_or_the_interpreter_means_no_timing(tuner):
    a, b = operands(64, 1000, 100)
    calls = []
    assert choose(a, b, "ieee", None, calls) == tuning.heuristic(64, 100, 1000, torch.float32, SMS)
    assert tuning.choose(a, b, RELU, "ieee", interpreted=True, tuner=tuner, prepare=fake_clock(None, calls)) \
        == tuning.INTERPRETER_CONFIG
    assert calls == []
    tuner.path.write_text("{not json")
    assert tuning.Tuner(tuner.path).lookup("anything") is None
