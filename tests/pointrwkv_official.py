"""An independent, plain-PyTorch re-implementation of the official PointRWKV classifier and part
segmentation forwards (hithqd/PointRWKV ``models/point_rwkv.py``, ``models/point_rwkv_cls.py``,
``models/point_rwkv_seg.py``, ``models/pointnet2_utils.py`` and ``utils/misc.py``, as released
in March 2026), written out
from the released code's math for the tests: nothing here comes from rwkv_hf, and no module of
the official code is copied; every layer is a functional op on a tensor of the state dict.

``official_logits(state_dict, config, points)`` takes the official key layout
(``backbone.embed_modules.{i}.first_conv.0.weight`` ... ``head.8.bias``, which is also the
layout of ``rwkv_hf.PointRwkvForPointCloudClassification(config).state_dict()``), an
``rwkv_hf.PointRwkvConfig`` and a cloud [B, N, 3], and computes in evaluation mode (BatchNorm
with its running statistics, no dropout, no drop path), in the dtype of ``points``.

What is computed, per scale ``s`` (every scale samples the *raw* cloud again):

* centres: farthest point sampling of ``num_groups[s]`` points; patches: the
  ``group_sizes[s]`` nearest points of each centre (squared distances as
  ``-2 a.b + |a|^2 + |b|^2``), minus the centre;
* tokens: the mini-PointNet (1x1 conv 3->128, BN, ReLU, 1x1 conv ->256; the patch max
  concatenated before each point; 1x1 conv 512->512, BN, ReLU, 1x1 conv ->C; max over the
  patch) plus Linear(3,128)-GELU-Linear(128,C) of the centre;
* ``depths[s]`` PRWKV blocks, each ``x += fusion([IFM(LN1 x), LGM(LN1 x)])`` then
  ``x += CM(LN2 x)``:

  - BQE(x) = x + (1 - sigmoid(mu)) * x*, x* the channel quarters (the last takes the
    remainder) with token c taken from tokens c, c-1, c+1, c-2 (circularly);
  - IFM: r, k, v = W BQE(x), g = sigmoid(W_g x), decay w = exp(-exp(base + tanh(W_w BQE_w(x)
    * A) * B)); per head, a left-to-right and a right-to-left token loop with a state
    S[i, j] (i: key channel, j: value channel), out_t[i] = sigmoid(r_t[i]) * (sum_j S[i, j]
    k_t[j] + u[i] k_t[i] sum_j v_t[j]), then S[i, j] = w_t[i] S[i, j] + k_t[i] v_t[j]; the
    two directions averaged, GroupNorm(num_heads) over [C, T] of each cloud, * g, W_o;
  - LGM: for each token its ``k_neighbors[s]`` nearest centres (itself included);
    ``graph_iterations`` rounds of v_i += U([max_j E([x_j - (x_i + O(v_i)), v_j]), v_i]) with
    O, E, U Linear-ReLU-Linear; then Linear-GELU-Linear;
  - CM: sigmoid(W_r BQE_r(x)) * W_v silu(W_k BQE_k(x));

* a final LayerNorm per scale.

Head: max over the tokens of the first and of the last scale, concatenated,
Linear-BN-ReLU-Linear-BN-ReLU-Linear. Norm epsilons are PyTorch's defaults (1e-5), as in the
release.

Part segmentation (``official_segmentation_logits``, three scales as released): PointNet++
feature propagation from scale 2 onto the centres of scale 1 (skip: scale 1's tokens), from
there onto scale 0 (skip: its tokens), and from there onto the input points (skip: their
coordinates): for each target its 3 nearest sources by the sorted ``-2 a.b + |a|^2 + |b|^2``,
weights ``1 / (d + 1e-8)`` normalised, the weighted sum after the skip features, then two
1x1 conv-BN-ReLU layers. The object category's one-hot through Linear-ReLU-Linear goes next to
every point's features; then 1x1 conv-BN-ReLU, conv-BN-ReLU, conv.

The one deliberate difference from the release: farthest point sampling starts at point
``fps_start`` of every cloud instead of at a random point drawn on every call. The running
nearest distance of the sampling starts at 1e10 as released, in the dtype of the points (the
release allocates it in torch's default dtype and then fails, at ``distance[mask] =
dist[mask]``, unless that is the dtype of the points, so the two agree wherever it runs).
"""
import torch
import torch.nn.functional as F

