"""Small helpers shared by the model families (the language models, Vision-RWKV,
Restore-RWKV, PointRWKV). This file is also part of the flat remote code of every family, so it
imports only torch."""
import torch
from torch import nn

V7_DECAY_SCALE = -0.6065306597126334  # -exp(-0.5): RWKV-7's log-decay is this * sigmoid(.)


def layer_ratios(layer_id, num_layers):
    """BlinkDL's init ratios: 0 -> 1 across depth, and 1 -> almost 0."""
    return layer_id / max(num_layers - 1, 1), 1.0 - layer_id / num_layers


def ramp(c, device=None):
    """0, 1/c, ..., (c-1)/c: the channel ramp of the official initialisations."""
    return torch.arange(c, dtype=torch.float32, device=device) / c


def sqrelu(x):
    """relu(x)^2; in place when no gradient is needed (the 4C-wide temporaries cost page faults
    and dominate inference memory)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return torch.relu(x).square()
    return torch.relu_(x).square_()


def check_pixel_values(pixel_values, num_channels):
    """Raise ValueError unless ``pixel_values`` is a finite floating-point [B, num_channels, H, W]
    tensor (under torch.compile the finiteness check is an assert in the graph)."""
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values)
        raise ValueError(f"pixel_values must be a [batch, {num_channels}, height, width] tensor, got {shape}")
    if pixel_values.shape[1] != num_channels:
        raise ValueError(f"pixel_values has {pixel_values.shape[1]} channels but this model takes {num_channels} "
                         f"(config.num_channels); shape {tuple(pixel_values.shape)}")
    if not pixel_values.is_floating_point():
        raise ValueError(f"pixel_values must be floating point, got {pixel_values.dtype}")
    if torch.compiler.is_compiling():  # a traced graph cannot read values: an assert in it
        torch._assert_async(torch.isfinite(pixel_values).all(), "pixel_values contains NaN or infinite values")
    # the sum is NaN/inf when any pixel is (no image-sized temporary); confirm before raising
    elif not torch.isfinite(pixel_values.sum()) and not torch.isfinite(pixel_values).all():
        raise ValueError("pixel_values contains NaN or infinite values")


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's residual branch with probability ``p``
    and scale the kept ones by 1 / (1 - p)."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)
