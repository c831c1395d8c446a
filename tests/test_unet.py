import copy
from dataclasses import replace

import pytest
import torch

from kitchen_lib.model import layers
from kitchen_lib.model.diffusion import Diffusion, DiffusionConfig
from kitchen_lib.model.samplers import DDIM
from kitchen_lib.model.unet import Attention, ConditionalUNet, UNetConfig, channels_last, count_parameters
from kitchen_lib.training.config import preset

SMOKE = preset("smoke").model  # 32px frames


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("channels", [3, 1])
def test_shapes(size, channels):
    cfg = UNetConfig(base_channels=16, channel_mults=(1, 2, 3), attention_levels=(2,), time_emb_dim=32, time_mlp_dim=64)
    net = ConditionalUNet(cfg, size, channels, context_frames=0, vector_dim=0)
    assert net.inp.in_channels == 2 * channels  # noisy future stacked with the current frame
    x = torch.randn(2, channels, size, size)
    assert net(x, torch.tensor([0, 999]), {"current": x}).shape == (2, channels, size, size)


def test_seed_preset_is_the_original_architecture():
    run = preset("seed")
    cfg, size = run.model, run.data.size
    attention_px = [size // 2**level for level in cfg.attention_levels]
    assert (size, cfg.base_channels, cfg.channel_mults, cfg.num_res_blocks, attention_px,
            cfg.time_emb_dim, cfg.time_mlp_dim, cfg.dropout) == (128, 32, (1, 2, 3), 1, [32], 128, 512, 0.1)
    assert 1_500_000 < count_parameters(ConditionalUNet(cfg, size, 3, context_frames=0, vector_dim=0)) < 3_000_000


def test_output_depends_on_time_and_condition():
    net = ConditionalUNet(replace(SMOKE, zero_init=False), 32, 3, context_frames=0, vector_dim=0).eval()
    x, c = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    out = net(x, torch.tensor([10]), {"current": c})
    assert not torch.allclose(out, net(x, torch.tensor([900]), {"current": c}))
    assert not torch.allclose(out, net(x, torch.tensor([10]), {"current": -c}))


@pytest.mark.parametrize("fields,size,message", [
    (dict(), 30, r"not divisible by 8 \(patch_size 1 x 2\^3\)"),
    (dict(attention_levels=(4,)), 64, "never occurs"),
    (dict(base_channels=12), 64, "groups=8 do not divide"),
    (dict(base_channels=24, groups=16), 64, "groups=16 do not divide"),
    (dict(base_channels=30, groups=5), 64, "heads=4 do not divide"),
    (dict(patch_size=2), 40, r"not divisible by 16 \(patch_size 2"),
    (dict(patch_size=0), 64, "patch_size must be 1 or more"),
])
def test_impossible_configurations_fail_at_construction(fields, size, message):
    with pytest.raises(ValueError, match=message):
        ConditionalUNet(UNetConfig(**fields), size, 3, context_frames=0, vector_dim=0)


def test_configs_saved_with_pixel_attention_read_as_levels():
    old = {"image_size": 128, "image_channels": 3, "base_channels": 32, "channel_mults": [1, 2, 3], "num_res_blocks": 1,
           "attention_resolutions": [32], "time_emb_dim": 128, "time_mlp_dim": 512, "dropout": 0.1, "groups": 8, "heads": 4}
    cfg = UNetConfig.from_dict(old)
    assert cfg.attention_levels == (2,) and cfg.channel_mults == (1, 2, 3) and not cfg.zero_init
    assert cfg.patch_size == 1  # saved before patches existed: every pixel its own
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg


def test_wrong_input_shape_says_what_it_expects():
    net = ConditionalUNet(SMOKE, 32, 3, context_frames=0, vector_dim=0)
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        net(x, torch.tensor([1]), {"current": x})


@pytest.mark.parametrize("patch", [1, 2])
def test_zero_init_starts_as_copying_the_frame_and_then_learns(patch):
    torch.manual_seed(0)
    net = ConditionalUNet(replace(SMOKE, zero_init=True, patch_size=patch), 32, 3, context_frames=0, vector_dim=0)
    cur, fut = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    inputs = {"current": cur}
    assert torch.equal(net(fut, torch.tensor([5, 50, 500, 900]), inputs), torch.zeros_like(cur))
    d = Diffusion(DiffusionConfig(residual=True, prediction="x0", schedule="cosine"))
    assert torch.equal(DDIM(3, 0.0)(d, net.eval(), inputs, generator=torch.Generator().manual_seed(0)), cur)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(2):  # the zeroed layers get gradients first, then everything behind them
        opt.zero_grad()
        d.training_loss(net.train(), inputs, fut).backward()
        opt.step()
    out = net.eval()(fut, torch.tensor([500] * 4), inputs)
    assert out.abs().max() > 0 and not torch.allclose(out, net(fut, torch.tensor([500] * 4), {"current": -cur}))


@pytest.mark.parametrize("last", [False, True])
def test_patches_are_a_plain_unet_on_the_folded_frames(last):
    """patch_size 2 on 32px RGB is the p = 1 network on 16px frames of 12 channels, each holding
    a 2x2 block of pixels: the fold before the first layer and the unfold after the last are
    each other's inverse and keep every pixel's channels together."""
    torch.manual_seed(0)
    cfg = UNetConfig(base_channels=16, channel_mults=(1, 2), time_emb_dim=32, time_mlp_dim=64, zero_init=False)
    patched = ConditionalUNet(replace(cfg, patch_size=2), 32, 3, context_frames=1, vector_dim=5).eval()
    plain = ConditionalUNet(cfg, 16, 12, context_frames=1, vector_dim=5).eval()
    plain.load_state_dict(patched.state_dict())  # the same weights fit both
    assert patched.inp.in_channels == 3 * 12 and patched.cfg.resolutions(32) == [16, 8]
    if last:
        patched, plain = channels_last(patched), channels_last(plain)
    x, c, ctx, v = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), torch.randn(2, 5)
    t = torch.tensor([3, 700])
    fold = torch.nn.functional.pixel_unshuffle
    folded_out = plain(fold(x, 2), t, {"current": fold(c, 2), "context": fold(ctx, 2), "vector": v})  # (2, 12, 16, 16)
    out = patched(x, t, {"current": c, "context": ctx, "vector": v})
    assert out.shape == (2, 3, 32, 32) and torch.allclose(out, torch.nn.functional.pixel_shuffle(folded_out, 2), atol=1e-5)
    assert not torch.allclose(out, folded_out.reshape(2, 3, 32, 32))  # a plain reshape would not unfold