EPS = 1e-5  # nn.LayerNorm / nn.GroupNorm / nn.BatchNorm1d default


# ------------------------------------------------------------------------------ geometry

def farthest_point_indices(points, n, start=0):
    """[B, n] indices: start at ``start``; then repeatedly the point whose distance to the
    nearest chosen point is the largest (first one on ties)."""
    B, N, _ = points.shape
    chosen = torch.empty(B, n, dtype=torch.long)
    for b in range(B):
        cloud = points[b]
        nearest = torch.full((N,), 1e10, dtype=points.dtype)
        current = start
        for i in range(n):
            chosen[b, i] = current
            d = ((cloud - cloud[current]) ** 2).sum(-1)
            closer = d < nearest
            nearest = torch.where(closer, d, nearest)
            current = int(torch.argmax(nearest))
    return chosen


def nearest_indices(k, reference, queries):
    """[B, M, k] indices of each query's k nearest reference points (unordered)."""
    d = -2 * torch.einsum("bmc,bnc->bmn", queries, reference)
    d = d + (queries ** 2).sum(-1)[:, :, None]
    d = d + (reference ** 2).sum(-1)[:, None, :]
    return d.topk(k, dim=-1, largest=False, sorted=False).indices


def take(x, idx):
    """x [B, N, C], idx [B, ...] -> [B, ..., C], one cloud at a time."""
    return torch.stack([x[b][idx[b]] for b in range(x.shape[0])])


# ------------------------------------------------------------------------------ layers

class _Params:
    """The state dict seen under a prefix, in the compute dtype."""

    def __init__(self, sd, prefix, dtype):
        self.sd, self.prefix, self.dtype = sd, prefix, dtype

    def __getitem__(self, name):
        return self.sd[self.prefix + name].to(self.dtype)

    def sub(self, name):
        return _Params(self.sd, self.prefix + name + ".", self.dtype)


def linear(p, x):
    bias = p.prefix + "bias"
    return F.linear(x, p["weight"], p["bias"] if bias in p.sd else None)


def batch_norm_eval(p, x):  # x [B, C, ...]
    return F.batch_norm(x, p["running_mean"], p["running_var"], p["weight"], p["bias"],
                        training=False, eps=EPS)


def layer_norm(p, x):
    return F.layer_norm(x, x.shape[-1:], p["weight"], p["bias"], eps=EPS)


def two_layer(p, x, act):  # Sequential(Linear, act, Linear): keys 0 and 2
    return linear(p.sub("2"), act(linear(p.sub("0"), x)))


def patch_encoder(p, patches):
    """patches [B, G, K, 3] -> [B, G, C]."""
    B, G, K, _ = patches.shape
    x = patches.reshape(B * G, K, 3).transpose(1, 2)                       # [BG, 3, K]
    conv = lambda q, y: F.conv1d(y, q["weight"], q["bias"])
    f = p.sub("first_conv")
    x = conv(f.sub("3"), F.relu(batch_norm_eval(f.sub("1"), conv(f.sub("0"), x))))  # [BG, 256, K]
    pooled = x.max(dim=2).values                                          # [BG, 256]
    x = torch.cat([pooled[:, :, None].repeat(1, 1, K), x], dim=1)         # [BG, 512, K]
    s = p.sub("second_conv")
    x = conv(s.sub("3"), F.relu(batch_norm_eval(s.sub("1"), conv(s.sub("0"), x))))
    return x.max(dim=2).values.reshape(B, G, -1)


def bqe(mu, x):
    """x [B, T, C]: channel quarter q of token t reads token t - (0, 1, -1, 2)[q] (mod T)."""
    B, T, C = x.shape
    q = C // 4
    shift = torch.zeros(C, dtype=torch.long)
    shift[q:2 * q], shift[2 * q:3 * q], shift[3 * q:] = 1, -1, 2
    src = (torch.arange(T)[:, None] - shift[None, :]) % T                 # [T, C]: source token
    star = torch.gather(x, 1, src[None].expand(B, T, C))
    return x + (1 - torch.sigmoid(mu)) * star


