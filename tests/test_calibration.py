"""`strategy="auto"`: the cost model, calibration files and their lookup."""

import json
import math
import os

import keras
import pytest
import tensorflow as tf

import keras_lookup
from keras_lookup import _cost_model, calibration

# A calibration with round numbers: V* = 32 for single ids; bags cross at
# V* = 16, 256, 4,096 for 1, 8, 64 ids per row (V* = 16 k^(4/3)).
CROSSOVERS = {
    "single": {"1": 32},
    "padded": {"1": 16, "8": 256, "64": 4096},
    "ragged": {"1": 16, "8": 256, "64": 4096},
}


def write_calibration(crossovers, dtype="float32"):
    """Writes a calibration file where `calibrate()` would, for this device."""
    path = calibration.calibration_path(dtype)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"format": 1, "crossover": crossovers}, f)
    return path


@pytest.fixture
def cal():
    return _cost_model.Calibration(CROSSOVERS, "test calibration")


@pytest.mark.parametrize(
    "vocab, form, ids_per_row, expected",
    [
        (2, "single", None, "matmul"),
        (32, "single", None, "matmul"),
        (33, "single", None, "gather"),
        (1_000_000, "single", None, "gather"),
        (256, "padded", 8, "matmul"),
        (257, "padded", 8, "gather"),
        (1024, "padded", 8, "gather"),
        (1024, "padded", 64, "matmul"),
        (4097, "padded", 64, "gather"),
        (4097, "padded", 1000, "gather"),  # held flat beyond 64 ids per row
        (16, "bags", None, "matmul"),  # matmul wins even for bags of one id
        (17, "bags", None, "per_batch"),
        (1024, "bags", None, "per_batch"),
        (4096, "bags", None, "per_batch"),
        (4097, "bags", None, "gather"),  # large tables always gather
    ],
)
def test_choose_given_a_calibration(cal, vocab, form, ids_per_row, expected):
    choice = _cost_model.choose(vocab, form, ids_per_row, cal)
    assert choice.strategy == expected
    assert f"{vocab:,}" in choice.reason and "test calibration" in choice.reason
    assert (choice.min_ids_per_row is not None) == (expected == "per_batch")


def test_multi_hot_rows_have_their_own_crossovers():
    crossovers = {**CROSSOVERS, "multi_hot": {"1": 64, "8": 1024, "64": 8192}}
    cal = _cost_model.Calibration(crossovers, "with multi_hot")
    # Where ragged bags already gather, dense multi-hot rows still multiply.
    assert _cost_model.choose(32, "bags", None, cal).strategy == "per_batch"
    assert _cost_model.choose(32, "multi_hot", None, cal).strategy == "matmul"
    assert _cost_model.choose(8192, "multi_hot", None, cal).strategy == "per_batch"
    assert _cost_model.choose(8193, "multi_hot", None, cal).strategy == "gather"
    choice = _cost_model.choose(1024, "multi_hot", None, cal)
    assert choice.min_ids_per_row == pytest.approx(8)
    assert "dense multi-hot rows" in choice.reason
    assert "multi_hot crossovers" in choice.reason


def test_a_calibration_without_multi_hot_rows_uses_its_ragged_crossovers(cal):
    # Files written by 0.2 have no "multi_hot" form; they still read, and
    # multi-hot rows are placed as they were then.
    assert cal.crossovers["multi_hot"] == cal.crossovers["ragged"]
    assert "run keras_lookup.calibrate() again" in cal.source
    for vocab in (16, 17, 1024, 4097):
        by_bags = _cost_model.choose(vocab, "bags", None, cal)
        by_rows = _cost_model.choose(vocab, "multi_hot", None, cal)
        assert by_rows[::2] == by_bags[::2]  # strategy and threshold


def test_crossover_interpolates_in_log_log(cal):
    assert cal.crossover("ragged", 8) == pytest.approx(256)
    # Between measured sizes: V* = 16 k^(4/3) exactly on this calibration.
    for k in (2, 4, 16, 32):
        assert cal.crossover("ragged", k) == pytest.approx(16 * k ** (4 / 3))
    assert cal.crossover("ragged", 0.5) == 16
    assert cal.crossover("ragged", 500) == 4096


def test_min_ids_per_row_inverts_the_crossover(cal):
    assert cal.min_ids_per_row("ragged", 16) == 0.0
    assert cal.min_ids_per_row("ragged", 4097) == math.inf
    assert cal.min_ids_per_row("ragged", 1024) == pytest.approx((1024 / 16) ** (3 / 4))
    for vocab in (17, 100, 256, 257, 1000, 3000, 4096):
        k_star = cal.min_ids_per_row("ragged", vocab)
        for k in (1, 2, 5, 8, 9, 20, 40, 64):
            matmul_wins = vocab <= cal.crossover("ragged", k) * (1 + 1e-12)
            assert matmul_wins == (k >= k_star * (1 - 1e-12)), (vocab, k)


def test_noisy_crossovers_are_made_monotone():
    noisy = {**CROSSOVERS, "ragged": {"1": 40, "8": 30, "64": 4096}}
    cal = _cost_model.Calibration(noisy, "noisy")
    assert cal.crossover("ragged", 8) == 40


@pytest.mark.parametrize(
    "crossovers, message",
    [
        ({"single": {"1": 3}, "padded": {"1": 3}}, "lacks the forms"),
        ({**CROSSOVERS, "sparse": {"1": 3}}, "form must be one of"),
        ({**CROSSOVERS, "ragged": {}}, "needs positive ids per row"),
    ],
)
def test_bad_calibration_is_refused(crossovers, message):
    with pytest.raises(ValueError, match=message):
        _cost_model.Calibration(crossovers, "bad")


