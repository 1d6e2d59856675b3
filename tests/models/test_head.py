"""The classifier head's pooling options against the peers' heads: pytorchvideo's own
``create_res_basic_head`` (installed) and PySlowFast's ``ResNetBasicHead`` written out from its
source (slowfast/models/head_helper.py)."""
import pytest
import torch
import torch.nn.functional as F

from gcvideo.models import build_model
from gcvideo.models.resnet import ResNetHead

from model_helpers import _tiny_cfg  # noqa: E402

C, K = 16, 5
KERNEL = (8, 7, 7)  # PySlowFast / slow_r50: (NUM_FRAMES, 224 / 32, 224 / 32)


def _features(size=8, seed=0):
    """Last-stage features of a 256 test crop: (N, C, 8, 8, 8), 2x2 positions of the 8x7x7 pool."""
    return torch.randn(2, C, 8, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _head(average, seed=1, dropout=0.5):
    head = ResNetHead(C, K, dropout=dropout, pool_kernel=KERNEL, position_average=average).double().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.proj.weight.copy_(torch.randn(K, C, generator=g, dtype=torch.float64))
        head.proj.bias.copy_(torch.randn(K, generator=g, dtype=torch.float64))
    return head


def _pyslowfast_head(x, weight, bias, training=False):
    """PySlowFast ResNetBasicHead.forward (one pathway, act_func softmax): AvgPool3d(pool_size, stride=1),
    permute to (N, T, H, W, C), (dropout), projection; in eval softmax over classes (dim 4) and, when
    more than one position, the mean over (T, H, W); view (N, -1)."""
    x = F.avg_pool3d(x, KERNEL, stride=1)
    x = x.permute((0, 2, 3, 4, 1))
    x_proj = F.linear(x, weight, bias)
    if not training:
        x_proj = torch.softmax(x_proj, dim=4)
        if x_proj.ndim == 5 and x_proj.shape[1:4] > torch.Size([1, 1, 1]):
            x_proj = x_proj.mean([1, 2, 3])
    return x_proj.view(x_proj.shape[0], -1)


def test_train_crop_logits_matches_pytorchvideo_head():
    from pytorchvideo.models.head import create_res_basic_head

    ref = create_res_basic_head(in_features=C, out_features=K, pool=torch.nn.AvgPool3d, output_size=(1, 1, 1),
                                pool_kernel_size=KERNEL, pool_stride=(1, 1, 1), pool_padding=(0, 0, 0),
                                dropout_rate=0.5, activation=None, output_with_global_average=True).double().eval()
    ours = _head("logits")
    ref.proj.load_state_dict(ours.proj.state_dict())
    x = _features()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-12, atol=1e-12)
        glob = ResNetHead(C, K, 0.5).double().eval()
        glob.proj.load_state_dict(ours.proj.state_dict())
        assert (glob(x) - ref(x)).abs().max() > 1e-3  # global pooling is another function on 2x2 positions
        xt = _features(size=7)  # the 224 training crop: one position, the same function as global pooling
        torch.testing.assert_close(ours(xt), glob(xt), rtol=1e-12, atol=1e-12)


def test_train_crop_probs_matches_pyslowfast_head():
    ours = _head("probs")
    x = _features(seed=2)
    with torch.no_grad():
        expect = _pyslowfast_head(x, ours.proj.weight, ours.proj.bias)  # mean of per-position softmax
        torch.testing.assert_close(torch.softmax(ours(x), dim=1), expect, rtol=1e-12, atol=1e-12)
        logits = _head("logits")(x)
        assert (torch.softmax(logits, dim=1) - expect).abs().max() > 1e-4  # averaging logits differs
        ours = _head("probs", dropout=0.0).train()  # dropout off: the training function itself
        xt = _features(size=7, seed=3)
        torch.testing.assert_close(ours(xt), _pyslowfast_head(xt, ours.proj.weight, ours.proj.bias, training=True),
                                   rtol=1e-12, atol=1e-12)  # training: logits, as PySlowFast


def test_head_pool_config_builds_the_peers_head():
    cfg = _tiny_cfg()
    cfg.DATA.NUM_FRAMES, cfg.DATA.TRAIN_CROP_SIZE = 4, 64
    cfg.MODEL.HEAD_POOL = "train_crop_probs"
    model = build_model(cfg).eval()
    head = model.blocks[-1]
    assert head.pool_kernel == (4, 2, 2) and head.position_average == "probs"
    x = torch.randn(1, 3, 4, 96, 96)  # a test crop 1.5x the training crop: 3x3 features, 2x2 positions
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[2:] == (4, 3, 3)
        probs = torch.softmax(torch.stack([model.blocks[-1].proj(feats[:, :, :, i:i + 2, j:j + 2].mean((2, 3, 4)))
                                           for i in range(2) for j in range(2)], 1), dim=-1).mean(1)
        torch.testing.assert_close(torch.softmax(model(x), 1), probs, rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match="smaller than the head's pool"):
            model(torch.randn(1, 3, 4, 32, 32))
    cfg.MODEL.HEAD_POOL = "global"
    assert build_model(cfg).blocks[-1].pool_kernel is None
