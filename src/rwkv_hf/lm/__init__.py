"""RWKV language models v4, v5.2, v6 and v7 (configs, models, registration)."""
from .configuration_rwkv_lm import RWKV_LM_CONFIGS, RwkvV4Config, RwkvV5Config, RwkvV6Config, RwkvV7Config
from .modeling_rwkv_lm import (
    RWKV_LM_CLASSES,
    RwkvV4ForCausalLM, RwkvV4ForSequenceClassification, RwkvV4Model,
    RwkvV5ForCausalLM, RwkvV5ForSequenceClassification, RwkvV5Model,
    RwkvV6ForCausalLM, RwkvV6ForSequenceClassification, RwkvV6Model,
    RwkvV7ForCausalLM, RwkvV7ForSequenceClassification, RwkvV7Model,
)


def register():
    """Register every version with AutoConfig, AutoModel, AutoModelForCausalLM and
    AutoModelForSequenceClassification (idempotent)."""
    from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM,
                              AutoModelForSequenceClassification)

    for config, base, causal, seq in RWKV_LM_CLASSES.values():
        AutoConfig.register(config.model_type, config, exist_ok=True)
        AutoModel.register(config, base, exist_ok=True)
        AutoModelForCausalLM.register(config, causal, exist_ok=True)
        AutoModelForSequenceClassification.register(config, seq, exist_ok=True)
