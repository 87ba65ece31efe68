"""User tower: shapes, masking (padding never attends, no future leakage), determinism, ONNX."""

import numpy as np
import pytest
import torch

from encoders.user_tower import UserTower, UserTowerConfig

CONFIG = UserTowerConfig(dim=16, n_layers=2, n_heads=2, max_len=8, dropout=0.1)


def inputs(B=3, T=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, :5] = False  # left padding
    x = torch.randn(B, T, CONFIG.dim, generator=g) * mask.unsqueeze(-1)
    events = torch.randint(1, CONFIG.n_event_ids, (B, T), generator=g) * mask
    buckets = torch.randint(1, CONFIG.n_time_buckets, (B, T), generator=g) * mask
    return x, events, buckets, mask


def tower(seed=0):
    torch.manual_seed(seed)
    return UserTower(CONFIG).eval()


def test_shapes():
    m, args = tower(), inputs()
    assert m(*args).shape == (3, CONFIG.dim)
    seq = m.sequence(*args)
    assert seq.shape == (3, 8, CONFIG.dim)
    torch.testing.assert_close(m(*args), seq[:, -1])
    assert torch.all(seq[0, :5] == 0)  # padded positions are zeroed


def test_padding_never_attends():
    m, (x, e, b, mask) = tower(), inputs()
    garbage = x.clone(), e.clone(), b.clone()
    garbage[0][0, :5] = 100.0
    garbage[1][0, :5] = 2
    garbage[2][0, :5] = 7
    torch.testing.assert_close(m.sequence(*garbage, mask)[0, 5:], m.sequence(x, e, b, mask)[0, 5:])


def test_more_left_padding_gives_the_same_user_vector():
    m, (x, e, b, mask) = tower(), inputs()
    short = m(x[1:2, 4:], e[1:2, 4:], b[1:2, 4:], mask[1:2, 4:])  # the last 4 events, T = 4
    padded_mask = mask[1:2].clone()
    padded_mask[:, :4] = False
    long = m(x[1:2] * padded_mask.unsqueeze(-1), e[1:2] * padded_mask, b[1:2] * padded_mask, padded_mask)
    torch.testing.assert_close(short, long)


def test_no_future_leakage():
    m, (x, e, b, mask) = tower(), inputs()
    changed = x.clone(), e.clone(), b.clone()
    changed[0][:, 6:] = torch.randn(3, 2, CONFIG.dim)
    changed[1][:, 6:] = 1
    before, after = m.sequence(x, e, b, mask), m.sequence(*changed, mask)
    torch.testing.assert_close(after[:, :6], before[:, :6])
    assert not torch.allclose(after[:, 6:], before[:, 6:])


def test_deterministic_with_seed():
    torch.testing.assert_close(tower(seed=1)(*inputs()), tower(seed=1)(*inputs()))
    assert not torch.allclose(tower(seed=1)(*inputs()), tower(seed=2)(*inputs()))
    m = UserTower(CONFIG).train()
    torch.manual_seed(3)
    a = m(*inputs())
    torch.manual_seed(3)
    torch.testing.assert_close(m(*inputs()), a)  # dropout follows the seed too


@pytest.mark.filterwarnings(
    "ignore:.*LeafSpec:FutureWarning", "ignore:# The axis name:UserWarning"
)  # from torch.export
def test_onnx_export_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m, args = tower(), inputs()
    names = ["item_vectors", "event_types", "time_buckets", "attention_mask"]
    batch, time = torch.export.Dim("batch"), torch.export.Dim("time", max=CONFIG.max_len)
    path = tmp_path / "user_tower.onnx"
    torch.onnx.export(
        m,
        args,
        str(path),
        input_names=names,
        output_names=["user_vector"],
        opset_version=18,
        dynamic_shapes=tuple({0: batch, 1: time} for _ in names),
        dynamo=True,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for B, T in [(3, 8), (1, 5)]:
        x, e, b, mask = inputs(B=B, T=T, seed=B + T)
        got = session.run(None, dict(zip(names, (x.numpy(), e.numpy(), b.numpy(), mask.numpy()))))[0]
        np.testing.assert_allclose(got, m(x, e, b, mask).detach().numpy(), atol=1e-5)
