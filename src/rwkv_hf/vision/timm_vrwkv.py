"""Vision-RWKV in timm: ``timm.create_model('vrwkv_tiny_patch16_224')`` after ``import rwkv_hf``.

``VisionRwkv`` is a timm-style model (``forward_features`` / ``forward_head``,
``forward_intermediates``, ``features_only=True`` with ``out_indices``, ``reset_classifier``)
around the transformers trunk of ``modeling_vrwkv``; its state dict has the key layout of the
official classification checkpoints (``backbone.*``, ``head.*``), so one set of weights serves
timm, transformers and the original code. ``pretrained=True`` fetches the official ``.pth``
files from the Hub repository ``OpenGVLab/Vision-RWKV`` and reads them with rwkv_hf's safe
loader (no pickled code runs); ``pretrained_cfg_overlay=dict(file=PATH, custom_load=True)``
loads a local official checkpoint the same way.

Intermediates follow timm's convention: raw block outputs, the final norm applied to all of
them with ``norm=True`` (transformers' ``VrwkvBackbone`` instead final-norms only the last
block's output, as the official dense-task backbone).
"""
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from .configuration_vrwkv import VRWKV6_SIZES, VRWKV_SIZES
from .modeling_vrwkv import VRWKV_CLASSES, build_head, resize_pos_embed, tokens_to_map


class VisionRwkv(nn.Module):
    """Vision-RWKV with timm's model interface.

    Args:
        version: 4 (VRWKV) or 6 (VRWKV6).
        img_size, in_chans, num_classes, global_pool ('avg' or ''), drop_rate (before the
            head), pos_drop_rate, drop_path_rate: timm's usual arguments.
        **config: any other field of ``VrwkvConfig`` / ``Vrwkv6Config`` (hidden_size,
            num_hidden_layers, post_norm, key_norm, layer_scale_init_value, ...).
    """

    def __init__(self, version=4, img_size=224, in_chans=3, num_classes=1000, global_pool="avg",
                 drop_rate=0.0, pos_drop_rate=0.0, drop_path_rate=0.0, **config):
        super().__init__()
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        config_cls, model_cls = VRWKV_CLASSES[version][:2]
        if isinstance(img_size, (tuple, list)):
            img_size = list(img_size)
        self.config = config_cls(image_size=img_size, num_channels=in_chans, drop_path_rate=drop_path_rate,
                                 hidden_dropout_prob=pos_drop_rate, num_labels=max(num_classes, 1), **config)
        self.backbone = model_cls(self.config)
        c = self.config.hidden_size
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = c
        self.head_drop = nn.Dropout(drop_rate)
        self.head = build_head(c, num_classes, self.config.classifier_hidden_size)
        self._init_head()
        self.feature_info = [dict(num_chs=c, reduction=self.config.patch_size, module=f"backbone.layers.{i}")
                             for i in range(self.config.num_hidden_layers)]

    def _init_head(self):
        for module in self.head.modules():
            self.backbone._init_weights(module)

    # timm interface -------------------------------------------------------------------

    def get_classifier(self):
        return self.head

    def reset_classifier(self, num_classes, global_pool=None):
        if global_pool is not None:
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = build_head(self.embed_dim, num_classes, self.config.classifier_hidden_size)
        self._init_head()

    def set_grad_checkpointing(self, enable=True):
        if enable:
            self.backbone.activation_checkpointing_enable()
        else:
            self.backbone.activation_checkpointing_disable()

    def forward_features(self, x):
        """Final-normed tokens [B, N, C]."""
        tokens, grid = self.backbone.embed(x)
        return self.backbone.final_norm(self.backbone.run_layers(tokens, grid)[0])

    def forward_head(self, x, pre_logits=False):
        if self.global_pool == "avg":
            x = x.mean(1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x, indices=None, norm=False, stop_early=False, output_fmt="NCHW",
                              intermediates_only=False):
        """Block outputs at ``indices`` (timm's convention: an int n = the last n blocks), as
        NCHW maps or NLC tokens; with ``intermediates_only=False`` also the final features."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.backbone.layers), indices)
        tokens, grid = self.backbone.embed(x)
        stop = max_index + 1 if stop_early or intermediates_only else None
        last, taken = self.backbone.run_layers(tokens, grid, set(take), stop)
        if norm:
            taken = [self.backbone.final_norm(t) for t in taken]
        if output_fmt == "NCHW":
            taken = [tokens_to_map(t, grid) for t in taken]
        if intermediates_only:
            return taken
        return self.backbone.final_norm(last), taken

    def prune_intermediate_layers(self, indices=1, prune_norm=False, prune_head=True):
        take, max_index = feature_take_indices(len(self.backbone.layers), indices)
        self.backbone.layers = self.backbone.layers[:max_index + 1]
        if prune_norm:
            self.backbone.ln1 = None
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def load_pretrained(self, path):
        """Load an official Vision-RWKV checkpoint (mmcls / InternImage ``.pth``, read without
        running pickled code) or an rwkv_hf / timm state dict; position embeddings are resized
        to this model's grid and a head of another class count is left out."""
        from ..conversion.vision import load_official

        state_dict = load_official(path)[0]
        own = self.state_dict()
        pos = state_dict.get("backbone.pos_embed")
        if pos is not None and pos.shape != own["backbone.pos_embed"].shape:
            src = _square_grid(pos.shape[1])
            state_dict["backbone.pos_embed"] = resize_pos_embed(pos, src, self.config.patch_grid)
        own_head = {k: v for k, v in own.items() if k.startswith("head.")}
        theirs = {k: v for k, v in state_dict.items() if k.startswith("head.")}
        if set(theirs) != set(own_head) or any(own_head[k].shape != v.shape for k, v in theirs.items()):
            for k in theirs:  # another class count, or a backbone-only file: keep this model's (fresh) head
                del state_dict[k]
            state_dict.update(own_head)
        self.load_state_dict(state_dict, strict=True)


