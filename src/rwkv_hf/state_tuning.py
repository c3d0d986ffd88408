"""State tuning: train only the initial recurrent state of an RWKV language model.

RWKV's state is small and fixed-size, so a learned *initial* state per layer is a cheap,
popular way to specialise a model (a "soft prompt" of the recurrence). This wraps a
causal (or sequence-classification) RWKV v5.2 / v6 / v7 model, freezes every model weight
and learns, per layer, the time-mix token shift ``[C]``, the WKV state ``[H, N, N]`` and
the channel-mix token shift ``[C]``; each forward starts from them (expanded to the batch)
instead of zeros. At creation the states are zeros, so the wrapped model starts exactly
like the base model::

    from rwkv_hf.state_tuning import add_state_tuning, StateTuningModel

    tuned = add_state_tuning(model)        # model's weights are frozen
    opt = torch.optim.Adam(tuned.trainable_parameters(), lr=1e-2)
    loss = tuned(input_ids=ids, labels=ids).loss; loss.backward(); opt.step()
    tuned.save_state("out")                # out/rwkv_state.safetensors, 4*L*(2C+H*N*N) bytes

    tuned = StateTuningModel.from_pretrained(model, "out")   # or add_state_tuning + load_state

RWKV-4's state (``[3, C]`` running sums with a max-exponent) is not a state one can
usefully learn by gradient; v4 models are refused.
"""
import json
import os

import torch
from torch import nn
from transformers import DynamicCache

from .lm.modeling_rwkv_lm import write_layer_state

STATE_FILE = "rwkv_state.safetensors"
FORMAT = "rwkv_hf.state_tuning/1"


def _state_path(path):
    return path if str(path).endswith(".safetensors") else os.path.join(path, STATE_FILE)


class StateTuningModel(nn.Module):
    """An RWKV LM whose only trainable parameters are per-layer initial states.

    ``forward`` takes the wrapped model's arguments; without ``cache`` it starts from the
    learned states (an explicit ``cache``, e.g. to continue a sequence, is used as is).
    """

    def __init__(self, model):
        super().__init__()
        version = getattr(model, "rwkv_version", None)
        if version is None:
            raise ValueError(f"State tuning needs an rwkv_hf language model, got {type(model).__name__}.")
        if version == 4:
            raise ValueError("State tuning supports RWKV v5.2, v6 and v7; RWKV-4's WKV state ([3, C] running sums "
                             "with a max exponent) is not a learnable matrix state.")
        config = model.config
        self.model = model
        model.requires_grad_(False)
        n_layers, c = config.num_hidden_layers, config.hidden_size
        h, n = config.num_heads, config.head_size
        self.att_shift = nn.Parameter(torch.zeros(n_layers, c))
        self.wkv_state = nn.Parameter(torch.zeros(n_layers, h, n, n))
        self.ffn_shift = nn.Parameter(torch.zeros(n_layers, c))
        device = next(model.parameters()).device
        self.to(device)

    @property
    def config(self):
        return self.model.config

    def trainable_parameters(self):
        return [self.att_shift, self.wkv_state, self.ffn_shift]

    def initial_cache(self, batch_size):
        """A ``DynamicCache`` holding the learned states for ``batch_size`` sequences (the
        copy into the cache is differentiable, so gradients reach the states)."""
        cache = DynamicCache(config=self.model.config)
        dtype = self.model.get_input_embeddings().weight.dtype
        c = self.att_shift.shape[1]
        for i in range(self.att_shift.shape[0]):
            write_layer_state(cache, i, self.att_shift[i].to(dtype).expand(batch_size, c),
                              self.wkv_state[i].float().expand(batch_size, *self.wkv_state.shape[1:]),
                              self.ffn_shift[i].to(dtype).expand(batch_size, c))
        return cache

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, cache=None, **kwargs):
        if cache is None:
            batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
            cache = self.initial_cache(batch)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                          cache=cache, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids, **kwargs):
        """``model.generate`` starting from the learned state."""
        if kwargs.get("cache") is None:
            kwargs["cache"] = self.initial_cache(input_ids.shape[0])
        return self.model.generate(input_ids, **kwargs)

    # ------------------------------------------------------------------ save / load

    def _metadata(self):
        cfg = self.model.config
        return {"format": "pt", "rwkv_hf": FORMAT, "model_type": cfg.model_type,
                "num_hidden_layers": str(cfg.num_hidden_layers), "hidden_size": str(cfg.hidden_size),
                "num_heads": str(cfg.num_heads), "head_size": str(cfg.head_size),
                "base_model_name_or_path": str(getattr(cfg, "_name_or_path", "") or "")}

    def state_dict_to_save(self):
        return {"att_shift": self.att_shift.detach().contiguous().cpu(),
                "wkv_state": self.wkv_state.detach().contiguous().cpu(),
                "ffn_shift": self.ffn_shift.detach().contiguous().cpu()}

    def save_state(self, path):
        """Write the states (fp32) and the model's type and sizes to ``path`` (a folder, which
        gets ``rwkv_state.safetensors``, or a ``.safetensors`` file); returns the file path."""
        from safetensors.torch import save_file

        file = _state_path(path)
        os.makedirs(os.path.dirname(os.path.abspath(file)), exist_ok=True)
        save_file(self.state_dict_to_save(), file, metadata=self._metadata())
        return file

    def load_state(self, path):
        """Load states written by :meth:`save_state`; refuses a state of another model type or
        size with a ``ValueError``."""
        from safetensors import safe_open

        file = _state_path(path)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"No state-tuning file at {file} (written by StateTuningModel.save_state).")
        mine = self._metadata()
        with safe_open(file, "pt") as f:
            meta = f.metadata() or {}
            if meta.get("rwkv_hf") != FORMAT:
                raise ValueError(f"{file} is not an rwkv_hf state-tuning file (metadata {json.dumps(meta)[:200]}).")
            if meta.get("model_type") != mine["model_type"]:
                raise ValueError(f"{file} holds a state for a {meta.get('model_type')} model; this model is "
                                 f"{mine['model_type']}.")
            for key in ("num_hidden_layers", "hidden_size", "num_heads", "head_size"):
                if meta.get(key) != mine[key]:
                    raise ValueError(f"{file} holds a state for a model with {key}={meta.get(key)}; this model has "
                                     f"{key}={mine[key]} (another model size).")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        params = {"att_shift": self.att_shift, "wkv_state": self.wkv_state, "ffn_shift": self.ffn_shift}
        if set(tensors) != set(params):
            raise ValueError(f"{file} has tensors {sorted(tensors)}, expected {sorted(params)}.")
        for k, p in params.items():
            if tuple(tensors[k].shape) != tuple(p.shape):
                raise ValueError(f"{file}: {k} has shape {tuple(tensors[k].shape)}, this model {tuple(p.shape)}.")
            with torch.no_grad():
                p.copy_(tensors[k])
        return self

    @classmethod
    def from_pretrained(cls, model, path):
        """Wrap ``model`` and load the states saved at ``path``."""
        return cls(model).load_state(path)


def add_state_tuning(model):
    """Freeze ``model`` and return a :class:`StateTuningModel` around it (zero initial states)."""
    return StateTuningModel(model)
