"""Configurations of the RWKV language models (v4, v5.2, v6, v7).

Each version has its own ``model_type`` (``rwkv_hf_v4`` ... ``rwkv_hf_v7``): the
names ``rwkv``, ``rwkv5``, ``rwkv6`` and ``rwkv7`` already belong to transformers,
Hub remote code and flash-linear-attention.
"""
import math

from transformers import PreTrainedConfig


class _RwkvLMConfig(PreTrainedConfig):
    """Fields shared by every RWKV language model.

    Args:
        vocab_size: number of token ids (65536 for the World vocabulary, 50277 for
            the GPT-NeoX vocabulary of the Pile models).
        hidden_size: width C of the residual stream.
        num_hidden_layers: number of blocks L.
        intermediate_size: width of the channel-mix (FFN) hidden layer; the
            version's default when None.
        head_size: per-head key/value width N (v5-v7); C must be a multiple of it.
        layer_norm_epsilon: epsilon of the block LayerNorms.
        group_norm_epsilon: epsilon of the per-head GroupNorm ``ln_x`` (v5-v7); the
            official runtimes use 64e-5 whatever the head size.
        tie_word_embeddings: share the input embedding and the output head.
    """

    vocab_size: int = 65536
    hidden_size: int = 768
    num_hidden_layers: int = 12
    intermediate_size: int | None = None
    head_size: int = 64
    layer_norm_epsilon: float = 1e-5
    group_norm_epsilon: float = 64e-5
    initializer_range: float = 0.02
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 0
    pad_token_id: int | None = 0
    use_cache: bool = True
    tie_word_embeddings: bool = False

    # The recurrent cache (transformers' linear-attention cache layers) keeps two
    # states per layer: 0 = time-mix shift + WKV state, 1 = channel-mix shift.
    number_of_conv_states = 2

    def __post_init__(self, **kwargs):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "head_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive integer, got {value!r}")
        if self.intermediate_size is None:
            self.intermediate_size = self.default_intermediate_size()
        if self._uses_heads and self.hidden_size % self.head_size:
            raise ValueError(
                f"{type(self).__name__}: hidden_size={self.hidden_size} is not divisible by "
                f"head_size={self.head_size}")
        super().__post_init__(**kwargs)

    _uses_heads = True

    def default_intermediate_size(self):
        return 4 * self.hidden_size

    @property
    def num_heads(self):
        """Number of WKV heads H = hidden_size / head_size."""
        return self.hidden_size // self.head_size

    @property
    def layer_types(self):
        return ["linear_attention"] * self.num_hidden_layers


class RwkvV4Config(_RwkvLMConfig):
    """RWKV-4 (per-channel WKV with a running-max state). ``head_size`` is unused.
    Default vocabulary: GPT-NeoX (the Pile models)."""

    model_type = "rwkv_hf_v4"
    vocab_size: int = 50277
    _uses_heads = False


class RwkvV5Config(_RwkvLMConfig):
    """RWKV-5.2 "Eagle" (matrix-state WKV, per-channel decay constant in time, gate)."""

    model_type = "rwkv_hf_v5"

    def default_intermediate_size(self):
        return int(3.5 * self.hidden_size) // 32 * 32


class RwkvV6Config(_RwkvLMConfig):
    """RWKV-6 "Finch" (data-dependent token shift and decay).

    Args:
        time_mix_extra_dim: rank of the data-dependent token-shift LoRA (32; 64 for
            the largest models).
        time_decay_extra_dim: rank of the data-dependent decay LoRA (64; 128 for the
            largest models).
    """

    model_type = "rwkv_hf_v6"
    time_mix_extra_dim: int = 32
    time_decay_extra_dim: int = 64

    def default_intermediate_size(self):
        return int(3.5 * self.hidden_size) // 32 * 32


def _lora_dim(factor, hidden_size, power=0.5):
    # BlinkDL's rule: max(32, round(factor * C^power / 32) * 32).
    return max(32, round(factor * hidden_size ** power / 32) * 32)


class RwkvV7Config(_RwkvLMConfig):
    """RWKV-7 "Goose" (generalized delta rule).

    Args:
        decay_low_rank_dim, a_low_rank_dim, value_low_rank_dim, gate_low_rank_dim:
            ranks of the decay, in-context learning rate, value-residual and output
            gate LoRAs; None picks BlinkDL's rule from hidden_size (64/64/32/128 at
            C=768).
    """

    model_type = "rwkv_hf_v7"
    decay_low_rank_dim: int | None = None
    a_low_rank_dim: int | None = None
    value_low_rank_dim: int | None = None
    gate_low_rank_dim: int | None = None

    def __post_init__(self, **kwargs):
        c = self.hidden_size
        if isinstance(c, int) and c > 0:
            if self.decay_low_rank_dim is None:
                self.decay_low_rank_dim = _lora_dim(1.8, c)
            if self.a_low_rank_dim is None:
                self.a_low_rank_dim = _lora_dim(1.8, c)
            if self.value_low_rank_dim is None:
                self.value_low_rank_dim = _lora_dim(1.3, c)
            if self.gate_low_rank_dim is None:
                self.gate_low_rank_dim = _lora_dim(0.6, c, 0.8)
        super().__post_init__(**kwargs)


RWKV_LM_CONFIGS = {4: RwkvV4Config, 5: RwkvV5Config, 6: RwkvV6Config, 7: RwkvV7Config}
