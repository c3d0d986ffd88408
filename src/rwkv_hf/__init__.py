"""rwkv_hf: the RWKV family as Hugging Face transformers models.

Importing the package registers the RWKV language models (v4, v5.2, v6, v7; model types
``rwkv_hf_v4`` ... ``rwkv_hf_v7``) with transformers' Auto classes, and the RWKV World
tokenizer with AutoTokenizer, Vision-RWKV (``rwkv_hf_vrwkv``, ``rwkv_hf_vrwkv6``) with the
image Auto classes, AutoBackbone, AutoImageProcessor and timm (``vrwkv_tiny_patch16_224``
...), Restore-RWKV (``rwkv_hf_restore_rwkv``) with AutoModel and AutoModelForImageToImage, and
RWKV-CLIP (``rwkv_hf_rwkv_clip``, its text tower ``rwkv_hf_rwkv_clip_text``) with AutoModel and
AutoModelForZeroShotImageClassification, and PointRWKV (``rwkv_hf_pointrwkv``) with AutoModel.
The WKV operator layer is ``rwkv_hf.ops``.
"""
from . import clip, lm, ops, peft_support, point, restore, vision
from .tokenization_rwkv_world import RwkvWorldTokenizer, register_tokenizers
from .lm import (
    RwkvV4Config, RwkvV4ForCausalLM, RwkvV4ForSequenceClassification, RwkvV4Model,
    RwkvV5Config, RwkvV5ForCausalLM, RwkvV5ForSequenceClassification, RwkvV5Model,
    RwkvV6Config, RwkvV6ForCausalLM, RwkvV6ForSequenceClassification, RwkvV6Model,
    RwkvV7Config, RwkvV7ForCausalLM, RwkvV7ForSequenceClassification, RwkvV7Model,
)
from .clip import RwkvClipConfig, RwkvClipModel, RwkvClipTextConfig, RwkvClipTextModel
from .point import (PointRwkvConfig, PointRwkvForPointCloudClassification, PointRwkvForPointCloudSegmentation,
                    PointRwkvModel)
from .restore import RestoreRwkvConfig, RestoreRwkvForImageRestoration, RestoreRwkvModel
from .vision import (
    Vrwkv6Backbone, Vrwkv6Config, Vrwkv6ForImageClassification, Vrwkv6Model,
    VrwkvBackbone, VrwkvConfig, VrwkvForImageClassification, VrwkvImageProcessor, VrwkvModel,
)

__version__ = "0.1.0.dev0"

lm.register()
vision.register()
restore.register()
clip.register()
point.register()
register_tokenizers(lm.RWKV_LM_CONFIGS)
peft_support.register_peft()  # default LoRA targets (a no-op without peft)

__all__ = [
    "ops", "lm", "__version__", "RwkvWorldTokenizer",
    "RwkvV4Config", "RwkvV4Model", "RwkvV4ForCausalLM", "RwkvV4ForSequenceClassification",
    "RwkvV5Config", "RwkvV5Model", "RwkvV5ForCausalLM", "RwkvV5ForSequenceClassification",
    "RwkvV6Config", "RwkvV6Model", "RwkvV6ForCausalLM", "RwkvV6ForSequenceClassification",
    "RwkvV7Config", "RwkvV7Model", "RwkvV7ForCausalLM", "RwkvV7ForSequenceClassification",
    "VrwkvConfig", "VrwkvModel", "VrwkvForImageClassification", "VrwkvBackbone", "VrwkvImageProcessor",
    "Vrwkv6Config", "Vrwkv6Model", "Vrwkv6ForImageClassification", "Vrwkv6Backbone",
    "RestoreRwkvConfig", "RestoreRwkvModel", "RestoreRwkvForImageRestoration",
    "RwkvClipConfig", "RwkvClipModel", "RwkvClipTextConfig", "RwkvClipTextModel",
    "PointRwkvConfig", "PointRwkvModel", "PointRwkvForPointCloudClassification",
    "PointRwkvForPointCloudSegmentation",
]