def wkv_one_way(r, k, v, w, u, order):
    """r, k, v, w [B, T, H, D] (r already through the sigmoid), u [H, D]; tokens visited in
    ``order``. Returns [B, T, H, D]."""
    B, T, H, D = k.shape
    S = k.new_zeros(B, H, D, D)                                          # S[b, h, key i, value j]
    out = [None] * T
    for t in order:
        kt, vt = k[:, t], v[:, t]
        read = torch.einsum("bhij,bhj->bhi", S, kt)
        bonus = u * kt * vt.sum(-1, keepdim=True)
        out[t] = r[:, t] * (read + bonus)
        S = w[:, t, :, :, None] * S + torch.einsum("bhi,bhj->bhij", kt, vt)
    return torch.stack(out, dim=1)


def spatial_mix(p, x, num_heads):
    B, T, C = x.shape
    D = C // num_heads
    heads = lambda y: y.reshape(B, T, num_heads, D)
    r = F.linear(bqe(p["bqe_r.mu"], x), p["proj_r.weight"])
    k = F.linear(bqe(p["bqe_k.mu"], x), p["proj_k.weight"])
    v = F.linear(bqe(p["bqe_v.mu"], x), p["proj_v.weight"])
    g = torch.sigmoid(F.linear(x, p["proj_g.weight"]))
    c = F.linear(bqe(p["bqe_w.mu"], x), p["w_proj.weight"])
    w = torch.exp(-torch.exp(p["decay_base"] + torch.tanh(c * p["decay_A"]) * p["decay_B"]))
    r, k, v, w = heads(torch.sigmoid(r)), heads(k), heads(v), heads(w)
    fwd = wkv_one_way(r, k, v, w, p["u"], range(T))
    bwd = wkv_one_way(r, k, v, w, p["u"], range(T - 1, -1, -1))
    y = ((fwd + bwd) / 2).reshape(B, T, C)
    y = F.group_norm(y.transpose(1, 2), num_heads, p["group_norm.weight"], p["group_norm.bias"],
                     eps=EPS).transpose(1, 2)
    return F.linear(y * g, p["out_proj.weight"])


def graph_branch(p, centers, x, k, iterations):
    nbr = nearest_indices(k, centers, centers)                            # [B, T, k]
    nbr_xyz = take(centers, nbr)                                          # [B, T, k, 3]
    gs = p.sub("graph_stabilizer")
    for it in range(iterations):
        moved = centers + two_layer(gs.sub("offset_pred"), x, F.relu)     # [B, T, 3]
        edge_in = torch.cat([nbr_xyz - moved[:, :, None, :], take(x, nbr)], dim=-1)
        edge = two_layer(gs.sub(f"edge_mlps.{it}"), edge_in, F.relu).max(dim=2).values
        x = x + two_layer(gs.sub(f"update_mlps.{it}"), torch.cat([edge, x], dim=-1), F.relu)
    return two_layer(p.sub("proj"), x, F.gelu)


def channel_mix(p, x):
    hidden = F.silu(F.linear(bqe(p["bqe_k.mu"], x), p["key_proj.weight"]))
    gate = torch.sigmoid(F.linear(bqe(p["bqe_r.mu"], x), p["receptance_proj.weight"]))
    return gate * F.linear(hidden, p["value_proj.weight"])


def prwkv_block(p, centers, x, num_heads, k, iterations):
    h = layer_norm(p.sub("norm1"), x)
    both = torch.cat([spatial_mix(p.sub("spatial_mixing"), h, num_heads),
                      graph_branch(p.sub("lgm"), centers, h, k, iterations)], dim=-1)
    x = x + F.linear(both, p["fusion.weight"])
    return x + channel_mix(p.sub("channel_mixing"), layer_norm(p.sub("norm2"), x))


# ------------------------------------------------------------------------------ model

