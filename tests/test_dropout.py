"""The CPU dropout masks of seqtransfer.models.dropout: threshold, scale, rate, independence,
seeding, gradients, the switch back to torch's draws, and that every model uses them."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from seqtransfer.models import dropout as D

pytestmark = pytest.mark.unit


def test_threshold_and_scale_on_hand_made_uniforms(monkeypatch):
    """p = 0.25: drop u < 16384 (u = int16 + 32768), keep the rest scaled by 65536 / 49152."""
    u = torch.tensor([-32768, -16385, -16384, 0, 32767], dtype=torch.int16)   # u = 0, 16383, 16384, ...
    monkeypatch.setattr(D, "uniform16", lambda shape, device=None: u.view(*shape))
    m = D.keep_mask((5,), 0.25)
    assert m.tolist() == pytest.approx([0.0, 0.0, 4 / 3, 4 / 3, 4 / 3])
    assert m.dtype == torch.float32


def test_uniforms_cover_16_bits_evenly():
    torch.manual_seed(0)
    u = D.uniform16((400_000,)).long() + 32768
    assert u.min() >= 0 and u.max() <= 65535
    counts = torch.bincount(u // 4096, minlength=16).double()               # 16 bins of 4,096 values
    assert ((counts - 25_000).abs() < 5 * 25_000 ** 0.5).all()               # each bin within 5 sigma


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_rate_is_p_and_the_mask_is_unbiased(p):
    torch.manual_seed(1)
    n = 1_000_000
    m = D.keep_mask((n,), p)
    assert abs(D.effective_rate(p) - p) <= 2 ** -17
    kept = (m > 0).double().mean().item()
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(kept - (1 - p)) < 5 * sd
    assert torch.unique(m).tolist() == pytest.approx([0.0, 1 / (1 - D.effective_rate(p))])
    assert abs(m.double().mean().item() - 1.0) < 5 * sd / (1 - p)            # E[mask] = 1: unbiased


def test_neighbours_and_calls_are_independent():
    """The four masks cut from one 64-bit word, the next word's, and the next call's."""
    torch.manual_seed(2)
    n = 400_000
    a = (D.keep_mask((n,), 0.5) > 0).double()
    b = (D.keep_mask((n,), 0.5) > 0).double()
    lim = 5 / n ** 0.5
    for lag in (1, 2, 3, 4, 5):
        assert abs(np.corrcoef(a[:-lag].numpy(), a[lag:].numpy())[0, 1]) < lim
    assert abs(np.corrcoef(a.numpy(), b.numpy())[0, 1]) < lim


def test_same_seed_same_mask_other_seed_other_mask():
    torch.manual_seed(3)
    a = D.keep_mask((7, 11), 0.2)
    torch.manual_seed(3)
    b = D.keep_mask((7, 11), 0.2)
    torch.manual_seed(4)
    c = D.keep_mask((7, 11), 0.2)
    assert a.shape == (7, 11) and torch.equal(a, b) and not torch.equal(a, c)


def test_module_values_gradient_and_modes():
    torch.manual_seed(5)
    drop = D.Dropout(0.3)
    x = torch.randn(64, 33, requires_grad=True)
    y = drop(x)
    y.backward(torch.ones_like(y))
    kept = y != 0
    scale = 1 / (1 - D.effective_rate(0.3))
    assert torch.allclose(y[kept], x[kept] * scale)
    assert torch.allclose(x.grad, kept.float() * scale)                     # d y / d x is the mask
    drop.eval()
    assert drop(x) is x
    assert D.Dropout(0.0)(x) is x


def test_native_switch_gives_torchs_own_draws():
    torch.manual_seed(6)
    x = torch.randn(50, 40)
    with D.native():
        assert not D.FAST
        a = D.Dropout(0.2)(x)
    assert D.FAST
    torch.manual_seed(6)
    torch.randn(50, 40)
    assert torch.equal(a, F.dropout(x, 0.2, True))


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_invalid_rate_names_the_range(p):
    with pytest.raises(ValueError, match=r"dropout rate must be in \[0, 1\)"):
        D.keep_mask((3,), p)


def test_every_model_draws_its_masks_here():
    """No model keeps a torch nn.Dropout: each layer is the CPU-fast one (the same p)."""
    from seqtransfer.models import ContentConfig, MultiDomainConfig
    from seqtransfer.models.adversarial import ActivenessDiscriminator
    from seqtransfer.models.content import ContentSASRec
    from seqtransfer.models.gru4rec import GRU4Rec, GRU4RecConfig
    from seqtransfer.models.multidomain import MultiDomainSASRec
    from seqtransfer.models.plugins import PluginHead
    from seqtransfer.models.sasrec import SASRec, SASRecConfig

    feats = {"text": torch.randn(6, 12)}
    models = [SASRec(5, SASRecConfig(dim=8, n_heads=1, n_layers=1, max_len=4)),
              GRU4Rec(5, GRU4RecConfig(dim=8, max_len=4)),
              ContentSASRec(feats, ContentConfig(dim=8, n_heads=1, n_layers=1, max_len=4)),
              MultiDomainSASRec({"a": 5}, MultiDomainConfig(dim=8, n_heads=1, n_layers=1, max_len=4)),
              ActivenessDiscriminator(8), PluginHead(8, kind="linear", dropout=0.1)]
    for m in models:
        drops = [x for x in m.modules() if isinstance(x, nn.Dropout)]
        assert drops, type(m).__name__
        assert all(type(x) is D.Dropout for x in drops), type(m).__name__


def test_the_module_draws_keep_mask_on_the_cpu():
    x = torch.randn(9, 13)
    torch.manual_seed(7)
    y = D.Dropout(0.2)(x)
    torch.manual_seed(7)
    assert torch.equal(y, x * D.keep_mask(x.shape, 0.2))
