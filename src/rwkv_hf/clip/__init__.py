"""RWKV-CLIP: configs, the two-tower model, the text tower and the processor."""
from .configuration_rwkv_clip import RWKV_CLIP_SIZES, RwkvClipConfig, RwkvClipTextConfig
from .modeling_rwkv_clip import RWKV_CLIP_CLASSES, RwkvClipModel, RwkvClipPreTrainedModel, RwkvClipTextModel
from .processing_rwkv_clip import default_processor, rwkv_clip_tokenizer


def register():
    """Register RWKV-CLIP with AutoConfig, AutoModel (both configs) and
    AutoModelForZeroShotImageClassification (idempotent)."""
    from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification

    AutoConfig.register(RwkvClipConfig.model_type, RwkvClipConfig, exist_ok=True)
    AutoConfig.register(RwkvClipTextConfig.model_type, RwkvClipTextConfig, exist_ok=True)
    AutoModel.register(RwkvClipConfig, RwkvClipModel, exist_ok=True)
    AutoModel.register(RwkvClipTextConfig, RwkvClipTextModel, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(RwkvClipConfig, RwkvClipModel, exist_ok=True)
