"""PointRWKV as transformers models: the hierarchical point-cloud backbone, the classifier and the
part segmentation model of hithqd/PointRWKV (``models/point_rwkv.py``, ``models/point_rwkv_cls.py``,
``models/point_rwkv_seg.py``, ``models/pointnet2_utils.py``; arXiv 2405.15214), as released in
March 2026 (pure PyTorch there).

The module and parameter names are the official ones (``embed_modules``, ``pos_embed``,
``blocks.{scale}.{block}.spatial_mixing.proj_r``, ``lgm.graph_stabilizer.edge_mlps``, ``norms``,
``head``, ``propagation_layers.{i}.mlp_convs``, ``seg_head``), so
:class:`PointRwkvForPointCloudClassification`'s state dict is the official ``PointRWKVCls`` one
(``backbone.*``, ``head.*``) and :class:`PointRwkvForPointCloudSegmentation`'s the official
``PointRWKVPartSeg`` one (``backbone.*``, ``cls_embed.*``, ``propagation_layers.*``,
``seg_head.*``).

Per scale ``i``: farthest point sampling (:func:`rwkv_hf.ops.farthest_point_sample`) picks ``num_groups[i]``
centres of the raw cloud, each centre's ``group_sizes[i]`` nearest points (centred on it) form
a patch, a mini-PointNet embeds each patch and an MLP of the centre's coordinates is added.
The tokens, in sampling order, pass ``depths[i]`` PRWKV blocks and a LayerNorm:

* ``x + fusion([IFM(ln1 x), LGM(centres, ln1 x)])``, then ``x + ChannelMix(ln2 x)``;
* IFM, the spatial mix: ``r, k, v = W BQE(x)`` (BQE: ``x + (1 - sigmoid(mu)) x*``, ``x*`` the
  channels in four groups rolled by 0, +1, -1 and +2 tokens, circularly), ``g = sigmoid(W_g x)``,
  the log-decay ``-exp(lambda + tanh(W_w BQE(x) * A) * B)``; the WKV is
  :func:`rwkv_hf.ops.point_wkv` (the mean of a left-to-right and a right-to-left scan, each
  ``sigmoid(r) * (S k + u * k * sum(v))``); then a GroupNorm over each head's channels *and all
  tokens*, ``* g`` and ``W_o``;
* LGM: over each token's ``k_neighbors[i]`` nearest centres, ``graph_iterations`` rounds of
  ``v_i += MLP([max_j MLP([x_j - (x_i + MLP(v_i)), v_j]), v_i])``, then Linear-GELU-Linear;
* ChannelMix: ``sigmoid(W_r BQE(x)) * W_v silu(W_k BQE(x))`` (SiLU, as released).

The classifier max-pools the first and the last scale's tokens and applies
Linear-BN-ReLU-Dropout twice and a Linear. The part segmentation model propagates the features
from the coarsest scale back to the points (:class:`FeaturePropagation`), adds the object
category's embedding and classifies every point.

One difference from the release, by design: sampling starts from each cloud's first point
(the official code draws the first point at random on every call, training and evaluation
alike), so outputs are deterministic; since sampling is greedy from that start, the smaller
scales' centres are the first ones of the largest scale's, which is sampled once. (The release
also caps the running distance at 1e10, which changes its choices only for coordinates around
1e5 and beyond.)
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from .. import ops
from ..hub_mixin import RwkvHubMixin
from ..modeling_utils import DropPath
from .configuration_pointrwkv import PointRwkvConfig


# ---------------------------------------------------------------------------- geometry

def square_distance(a, b):
    """Squared distances [B, M, N] between a [B, M, 3] and b [B, N, 3]."""
    return (a.pow(2).sum(-1)[:, :, None] + b.pow(2).sum(-1)[:, None, :]
            - 2 * a @ b.transpose(1, 2))


def knn(k, queries, points):
    """Indices [B, M, k] of each query's k nearest points (itself included when it is one)."""
    return square_distance(queries, points).topk(k, dim=-1, largest=False).indices


def gather(x, idx):
    """x [B, N, C] at idx [B, ...] -> [B, ..., C]."""
    B = x.shape[0]
    return x[torch.arange(B, device=x.device).view(B, *[1] * (idx.dim() - 1)), idx]


