"""The non-local block (Wang et al. 2018, Eq. 1) against a float64 numpy implementation."""
import numpy as np
import pytest
import torch

from gcvideo.layers import NL_INSTANTIATIONS, NonLocalBlock

N, C, T, H, W = 2, 8, 2, 4, 6


def _np(t):
    return t.detach().double().numpy()


def _conv1x1(mod, x):  # x (N, C, L) -> (N, O, L)
    w = _np(mod.weight).reshape(mod.out_channels, -1)
    b = _np(mod.bias) if mod.bias is not None else 0.0
    return np.einsum("oc,ncl->nol", w, x) + (b[None, :, None] if mod.bias is not None else 0.0)


def _maxpool(x5, k):  # (N, C, T, H, W) -> (N, C, T/kt, H/kh, W/kw)
    n, c, t, h, w = x5.shape
    kt, kh, kw = k
    r = x5[:, :, : t // kt * kt, : h // kh * kh, : w // kw * kw]
    r = r.reshape(n, c, t // kt, kt, h // kh, kh, w // kw, kw)
    return r.max(axis=(3, 5, 7))


def reference(block: NonLocalBlock, x: np.ndarray) -> np.ndarray:
    n, c, t, h, w = x.shape
    pool = tuple(block.pool.kernel_size) if block.pool is not None else (1, 1, 1)

    def sub(z):  # subsample a (N, Ci, L) map laid out on (T, H, W)
        return _maxpool(z.reshape(n, -1, t, h, w), pool).reshape(n, z.shape[1], -1)

    def key_value(conv, xf):  # phi/g: conv then pool, or pool the input then conv
        return _conv1x1(conv, sub(xf)) if block.pool_position == "before_conv" else sub(_conv1x1(conv, xf))

    xf = x.reshape(n, c, -1)
    if block.instantiation == "gaussian":
        q, k = xf, sub(xf)
    else:
        q, k = _conv1x1(block.conv_theta, xf), key_value(block.conv_phi, xf)
    g = key_value(block.conv_g, xf)  # (N, Ci, Lk)
    lk = k.shape[2]
    if block.instantiation in ("gaussian", "embedded_gaussian"):
        f = np.exp(np.einsum("nci,ncj->nij", q, k))
        f = f / f.sum(axis=2, keepdims=True)  # C(x) = sum_j f(x_i, x_j)
    elif block.instantiation == "dot_product":
        f = np.einsum("nci,ncj->nij", q, k) / lk  # C(x) = N
    else:
        wf = _np(block.concat_project.weight).reshape(-1)
        ci = q.shape[1]
        f = np.zeros((n, q.shape[2], lk))
        for i in range(q.shape[2]):  # f = ReLU(w_f^T [theta_i, phi_j]) position by position
            for j in range(lk):
                cat = np.concatenate([q[:, :, i], k[:, :, j]], axis=1)  # (N, 2 Ci)
                f[:, i, j] = np.maximum(cat @ wf, 0)
        f = f / lk
        assert wf.shape[0] == 2 * ci
    y = np.einsum("nij,ncj->nci", f, g)  # (N, Ci, L)
    wz = _conv1x1(block.conv_out, y)  # (N, C, L)
    bn = block.bn  # eval mode: running statistics
    wz = (wz - _np(bn.running_mean)[None, :, None]) / np.sqrt(_np(bn.running_var)[None, :, None] + bn.eps)
    wz = wz * _np(bn.weight)[None, :, None] + _np(bn.bias)[None, :, None]
    return (xf + wz).reshape(x.shape)


def random_block(c, instantiation, pool, pool_position) -> NonLocalBlock:
    """A float64 block in eval mode with every weight and BN statistic random."""
    block = NonLocalBlock(c, instantiation=instantiation, pool=pool, pool_position=pool_position).double().eval()
    g = torch.Generator().manual_seed(len(instantiation))
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
        block.bn.running_mean.copy_(torch.randn(c, generator=g, dtype=torch.float64))
        block.bn.running_var.copy_(torch.rand(c, generator=g, dtype=torch.float64) + 0.5)
    return block


@pytest.mark.parametrize("instantiation", NL_INSTANTIATIONS)
@pytest.mark.parametrize("pool,pool_position", [(None, "after_conv"), ((1, 2, 2), "after_conv"),
                                                ((1, 2, 2), "before_conv"), ((2, 2, 2), "before_conv")])
def test_nonlocal_matches_eq1_float64(instantiation, pool, pool_position):
    block = random_block(C, instantiation, pool, pool_position)
    x = torch.randn(N, C, T, H, W, dtype=torch.float64)
    np.testing.assert_allclose(block(x).detach().numpy(), reference(block, x.numpy()), rtol=1e-9, atol=1e-10)


def test_inner_channels_default_half_and_params():
    block = NonLocalBlock(512)
    assert block.inner == 256
    # theta, phi, g, out convs (with biases) + BN affine
    assert sum(p.numel() for p in block.parameters()) == 3 * (512 * 256 + 256) + (256 * 512 + 512) + 2 * 512


@pytest.mark.parametrize("instantiation", NL_INSTANTIATIONS)
def test_zero_init_is_identity(instantiation):
    block = NonLocalBlock(C, instantiation=instantiation)
    x = torch.randn(N, C, T, H, W)
    assert float(block.bn.weight.detach().abs().sum()) == 0.0
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)


def test_pool_positions_differ_but_share_parameters():
    a = NonLocalBlock(C, pool=(1, 2, 2), pool_position="after_conv", zero_init=False).eval()
    b = NonLocalBlock(C, pool=(1, 2, 2), pool_position="before_conv", zero_init=False).eval()
    with torch.no_grad():
        for p in a.parameters():
            p.normal_()
    b.load_state_dict(a.state_dict())
    x = torch.randn(N, C, T, H, W)
    assert not torch.allclose(a(x), b(x))


def test_affinity_normalisation():
    block = NonLocalBlock(C, instantiation="embedded_gaussian", pool=(1, 2, 2))
    x = torch.randn(N, C, T, H, W)
    a = block.affinity(x)
    assert a.shape == (N, T * H * W, T * (H // 2) * (W // 2))
    torch.testing.assert_close(a.sum(-1), torch.ones(N, T * H * W))