def test_channels_last_computes_the_same_function():
    net = ConditionalUNet(replace(SMOKE, zero_init=False), 32, 3, context_frames=0, vector_dim=0).eval()
    fast = channels_last(copy.deepcopy(net))
    assert fast.inp.weight.is_contiguous(memory_format=torch.channels_last)
    x, c, t = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), torch.tensor([3, 700])
    assert torch.allclose(net(x, t, {"current": c}), fast(x, t, {"current": c}), atol=1e-5)


def test_channels_last_training_gives_the_plain_models_outputs_and_gradients(monkeypatch):
    """The channels-last model takes its large maps' weight gradients from NCHW copies (layers.Conv3x3):
    outputs and every parameter's gradient must match the plain NCHW model's."""
    monkeypatch.setattr(layers, "NCHW_WEIGHT_GRAD_MIN", 1)  # the detour everywhere
    torch.manual_seed(0)
    plain = ConditionalUNet(replace(SMOKE, zero_init=False, adagn=True), 32, 3, context_frames=0, vector_dim=0)  # no zeros: gradients everywhere
    for p in plain.parameters():
        p.data.normal_(0, 0.1)
    fast = channels_last(copy.deepcopy(plain))
    x, c, t = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32), torch.tensor([3, 200, 500, 999])
    assert type(fast.inp(torch.cat([x, c], 1).contiguous(memory_format=torch.channels_last)).grad_fn).__name__ \
        == "_NCHWWeightGradBackward"  # the detour is taken
    outs = []
    for net in (plain, fast):
        out = net(x, t, {"current": c})
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(plain.named_parameters(), fast.parameters(), strict=True):
        scale = p.grad.abs().max().item()
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5 * scale, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("last", [False, True])
def test_attention_is_the_written_out_formula(last):
    """Channel h*d + j of q (then k, v) is head h's j-th feature: the layout checkpoints were trained with."""
    torch.manual_seed(0)
    att = Attention(16, heads=4, groups=4)
    for p in att.parameters():
        p.data.normal_(0, 0.3)
    x = torch.randn(2, 16, 6, 5)
    qkv = att.qkv(att.norm(x)).flatten(2)  # (B, 3*16, HW)
    q, k, v = (qkv[:, i * 16:(i + 1) * 16].reshape(2, 4, 4, 30).transpose(-1, -2) for i in range(3))  # (B, heads, HW, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 4**0.5, dim=-1)
    want = x + att.proj((weights @ v).transpose(-1, -2).reshape(2, 16, 6, 5))
    if last:
        att, x = channels_last(att), x.contiguous(memory_format=torch.channels_last)
    got = att(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last if last else torch.contiguous_format)


def test_dropout_drops_p_and_rescales_the_rest_in_the_inputs_layout():
    torch.manual_seed(0)
    x = torch.rand(8, 16, 32, 32).add_(0.5).contiguous(memory_format=torch.channels_last).requires_grad_()
    drop = layers.Dropout(0.1)
    y = drop(x)
    dropped = y == 0
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert abs(dropped.float().mean().item() - 0.1) < 0.005  # 131,072 values
    scale = 2**15 / (2**15 - round(0.1 * 2**15))
    torch.testing.assert_close(y[~dropped], x[~dropped] * scale)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, (~dropped).float() * scale)  # the gradient flows exactly where values were kept
    assert not torch.equal(dropped, drop(x) == 0)  # a new mask each call
    assert torch.equal(drop.eval()(x), x) and torch.equal(layers.Dropout(0.0)(x), x)