# ---------------------------------------------------------------------------- layers

class PatchEncoder(nn.Module):
    """The mini-PointNet of each patch (official ``Encoder``): point-wise 3 -> 128 -> 256, the
    patch's max concatenated to each point, 512 -> 512 -> hidden_size, max over the patch."""

    def __init__(self, hidden_size):
        super().__init__()
        self.first_conv = nn.Sequential(nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True),
                                        nn.Conv1d(128, 256, 1))
        self.second_conv = nn.Sequential(nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                         nn.Conv1d(512, hidden_size, 1))

    def forward(self, patches):  # [B, G, K, 3] -> [B, G, C]
        B, G, K, _ = patches.shape
        # Point-wise, so the 1x1 convolutions run as linears on rows of points (channels last:
        # 1.5x faster than conv1d on the CPU) and the BatchNorms on [points, channels] (the same
        # statistics as over (patches, points)).
        x = _pointwise(self.first_conv, patches.reshape(B * G * K, 3)).reshape(B * G, K, -1)
        # second_conv's first layer on [max over the patch, x] (concatenated on channels) is
        # W_max max + W_x x + b: the max's part once per patch, not once per point (half the
        # layer's work, and no [B G, K, 512] concatenation)
        conv, c = self.second_conv[0], x.shape[-1]
        per_patch = F.linear(x.amax(1), conv.weight[:, :c, 0], conv.bias)
        x = (F.linear(x, conv.weight[:, c:, 0]) + per_patch[:, None]).reshape(B * G * K, -1)
        x = _pointwise(self.second_conv[1:], x).reshape(B * G, K, -1)
        return x.amax(1).reshape(B, G, -1)


def _pointwise(layers, x):
    """``layers`` (1x1 Conv1d, BatchNorm1d, ReLU, Dropout) on x [points, channels]."""
    for layer in layers:
        x = F.linear(x, layer.weight[:, :, 0], layer.bias) if isinstance(layer, nn.Conv1d) else layer(x)
    return x


class BQE(nn.Module):
    """Bidirectional quadratic expansion: ``x + (1 - sigmoid(mu)) x*``, ``x*`` the channels in
    four groups (the last takes the remainder) rolled along the tokens by 0, +1, -1 and +2,
    circularly."""

    def __init__(self, dim):
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(dim))

    def forward(self, x):  # [B, T, C]
        q = x.shape[-1] // 4
        shifted = torch.cat([x[..., :q], x[..., q:2 * q].roll(1, 1), x[..., 2 * q:3 * q].roll(-1, 1),
                             x[..., 3 * q:].roll(2, 1)], -1)
        return x + (1 - torch.sigmoid(self.mu)) * shifted


