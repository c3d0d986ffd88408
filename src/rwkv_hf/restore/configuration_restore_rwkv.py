"""Configuration of Restore-RWKV (model type ``rwkv_hf_restore_rwkv``): the image-restoration
U-Net of Yaziwel/Restore-RWKV (``model/Restore_RWKV.py``, arXiv 2407.11087).

The fields are the official constructor's, with transformers' names where one exists:
``inp_channels`` is ``num_channels``, ``dim`` ``hidden_size``; ``hidden_rate`` and the
Re-WKV ``recurrence`` (fixed to 2 in the official code) are fields here.
"""
from transformers import PreTrainedConfig


class RestoreRwkvConfig(PreTrainedConfig):
    """Restore-RWKV: a 4-level U-Net of RWKV blocks (Omni-Shift token shift, Re-WKV token
    mixing: the bidirectional RWKV-4 WKV over the rows, then over the columns).

    Args:
        num_channels: channels of the input image (1 for the official CT / MRI / PET models).
        out_channels: channels of the restored image (``num_channels`` when None).
        hidden_size: width of level 1 (the official ``dim``; even); level ``i`` (1 to 4) has
            ``hidden_size * 2**(i-1)`` channels, the last decoder level and the refinement
            ``2 * hidden_size``.
        num_blocks: blocks at levels 1, 2, 3 and 4 (the latent); the decoder levels repeat
            levels 1 to 3's counts.
        num_refinement_blocks: blocks after the decoder, at full resolution.
        hidden_rate: channel-mix hidden width over the block's width.
        recurrence: Bi-WKV passes of the Re-WKV, alternately over rows and columns (the
            official models: 2).
        residual: add the input image to the output (the official global residual; needs
            ``out_channels == num_channels``).
        layer_norm_eps: epsilon of the blocks' LayerNorms.

    Inputs of any height and width are padded (by reflection) to multiples of 8, the U-Net's
    total downsampling, and the output is cropped back.
    """

    model_type = "rwkv_hf_restore_rwkv"

    num_channels: int = 1
    out_channels: int | None = None
    hidden_size: int = 48
    num_blocks: list[int] | tuple[int, int, int, int] = (4, 6, 6, 8)
    num_refinement_blocks: int = 4
    hidden_rate: int = 4
    recurrence: int = 2
    residual: bool = True
    layer_norm_eps: float = 1e-5

    def __post_init__(self, **kwargs):
        if self.out_channels is None:
            self.out_channels = self.num_channels
        for name in ("num_channels", "out_channels", "hidden_size", "hidden_rate", "recurrence"):
            _check_int(self, name, getattr(self, name), 1)
        _check_int(self, "num_refinement_blocks", self.num_refinement_blocks, 0)
        if self.hidden_size % 2:
            raise ValueError(f"RestoreRwkvConfig: hidden_size must be even (the first downsampling halves the "
                             f"channels before a 2x2 pixel unshuffle), got {self.hidden_size}")
        blocks = self.num_blocks
        if not isinstance(blocks, (list, tuple)) or len(blocks) != 4:
            raise ValueError(f"RestoreRwkvConfig: num_blocks must list the blocks of the 4 levels, got {blocks!r}")
        for b in blocks:
            _check_int(self, "num_blocks", b, 0)
        self.num_blocks = list(blocks)
        if self.residual and self.out_channels != self.num_channels:
            raise ValueError(f"RestoreRwkvConfig: the global residual (residual=True) adds the input to the "
                             f"output, so out_channels ({self.out_channels}) must equal num_channels "
                             f"({self.num_channels}); pass residual=False otherwise")
        super().__post_init__(**kwargs)

    def level_width(self, level):
        """Channels of level ``level`` (1 to 4) of the encoder."""
        return self.hidden_size * 2 ** (level - 1)


def _check_int(config, name, value, least):
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{type(config).__name__}: {name} must be an integer >= {least}, got {value!r}")


# The published configuration (the paper's all-in-one CT / MRI / PET model, 27.9 M parameters).
RESTORE_RWKV_SIZES = {"base": dict(hidden_size=48, num_blocks=[4, 6, 6, 8], num_refinement_blocks=4)}