def _square_grid(n):
    side = round(n ** 0.5)
    if side * side != n:
        raise ValueError(f"cannot resize a non-square position embedding of {n} patches")
    return side, side


def _cfg(file, size=224, **kwargs):
    return {
        "hf_hub_id": "OpenGVLab/Vision-RWKV", "hf_hub_filename": file, "custom_load": "hf",
        "num_classes": 1000, "input_size": (3, size, size), "pool_size": None,
        "crop_pct": 0.875 if size == 224 else 1.0, "interpolation": "bicubic", "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "backbone.patch_embed.projection", "classifier": "head.fc",
        "license": "apache-2.0", "paper_ids": "arXiv:2403.02308", "paper_name": "Vision-RWKV", **kwargs}


default_cfgs = generate_default_cfgs({
    "vrwkv_tiny_patch16_224.in1k": _cfg("vrwkv_t_in1k_224.pth"),
    "vrwkv_small_patch16_224.in1k": _cfg("vrwkv_s_in1k_224.pth"),
    "vrwkv_base_patch16_224.in1k": _cfg("vrwkv_b_in1k_224.pth"),
    "vrwkv_large_patch16_384.in22k_ft_in1k": _cfg("vrwkv_l_22kto1k_384.pth", size=384, classifier="head.2"),
    "vrwkv6_tiny_patch16_224.in1k": _cfg("vrwkv6_t_in1k_224.pth"),
    "vrwkv6_small_patch16_224.in1k": _cfg("vrwkv6_s_in1k_224.pth"),
    "vrwkv6_base_patch16_224.in1k": _cfg("vrwkv6_b_in1k_224.pth"),
})


def _create(variant, version, size, pretrained, **kwargs):
    args = dict((VRWKV6_SIZES if version == 6 else VRWKV_SIZES)[size])
    args.setdefault("img_size", args.pop("image_size", 224))
    args.update(kwargs)
    depth = args.get("num_hidden_layers", 12)
    out_indices = (depth // 4 - 1, depth // 2 - 1, 3 * depth // 4 - 1, depth - 1)
    return build_model_with_cfg(VisionRwkv, variant, pretrained, version=version,
                                feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **args)


@register_model
def vrwkv_tiny_patch16_224(pretrained=False, **kwargs):
    """VRWKV-T (6.2M parameters, ImageNet-1k top-1 75.1)."""
    return _create("vrwkv_tiny_patch16_224", 4, "tiny", pretrained, **kwargs)


@register_model
def vrwkv_small_patch16_224(pretrained=False, **kwargs):
    """VRWKV-S (23.8M, 80.1): post-norm, layer scale."""
    return _create("vrwkv_small_patch16_224", 4, "small", pretrained, **kwargs)


@register_model
def vrwkv_base_patch16_224(pretrained=False, **kwargs):
    """VRWKV-B (93.7M, 82.0): post-norm, layer scale."""
    return _create("vrwkv_base_patch16_224", 4, "base", pretrained, **kwargs)


@register_model
def vrwkv_large_patch16_384(pretrained=False, **kwargs):
    """VRWKV-L (334.9M, 86.0 at 384 after ImageNet-22k): 24 blocks, post-norm, layer scale,
    key norm, MLP head."""
    return _create("vrwkv_large_patch16_384", 4, "large", pretrained, **kwargs)


@register_model
def vrwkv6_tiny_patch16_224(pretrained=False, **kwargs):
    """VRWKV6-T (7.6M, 76.6): 3 heads of 64."""
    return _create("vrwkv6_tiny_patch16_224", 6, "tiny", pretrained, **kwargs)


@register_model
def vrwkv6_small_patch16_224(pretrained=False, **kwargs):
    """VRWKV6-S (27.7M, 81.1): 6 heads, post-norm, layer scale."""
    return _create("vrwkv6_small_patch16_224", 6, "small", pretrained, **kwargs)


@register_model
def vrwkv6_base_patch16_224(pretrained=False, **kwargs):
    """VRWKV6-B (104.9M, 82.6): 12 heads, post-norm, layer scale."""
    return _create("vrwkv6_base_patch16_224", 6, "base", pretrained, **kwargs)


TIMM_MODEL_NAMES = [name.split(".")[0] for name in default_cfgs]