class PointRwkvSpatialMix(nn.Module):
    """The IFM branch (official ``WKVAttention``)."""

    def __init__(self, config):
        super().__init__()
        C, H = config.hidden_size, config.num_heads
        self.num_heads = H
        self.bqe_r, self.bqe_k, self.bqe_v, self.bqe_w = (BQE(C) for _ in range(4))
        self.proj_r, self.proj_k, self.proj_v, self.proj_g = (nn.Linear(C, C, bias=False) for _ in range(4))
        self.decay_A = nn.Parameter(torch.zeros(C))
        self.decay_B = nn.Parameter(torch.zeros(C))
        self.decay_base = nn.Parameter(torch.zeros(C))
        self.w_proj = nn.Linear(C, C, bias=False)
        self.u = nn.Parameter(torch.zeros(H, C // H))
        self.group_norm = nn.GroupNorm(H, C)
        self.out_proj = nn.Linear(C, C, bias=False)

    def forward(self, x):  # [B, T, C]
        B, T, C = x.shape
        heads = (B, T, self.num_heads, C // self.num_heads)
        r = self.proj_r(self.bqe_r(x))
        k = self.proj_k(self.bqe_k(x))
        v = self.proj_v(self.bqe_v(x))
        g = torch.sigmoid(self.proj_g(x))
        nu = self.decay_base + torch.tanh(self.w_proj(self.bqe_w(x)) * self.decay_A) * self.decay_B
        # The release averages two one-way scans that each count the token: r / 2 and 2 u here.
        y, _ = ops.point_wkv((torch.sigmoid(r) / 2).reshape(heads), k.reshape(heads), v.reshape(heads),
                             -torch.exp(nu).reshape(heads), 2 * self.u)
        # GroupNorm(num_heads) of [B, C, T]: each head's channels over all tokens (written out on
        # [B, T, H, N]: no transposes, which torch.compile's backward mishandled)
        mean = y.mean(dim=(1, 3), keepdim=True)
        var = (y - mean).pow(2).mean(dim=(1, 3), keepdim=True)
        y = ((y - mean) * torch.rsqrt(var + self.group_norm.eps)).reshape(B, T, C)
        y = y * self.group_norm.weight + self.group_norm.bias
        return self.out_proj(y * g)


class PointRwkvChannelMix(nn.Module):
    """Official ``ChannelMixing``: ``sigmoid(W_r BQE(x)) * W_v silu(W_k BQE(x))``."""

    def __init__(self, config):
        super().__init__()
        C, F_ = config.hidden_size, int(config.hidden_size * config.mlp_ratio)
        self.bqe_k, self.bqe_r = BQE(C), BQE(C)
        self.key_proj = nn.Linear(C, F_, bias=False)
        self.receptance_proj = nn.Linear(C, C, bias=False)
        self.value_proj = nn.Linear(F_, C, bias=False)

    def forward(self, x):
        v = self.value_proj(F.silu(self.key_proj(self.bqe_k(x))))
        return torch.sigmoid(self.receptance_proj(self.bqe_r(x))) * v


def _mlp(c_in, c_hidden, c_out, act=nn.ReLU):
    return nn.Sequential(nn.Linear(c_in, c_hidden), act(), nn.Linear(c_hidden, c_out))


class GraphStabilizer(nn.Module):
    """Rounds of ``v_i += update([max_j edge([x_j - (x_i + offset(v_i)), v_j]), v_i])`` over
    the k-nearest-neighbour graph of the centres."""

    def __init__(self, config):
        super().__init__()
        C = config.hidden_size
        self.offset_pred = _mlp(C, C, 3)
        self.edge_mlps = nn.ModuleList(_mlp(3 + C, C, C) for _ in range(config.graph_iterations))
        self.update_mlps = nn.ModuleList(_mlp(2 * C, C, C) for _ in range(config.graph_iterations))

    def forward(self, centers, x, neighbours):
        for edge, update in zip(self.edge_mlps, self.update_mlps):
            moved = centers + self.offset_pred(x)                      # the stabilised centre
            # edge's first Linear on [x_j - moved_i, v_j] is W_p x_j + W_v v_j - W_p moved_i + b:
            # the parts of j computed once per token and gathered, not once per edge
            first, second = edge[0], edge[2]
            w_pos, w_feat = first.weight[:, :3], first.weight[:, 3:]
            per_token = F.linear(centers, w_pos) + F.linear(x, w_feat)
            h = gather(per_token, neighbours)                          # [B, T, K, C], a new tensor
            h = torch.relu_(h.sub_(F.linear(moved, w_pos, -first.bias)[:, :, None]))  # in place
            # second's bias is the same for every neighbour: added after the max over them
            e = F.linear(h, second.weight).amax(2) + second.bias
            x = x + update(torch.cat([e, x], -1))
        return x


class PointRwkvGraphBranch(nn.Module):
    """The LGM branch: the graph stabiliser, then Linear-GELU-Linear."""

    def __init__(self, config, k):
        super().__init__()
        self.k = k
        self.graph_stabilizer = GraphStabilizer(config)
        self.proj = _mlp(config.hidden_size, config.hidden_size, config.hidden_size, act=nn.GELU)

    def forward(self, centers, x):
        return self.proj(self.graph_stabilizer(centers, x, knn(self.k, centers, centers)))


class FeaturePropagation(nn.Module):
    """PointNet++'s feature propagation (official ``PointNetFeaturePropagation``): each target
    point's features interpolated from its 3 nearest source points (weights ``1 / (d + 1e-8)``,
    ``d`` the squared distance as :func:`square_distance` computes it, normalised to sum 1),
    after the target's own (skip) features, then 1x1 Conv-BN-ReLU layers."""

    def __init__(self, c_in, widths):
        super().__init__()
        self.mlp_convs = nn.ModuleList(nn.Conv1d(a, b, 1) for a, b in zip([c_in] + widths[:-1], widths))
        self.mlp_bns = nn.ModuleList(nn.BatchNorm1d(b) for b in widths)

    def forward(self, targets, sources, skip, features):
        # targets [B, N, 3], sources [B, S, 3], skip [B, N, D1], features [B, S, D2] -> [B, N, C]
        B, N, _ = targets.shape
        d, idx = square_distance(targets, sources).topk(min(3, sources.shape[1]), dim=-1, largest=False)
        weight = 1.0 / (d + 1e-8)
        weight = weight / weight.sum(-1, keepdim=True)
        x = torch.einsum("bnkc,bnk->bnc", gather(features, idx), weight)
        x = torch.cat([skip, x], -1).reshape(B * N, -1)  # as rows: the BatchNorms' statistics are the same
        for conv, bn in zip(self.mlp_convs, self.mlp_bns):
            x = torch.relu(bn(F.linear(x, conv.weight[:, :, 0], conv.bias)))
        return x.reshape(B, N, -1)


class PointRwkvBlock(GradientCheckpointingLayer):
    """A PRWKV block: ``x + fusion([IFM(ln1 x), LGM(ln1 x)])``, ``x + ChannelMix(ln2 x)``."""

    def __init__(self, config, k, drop_path):
        super().__init__()
        C = config.hidden_size
        self.norm1 = nn.LayerNorm(C, eps=config.layer_norm_eps)
        self.norm2 = nn.LayerNorm(C, eps=config.layer_norm_eps)
        self.spatial_mixing = PointRwkvSpatialMix(config)
        self.lgm = PointRwkvGraphBranch(config, k)
        self.fusion = nn.Linear(2 * C, C, bias=False)
        self.channel_mixing = PointRwkvChannelMix(config)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x, centers):
        h = self.norm1(x)
        x = x + self.drop_path(self.fusion(torch.cat([self.spatial_mixing(h), self.lgm(centers, h)], -1)))
        return x + self.drop_path(self.channel_mixing(self.norm2(x)))


# ---------------------------------------------------------------------------- models

@dataclass
class PointRwkvModelOutput(ModelOutput):
    """``last_hidden_state``: the last scale's tokens [B, num_groups[-1], C]; ``scale_features``
    and ``centers``: per scale, the normed tokens [B, G_i, C] and their centres [B, G_i, 3]."""

    last_hidden_state: torch.FloatTensor | None = None
    scale_features: tuple[torch.FloatTensor, ...] | None = None
    centers: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class PointRwkvClassifierOutput(ModelOutput):
    """``logits`` [B, num_labels]; ``loss`` with ``labels`` (cross-entropy with the config's
    label smoothing); the backbone's per-scale ``scale_features`` and ``centers``."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    scale_features: tuple[torch.FloatTensor, ...] | None = None
    centers: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class PointRwkvSegmentationOutput(PointRwkvClassifierOutput):
    """The classifier's fields, ``logits`` [B, N, num_labels] per point; ``loss`` with
    ``labels`` (cross-entropy over the points, no label smoothing)."""


class PointRwkvPreTrainedModel(RwkvHubMixin, PreTrainedModel):
    """Weight init (the official code's: every backbone Linear truncated normal 0.02 with zero
    bias, the decay parameters and the bonus N(0, 0.01^2), the token-shift mixes zero; PyTorch's
    defaults for the convolutions and the head) and transformers settings."""

    config_class = PointRwkvConfig
    config: PointRwkvConfig
    base_model_prefix = "backbone"
    main_input_name = "points"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PointRwkvBlock"]
    _keep_in_fp32_modules_strict = ["decay_base", "decay_A", "decay_B"]

    hub_family = "point"

    def hub_auto_classes(self):
        return {"AutoModel": PointRwkvModel}

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            if getattr(module, "torch_default_init", False):
                init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                bound = 1 / math.sqrt(module.in_features)
                init.uniform_(module.bias, -bound, bound)
            else:
                init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    init.zeros_(module.bias)
        elif isinstance(module, nn.Conv1d):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(module.weight[0].numel())
            init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm1d):
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, PointRwkvSpatialMix):
            for p in (module.decay_A, module.decay_B, module.decay_base, module.u):
                init.normal_(p, std=0.01)
        elif isinstance(module, BQE):
            init.zeros_(module.mu)


def check_points(points, num_groups):
    if not isinstance(points, torch.Tensor) or not points.is_floating_point():
        raise ValueError(f"points must be a floating-point tensor [B, N, 3], got "
                         f"{type(points).__name__ if not isinstance(points, torch.Tensor) else points.dtype}")
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must have shape [B, N, 3] (xyz per point), got {list(points.shape)}")
    if points.shape[1] < max(num_groups):
        raise ValueError(f"a cloud needs at least {max(num_groups)} points (the most patch centres of a "
                         f"scale, config.num_groups={num_groups}), got {points.shape[1]}")
    # NaN and inf: ops.farthest_point_sample checks them (for CPU tensors), first thing the model runs


class PointRwkvModel(PointRwkvPreTrainedModel):
    """The PointRWKV backbone: per scale, sampling and grouping, patch embedding, position
    embedding, PRWKV blocks and a LayerNorm. ``points`` [B, N, 3] -> :class:`PointRwkvModelOutput`."""

    def __init__(self, config):
        super().__init__(config)
        C, S = config.hidden_size, config.num_scales
        self.embed_modules = nn.ModuleList(PatchEncoder(C) for _ in range(S))
        self.pos_embed = nn.ModuleList(_mlp(3, 128, C, act=nn.GELU) for _ in range(S))
        n = sum(config.depths)
        rates = iter([config.drop_path_rate * i / max(n - 1, 1) for i in range(n)])
        self.blocks = nn.ModuleList(
            nn.ModuleList(PointRwkvBlock(config, k, next(rates)) for _ in range(depth))
            for depth, k in zip(config.depths, config.k_neighbors))
        self.norms = nn.ModuleList(nn.LayerNorm(C, eps=config.layer_norm_eps) for _ in range(S))
        self.gradient_checkpointing = False
        self.post_init()

    def forward(self, points=None, **kwargs):
        config = self.config
        check_points(points, config.num_groups)
        points = points.to(self.norms[0].weight.dtype)
        order = ops.farthest_point_sample(points, max(config.num_groups))
        features, centers = [], []
        for i, (n, size) in enumerate(zip(config.num_groups, config.group_sizes)):
            center = gather(points, order[:, :n])                               # [B, G, 3]
            patches = gather(points, knn(size, center, points)) - center[:, :, None]
            x = self.embed_modules[i](patches) + self.pos_embed[i](center)
            for block in self.blocks[i]:
                x = block(x, center)
            features.append(self.norms[i](x))
            centers.append(center)
        return PointRwkvModelOutput(last_hidden_state=features[-1], scale_features=tuple(features),
                                    centers=tuple(centers))


class PointRwkvForPointCloudClassification(PointRwkvPreTrainedModel):
    """PointRWKV classification (official ``PointRWKVCls``): the backbone, the max over the
    first and the last scale's tokens concatenated, Linear(2C, 512)-BN-ReLU-Dropout,
    Linear(512, 256)-BN-ReLU-Dropout, Linear(256, num_labels). ``labels`` [B] give the
    cross-entropy with ``config.label_smoothing``."""

    def __init__(self, config):
        super().__init__(config)
        self.backbone = PointRwkvModel(config)
        C, p = config.hidden_size, config.classifier_dropout
        self.head = nn.Sequential(
            nn.Linear(2 * C, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Dropout(p),
            nn.Linear(512, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(p),
            nn.Linear(256, config.num_labels))
        for m in self.head:  # created after the backbone's init in the official code: PyTorch's
            if isinstance(m, nn.Linear):
                m.torch_default_init = True
        self.post_init()

    def forward(self, points=None, labels=None, **kwargs):
        out = self.backbone(points)
        pooled = torch.cat([out.scale_features[0].amax(1), out.scale_features[-1].amax(1)], -1)
        logits = self.head(pooled)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits, labels.to(logits.device), label_smoothing=self.config.label_smoothing)
        return PointRwkvClassifierOutput(loss=loss, logits=logits, scale_features=out.scale_features,
                                         centers=out.centers)


class PointRwkvForPointCloudSegmentation(PointRwkvPreTrainedModel):
    """PointRWKV part segmentation (official ``PointRWKVPartSeg``, ShapeNetPart): the backbone;
    feature propagation from the coarsest scale to each finer one (the finer scale's tokens as
    skip features) and from the first scale to the input points (their coordinates as skip
    features); the cloud's object category through Linear(num_shape_classes, 64)-ReLU-Linear(64,
    C) next to every point's features; then 1x1 Conv(2C, 512)-BN-ReLU-Dropout, Conv(512,
    256)-BN-ReLU, Conv(256, num_labels) per point.

    ``points`` [B, N, 3]; ``categories``: each cloud's object category, indices [B] or one-hot
    (any weights) [B, num_shape_classes]; ``labels`` [B, N] part indices give the official
    loss, a cross-entropy over all points without label smoothing."""

    def __init__(self, config):
        super().__init__(config)
        C, S = config.hidden_size, config.num_scales
        self.backbone = PointRwkvModel(config)
        self.cls_embed = nn.Sequential(nn.Linear(config.num_shape_classes, 64), nn.ReLU(inplace=True),
                                       nn.Linear(64, C))
        self.propagation_layers = nn.ModuleList([FeaturePropagation(2 * C, [C, C]) for _ in range(S - 1)]
                                                + [FeaturePropagation(C + 3, [C, C])])
        self.seg_head = nn.Sequential(
            nn.Conv1d(2 * C, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Dropout(config.classifier_dropout),
            nn.Conv1d(512, 256, 1), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Conv1d(256, config.num_labels, 1))
        for m in self.cls_embed:  # created after the backbone's init in the official code: PyTorch's
            if isinstance(m, nn.Linear):
                m.torch_default_init = True
        self.post_init()

    def _category(self, categories, B, dtype, device):
        S = self.config.num_shape_classes
        if not isinstance(categories, torch.Tensor):
            raise ValueError("categories (each cloud's object category: indices [B] or one-hot [B, "
                             f"{S}]) are required, got {type(categories).__name__}")
        if categories.shape == (B,) and not categories.is_floating_point():
            return F.one_hot(categories.to(device), S).to(dtype)  # raises for an index outside [0, S)
        if categories.shape != (B, S):
            raise ValueError(f"categories must be indices [B={B}] or one-hot [B={B}, num_shape_classes={S}], "
                             f"got {list(categories.shape)}")
        return categories.to(device, dtype)

    def forward(self, points=None, categories=None, labels=None, **kwargs):
        check_points(points, self.config.num_groups)  # and the categories, before the backbone's work
        dtype = self.backbone.norms[0].weight.dtype
        B, N, _ = points.shape
        category = self._category(categories, B, dtype, points.device)
        out = self.backbone(points)
        feats, centers = out.scale_features, out.centers
        points = points.to(dtype)
        x = feats[-1]
        for j, layer in enumerate(self.propagation_layers[:-1]):  # coarse to fine
            s = len(feats) - 2 - j
            x = layer(centers[s], centers[s + 1], feats[s], x)
        x = self.propagation_layers[-1](points, centers[0], points, x)           # [B, N, C]
        # seg_head's first conv on [features, category embedding] is W_f x + W_e e + b: the
        # embedding's part once per cloud, not once per point
        conv, C = self.seg_head[0], x.shape[-1]
        per_cloud = F.linear(self.cls_embed(category), conv.weight[:, C:, 0], conv.bias)
        h = (F.linear(x, conv.weight[:, :C, 0]) + per_cloud[:, None]).reshape(B * N, -1)
        logits = _pointwise(self.seg_head[1:], h).reshape(B, N, -1)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(B * N, -1), labels.to(logits.device).reshape(-1))
        return PointRwkvSegmentationOutput(loss=loss, logits=logits, scale_features=feats, centers=centers)


POINTRWKV_CLASSES = (PointRwkvConfig, PointRwkvModel, PointRwkvForPointCloudClassification,
                     PointRwkvForPointCloudSegmentation)
