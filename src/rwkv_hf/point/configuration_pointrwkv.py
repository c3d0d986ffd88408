"""Configuration of PointRWKV (model type ``rwkv_hf_pointrwkv``): the point-cloud backbone and
classifier of hithqd/PointRWKV (``models/point_rwkv.py``, ``models/point_rwkv_cls.py``; arXiv
2405.15214), as released in March 2026.

The fields are the official ``model`` section of ``cfgs/*.yaml``, with transformers' names
where one exists: ``embed_dim`` is ``hidden_size``, ``depth`` ``depths``, ``num_points`` (the
number of patch centres per scale) ``num_groups``, ``graph_iter`` ``graph_iterations``,
``num_classes`` ``num_labels`` (the segmentation model's ``num_part_classes``).
"""
from transformers import PreTrainedConfig


class PointRwkvConfig(PreTrainedConfig):
    """PointRWKV: at each scale, farthest point sampling picks ``num_groups[i]`` centres of the
    raw cloud, each centre's ``group_sizes[i]`` nearest points form a patch that a mini-PointNet
    embeds, and ``depths[i]`` PRWKV blocks mix the patch tokens (in sampling order): a
    bidirectional WKV (:func:`rwkv_hf.ops.point_wkv`) next to a graph branch over each token's
    ``k_neighbors[i]`` nearest centres, then an RWKV channel mix. The classifier max-pools the
    first and the last scale; the part segmentation model propagates the scales' features back
    to the points.

    Args:
        hidden_size: token width (the official ``embed_dim``); a multiple of ``num_heads``.
        depths: PRWKV blocks per scale.
        num_heads: WKV heads (head size ``hidden_size // num_heads``; GroupNorm groups).
        num_groups: patch centres per scale (the official ``num_points``); a cloud needs at
            least ``max(num_groups)`` points.
        group_sizes: points per patch, per scale.
        k_neighbors: neighbours of each centre in the graph branch, per scale.
        graph_iterations: rounds of the graph stabiliser.
        mlp_ratio: channel-mix hidden width over ``hidden_size``.
        drop_path_rate: stochastic depth, rising linearly over all blocks to this.
        classifier_dropout: dropout in the classification and the segmentation head.
        label_smoothing: of the classification loss (the official training's 0.2; the
            segmentation loss has none, as released).
        num_shape_classes: object categories the segmentation model is told (ShapeNetPart's 16).
        layer_norm_eps: epsilon of the LayerNorms.
    """

    model_type = "rwkv_hf_pointrwkv"

    hidden_size: int = 384
    depths: list[int] | tuple[int, ...] = (4, 4, 4)
    num_heads: int = 8
    num_groups: list[int] | tuple[int, ...] = (2048, 1024, 512)
    group_sizes: list[int] | tuple[int, ...] = (32, 32, 32)
    k_neighbors: list[int] | tuple[int, ...] = (16, 8, 8)
    graph_iterations: int = 3
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    classifier_dropout: float = 0.5
    label_smoothing: float = 0.2
    layer_norm_eps: float = 1e-5
    num_shape_classes: int = 16

    def __post_init__(self, **kwargs):
        for name in ("hidden_size", "num_heads", "graph_iterations", "num_shape_classes"):
            _check_int(self, name, getattr(self, name), 1)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"PointRwkvConfig: hidden_size ({self.hidden_size}) must be a multiple of num_heads "
                             f"({self.num_heads})")
        if self.hidden_size < 4:
            raise ValueError(f"PointRwkvConfig: hidden_size must be at least 4 (the token shift splits the "
                             f"channels in 4 groups), got {self.hidden_size}")
        lists = ("depths", "num_groups", "group_sizes", "k_neighbors")
        for name in lists:
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"PointRwkvConfig: {name} must be a non-empty list (one entry per scale), "
                                 f"got {value!r}")
            for v in value:
                _check_int(self, name, v, 0 if name == "depths" else 1)
            setattr(self, name, list(value))
        if len({len(getattr(self, name)) for name in lists}) != 1:
            raise ValueError("PointRwkvConfig: depths, num_groups, group_sizes and k_neighbors need one entry "
                             "per scale, got " + ", ".join(f"{n}={getattr(self, n)}" for n in lists))
        for g, k in zip(self.num_groups, self.k_neighbors):
            if k > g:
                raise ValueError(f"PointRwkvConfig: k_neighbors ({self.k_neighbors}) cannot exceed the centres "
                                 f"of their scale ({self.num_groups})")
        super().__post_init__(**kwargs)

    @property
    def num_scales(self):
        return len(self.num_groups)


def _check_int(config, name, value, least):
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{type(config).__name__}: {name} must be an integer >= {least}, got {value!r}")


# The released configuration (every cfgs/*.yaml): ModelNet40 (40 classes), ScanObjectNN (15).
POINTRWKV_SIZES = {"base": dict(hidden_size=384, depths=[4, 4, 4], num_heads=8, num_groups=[2048, 1024, 512],
                                group_sizes=[32, 32, 32], k_neighbors=[16, 8, 8], graph_iterations=3)}
