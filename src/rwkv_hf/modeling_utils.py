"""Small helpers shared by the model families (the language models and Vision-RWKV). This
file is also part of the flat remote code of every family, so it imports only torch."""
import torch

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