def official_features(state_dict, config, points, fps_start=0):
    """The backbone: lists of the per-scale normed tokens [B, G_s, C] and centres [B, G_s, 3]."""
    dtype = points.dtype
    P = _Params(state_dict, "backbone.", dtype)
    feats, centres = [], []
    for s, (n, size) in enumerate(zip(config.num_groups, config.group_sizes)):
        center = take(points, farthest_point_indices(points, n, fps_start))
        patches = take(points, nearest_indices(size, points, center)) - center[:, :, None, :]
        x = patch_encoder(P.sub(f"embed_modules.{s}"), patches)
        x = x + two_layer(P.sub(f"pos_embed.{s}"), center, F.gelu)
        for j in range(config.depths[s]):
            x = prwkv_block(P.sub(f"blocks.{s}.{j}"), center, x, config.num_heads, config.k_neighbors[s],
                            config.graph_iterations)
        feats.append(layer_norm(P.sub(f"norms.{s}"), x))
        centres.append(center)
    return feats, centres


def official_logits(state_dict, config, points, fps_start=0):
    """(logits [B, num_labels], per-scale normed features, per-scale centres); differentiable
    with respect to the state dict's tensors."""
    feats, centres = official_features(state_dict, config, points, fps_start)
    H = _Params(state_dict, "head.", points.dtype)
    z = torch.cat([feats[0].max(dim=1).values, feats[-1].max(dim=1).values], dim=-1)
    z = F.relu(batch_norm_eval(H.sub("1"), linear(H.sub("0"), z)))
    z = F.relu(batch_norm_eval(H.sub("5"), linear(H.sub("4"), z)))
    return linear(H.sub("8"), z), feats, centres


def feature_propagation(p, xyz1, xyz2, points1, points2):
    """Targets xyz1 [B, N, 3] with skip features points1 [B, N, D1]; sources xyz2 [B, S, 3] with
    features points2 [B, S, D2] -> [B, N, C]."""
    N, S = xyz1.shape[1], xyz2.shape[1]
    if S == 1:
        interpolated = points2.repeat(1, N, 1)
    else:
        d = -2 * torch.einsum("bnc,bsc->bns", xyz1, xyz2)
        d = d + (xyz1 ** 2).sum(-1)[:, :, None]
        d = d + (xyz2 ** 2).sum(-1)[:, None, :]
        d, idx = d.sort(dim=-1)
        d, idx = d[:, :, :3], idx[:, :, :3]
        recip = 1.0 / (d + 1e-8)
        weight = recip / recip.sum(dim=2, keepdim=True)
        interpolated = (take(points2, idx) * weight[..., None]).sum(dim=2)
    x = torch.cat([points1, interpolated], dim=-1).transpose(1, 2)        # [B, D, N]
    j = 0
    while p.prefix + f"mlp_convs.{j}.weight" in p.sd:
        conv = p.sub(f"mlp_convs.{j}")
        x = F.relu(batch_norm_eval(p.sub(f"mlp_bns.{j}"), F.conv1d(x, conv["weight"], conv["bias"])))
        j += 1
    return x.transpose(1, 2)


def official_segmentation_logits(state_dict, config, points, one_hot, fps_start=0):
    """(logits [B, N, num_labels], per-scale normed features, per-scale centres) of the part
    segmentation model (three scales); ``one_hot`` [B, num_shape_classes]."""
    assert len(config.num_groups) == 3, "the released segmentation model has three scales"
    feats, centres = official_features(state_dict, config, points, fps_start)
    dtype = points.dtype
    P = lambda name: _Params(state_dict, name + ".", dtype)  # noqa: E731
    f = feature_propagation(P("propagation_layers.0"), centres[1], centres[2], feats[1], feats[2])
    f = feature_propagation(P("propagation_layers.1"), centres[0], centres[1], feats[0], f)
    f = feature_propagation(P("propagation_layers.2"), points, centres[0], points, f)
    category = two_layer(P("cls_embed"), one_hot.to(dtype), F.relu)       # [B, C]
    z = torch.cat([f, category[:, None, :].expand(-1, f.shape[1], -1)], dim=-1).transpose(1, 2)
    H = P("seg_head")
    conv = lambda q, y: F.conv1d(y, q["weight"], q["bias"])  # noqa: E731
    z = F.relu(batch_norm_eval(H.sub("1"), conv(H.sub("0"), z)))
    z = F.relu(batch_norm_eval(H.sub("5"), conv(H.sub("4"), z)))
    return conv(H.sub("7"), z).transpose(1, 2), feats, centres