def test_cache_dir_env_var_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv(calibration.CACHE_DIR_ENV, str(tmp_path / "a"))
    assert calibration.cache_dir() == str(tmp_path / "a")
    monkeypatch.delenv(calibration.CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert calibration.cache_dir() == str(tmp_path / "xdg" / "keras_lookup")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".cache" / "keras_lookup"
    assert calibration.cache_dir() == str(expected)


def test_file_is_keyed_by_device_dtype_and_tensorflow_version():
    name = os.path.basename(calibration.calibration_path("bfloat16"))
    assert name == f"cpu-bfloat16-tf{tf.__version__}.json"
    gpu = calibration.calibration_path("float32", device="GPU:NVIDIA H100 80GB")
    assert os.path.basename(gpu).startswith("gpu_nvidia_h100_80gb-float32-tf")


def test_without_a_file_layers_use_the_shipped_defaults():
    layer = keras_lookup.DimensionReducer(10, 2)
    assert layer.strategy_choice.reason.endswith(f"({_cost_model.CPU_DEFAULTS_SOURCE})")


def test_layers_read_the_calibration_for_their_dtype():
    path32 = write_calibration(CROSSOVERS)
    layer = keras_lookup.DimensionReducer(1024, 2, combiner="sum")
    assert path32 in layer.strategy_choice.reason
    # No float16 file: the float32 one for this device, and it says so.
    half = keras_lookup.DimensionReducer(1024, 2, combiner="sum", dtype="float16")
    assert "for float16" in half.strategy_choice.reason
    all_matmul = {form: {"1": 10**7} for form in CROSSOVERS}
    path16 = write_calibration(all_matmul, dtype="float16")
    half = keras_lookup.DimensionReducer(1024, 2, combiner="sum", dtype="float16")
    assert half.strategy_choice.strategy == "matmul"
    assert path16 in half.strategy_choice.reason


@pytest.mark.parametrize(
    "content", ["{not json", '{"format": 1}', '{"crossover": {"single": 3}}']
)
def test_unreadable_calibration_names_the_file_and_the_fix(content):
    path = write_calibration(CROSSOVERS)
    with open(path, "w") as f:
        f.write(content)
    with pytest.raises(ValueError, match="Delete the file") as info:
        keras_lookup.DimensionReducer(10, 2)
    assert path in str(info.value)


def test_model_saved_on_one_device_re_resolves_on_another(tmp_path):
    write_calibration({form: {"1": 10**7} for form in CROSSOVERS})
    inputs = keras.Input((None,), dtype="int32", ragged=True)
    outputs = keras_lookup.DimensionReducer(1024, 2, combiner="sum")(inputs)
    model = keras.Model(inputs, outputs)
    assert model.layers[-1].strategy_choice.strategy == "matmul"
    path = str(tmp_path / "model.keras")
    model.save(path)
    # "Another device": a calibration where gather always wins.
    write_calibration({form: {"1": 1} for form in CROSSOVERS})
    loaded = keras.saving.load_model(path).layers[-1]
    assert loaded.get_config()["strategy"] == "auto"
    assert loaded.strategy_choice.strategy == "gather"


def test_calibrate_writes_a_file_that_layers_read():
    record = keras_lookup.calibrate(
        vocabs=[2, 64],
        ids_per_row=(1, 8),
        rounds=1,
        dim=4,
        rows=16,
        single_ids=64,
        verbose=False,
    )
    path = calibration.calibration_path("float32")
    assert record["path"] == path and os.path.exists(path)
    with open(path) as f:
        stored = json.load(f)
    assert stored["crossover"] == record["crossover"]
    assert set(stored["crossover"]) == {"single", "padded", "ragged", "multi_hot"}
    assert set(stored["crossover"]["ragged"]) == {"1", "8"}
    assert set(stored["crossover"]["multi_hot"]) == {"1", "8"}
    assert (stored["device"], stored["dtype"]) == ("CPU", "float32")
    assert stored["tensorflow"] == tf.__version__
    for scan in stored["measurements"]:
        assert len(scan["gather_ms"]) == len(scan["vocabs"]) >= 1
        assert all(t > 0 for t in scan["gather_ms"] + scan["matmul_ms"])
    layer = keras_lookup.DimensionReducer(1024, 2, combiner="sum")
    assert path in layer.strategy_choice.reason


def test_calibrate_without_bag_sizes_is_refused():
    with pytest.raises(ValueError, match="`ids_per_row` must list"):
        keras_lookup.calibrate(ids_per_row=(), save=False)


def test_shipped_cpu_defaults_are_the_median_of_the_shipped_runs():
    # CPU_DEFAULTS cite their measurements: each crossover is the median (in
    # log V) of the calibration runs in benchmarks/results/calibration/.
    folder = os.path.join(
        os.path.dirname(__file__), "..", "benchmarks", "results", "calibration"
    )
    runs = []
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name)) as f:
            runs.append(json.load(f)["crossover"])
    assert len(runs) == 6
    for form, crossovers in _cost_model.CPU_DEFAULTS.items():
        for k, shipped in crossovers.items():
            logs = sorted(math.log(run[form][str(k)]) for run in runs)
            median = math.exp((logs[2] + logs[3]) / 2)
            assert shipped == max(1.0, round(median)), (form, k, median)
