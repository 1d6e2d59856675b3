"""The non-local block on 5-D video features (N, C, T, H, W).

Reference: X. Wang, R. Girshick, A. Gupta, K. He, "Non-local Neural Networks"
(CVPR 2018), Eq. 1:  y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j),  z_i = W_z y_i + x_i,
with the four instantiations of f (Sec. 3.2):
- gaussian:           f = exp(x_i^T x_j),            C(x) = sum_j f  (softmax)
- embedded_gaussian:  f = exp(theta(x_i)^T phi(x_j)), C(x) = sum_j f  (softmax)
- dot_product:        f = theta(x_i)^T phi(x_j),      C(x) = N_j (number of positions j)
- concat:             f = ReLU(w_f^T [theta(x_i), phi(x_j)]), C(x) = N_j
theta, phi, g are 1x1x1 convs to C/2 channels; the key/value paths (phi, g; x_j
for gaussian) may be subsampled by a 1x2x2 max pool -- after the phi/g convs (PySlowFast,
mmaction2) or on the block input before them (the original Caffe2 non-local code; same
parameters, 4x fewer phi/g FLOPs); W_z is a 1x1x1 conv
followed by BN whose scale starts at zero, so a new block is the identity.
Used by the GCNet paper (Sec. 3, Table 10) as the baseline it simplifies.
Parameter names follow PySlowFast (conv_theta, conv_phi, conv_g, conv_out, bn).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from gcvideo.layers.residual import ResidualContext

__all__ = ["NonLocalBlock", "NL_INSTANTIATIONS", "NL_POOL_POSITIONS"]

NL_INSTANTIATIONS = ("gaussian", "embedded_gaussian", "dot_product", "concat")
NL_POOL_POSITIONS = ("after_conv", "before_conv")  # where the key/value subsampling happens


class NonLocalBlock(ResidualContext):
    """Non-local block (Eq. 1) in one of its four instantiations.

    Args:
        channels: C.
        inner_channels: channels of theta/phi/g (default C/2).
        instantiation: one of gaussian, embedded_gaussian, dot_product, concat.
        pool: max-pool kernel (T, H, W) on the key/value paths, e.g. (1, 2, 2); None = off.
        pool_position: "after_conv" (pool the phi/g outputs) or "before_conv" (pool the
            block input, then phi/g convs on the pooled positions).
        scale: divide embedded_gaussian logits by sqrt(inner_channels).
        zero_init: BN scale after W_z starts at zero.
        bn_eps, bn_momentum: BN settings.
    """

    def __init__(self, channels: int, inner_channels: Optional[int] = None,
                 instantiation: str = "embedded_gaussian", pool: Optional[Sequence[int]] = (1, 2, 2),
                 pool_position: str = "after_conv", scale: bool = False, zero_init: bool = True, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1):
        super().__init__()
        if instantiation not in NL_INSTANTIATIONS:
            raise ValueError(f"instantiation={instantiation!r}: expected one of {NL_INSTANTIATIONS}")
        if pool_position not in NL_POOL_POSITIONS:
            raise ValueError(f"pool_position={pool_position!r}: expected one of {NL_POOL_POSITIONS}")
        self.pool_position = pool_position
        inner = inner_channels or channels // 2
        self.channels, self.inner, self.instantiation, self.scale = channels, inner, instantiation, scale
        if instantiation != "gaussian":  # gaussian uses x itself for f
            self.conv_theta = nn.Conv3d(channels, inner, kernel_size=1)
            self.conv_phi = nn.Conv3d(channels, inner, kernel_size=1)
        self.conv_g = nn.Conv3d(channels, inner, kernel_size=1)
        if instantiation == "concat":
            # w_f over [theta_i, phi_j] (2*inner -> 1), followed by ReLU.
            self.concat_project = nn.Conv3d(2 * inner, 1, kernel_size=1, bias=False)
        self.pool = nn.MaxPool3d(tuple(pool), stride=tuple(pool)) if pool and any(k > 1 for k in pool) else None
        self.conv_out = nn.Conv3d(inner, channels, kernel_size=1)
        self.bn = nn.BatchNorm3d(channels, eps=bn_eps, momentum=bn_momentum)
        self.zero_init = zero_init
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.bn.weight, 0.0 if self.zero_init else 1.0)
        nn.init.zeros_(self.bn.bias)

    def _pool(self, t: torch.Tensor) -> torch.Tensor:
        return self.pool(t) if self.pool is not None else t

    def _pooled_input(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The subsampled block input, where a path uses it (gaussian keys, before_conv phi/g)."""
        if self.pool_position == "before_conv" or self.instantiation == "gaussian":
            return self._pool(x)  # (N, C, T', H', W')
        return None

    def _key_value_path(self, conv: nn.Module, x: torch.Tensor, x_pooled: torch.Tensor) -> torch.Tensor:
        """phi or g on the subsampled positions: conv then pool, or pool (x_pooled) then conv."""
        if self.pool_position == "before_conv":
            return conv(x_pooled)  # (N, Ci, T', H', W')
        return self._pool(conv(x))  # (N, Ci, T', H', W')

    def affinity(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised pairwise weights f(x_i, x_j)/C(x): (N, L_query, L_key)."""
        return self._affinity_and_parts(x)[0]

    def _affinity_and_parts(self, x: torch.Tensor, x_pooled: Optional[torch.Tensor] = None):
        n = x.shape[0]
        if x_pooled is None:
            x_pooled = self._pooled_input(x)
        if self.instantiation == "gaussian":
            q = x.reshape(n, self.channels, -1)  # (N, C, L)
            k = x_pooled.reshape(n, self.channels, -1)  # (N, C, Lk)
        else:
            q = self.conv_theta(x).reshape(n, self.inner, -1)  # (N, Ci, L)
            k = self._key_value_path(self.conv_phi, x, x_pooled).reshape(n, self.inner, -1)  # (N, Ci, Lk)
        if self.instantiation in ("gaussian", "embedded_gaussian"):
            logits = torch.bmm(q.transpose(1, 2), k)  # (N, L, Lk)
            if self.scale and self.instantiation == "embedded_gaussian":
                logits = logits * self.inner ** -0.5
            attn = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1).to(x.dtype)
        elif self.instantiation == "dot_product":
            attn = torch.bmm(q.transpose(1, 2), k) / k.shape[-1]  # (N, L, Lk)
        else:  # concat: ReLU(a . theta_i + b . phi_j) / N_j
            w = self.concat_project.weight.reshape(2, self.inner)  # rows: theta part, phi part
            u = torch.einsum("c,ncl->nl", w[0], q)  # (N, L)
            v = torch.einsum("c,ncl->nl", w[1], k)  # (N, Lk)
            attn = torch.relu(u.unsqueeze(2) + v.unsqueeze(1)) / k.shape[-1]  # (N, L, Lk)
        return attn, q, k

    def forward(self, x: torch.Tensor, return_parts: bool = False):
        n, c, t, h, w = x.shape
        x_pooled = self._pooled_input(x)
        attn, q, k = self._affinity_and_parts(x, x_pooled)  # (N, L, Lk)
        g = self._key_value_path(self.conv_g, x, x_pooled).reshape(n, self.inner, -1)  # (N, Ci, Lk)
        y = torch.bmm(g, attn.transpose(1, 2))  # (N, Ci, L)
        y = y.reshape(n, self.inner, t, h, w)  # (N, Ci, T, H, W)
        delta = self.bn(self.conv_out(y))  # (N, C, T, H, W)
        z = x + delta
        if return_parts:
            return z, dict(attention=attn, query=q, key=k, value=g, delta=delta)
        return z

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, inner={self.inner}, instantiation={self.instantiation}, "
                f"pool={tuple(self.pool.kernel_size) if self.pool is not None else None}, "
                f"pool_position={self.pool_position}")
