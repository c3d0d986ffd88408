"""Vision-RWKV (VRWKV, VRWKV6): configs, models, image processors, timm entry points."""
from .configuration_vrwkv import VRWKV6_SIZES, VRWKV_SIZES, Vrwkv6Config, VrwkvConfig
from .image_processing_vrwkv import VrwkvImageProcessor, VrwkvImageProcessorPil
from .modeling_vrwkv import (
    VRWKV_CLASSES,
    Vrwkv6Backbone, Vrwkv6ForImageClassification, Vrwkv6Model, Vrwkv6PreTrainedModel,
    VrwkvBackbone, VrwkvForImageClassification, VrwkvModel, VrwkvPreTrainedModel,
)

# model_type -> version (4: VRWKV, 6: VRWKV6), from the config classes
VRWKV_MODEL_TYPES = {classes[0].model_type: version for version, classes in VRWKV_CLASSES.items()}


def register():
    """Register VRWKV and VRWKV6 with AutoConfig, AutoModel, AutoModelForImageClassification,
    AutoBackbone and AutoImageProcessor, and the timm entry points (idempotent)."""
    from transformers import (AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel,
                              AutoModelForImageClassification)

    for config, base, classifier, backbone in VRWKV_CLASSES.values():
        AutoConfig.register(config.model_type, config, exist_ok=True)
        AutoModel.register(config, base, exist_ok=True)
        AutoModelForImageClassification.register(config, classifier, exist_ok=True)
        AutoBackbone.register(config, backbone, exist_ok=True)
        AutoImageProcessor.register(
            config, image_processor_classes={"torchvision": VrwkvImageProcessor, "pil": VrwkvImageProcessorPil},
            exist_ok=True)
    from . import timm_vrwkv  # noqa: F401  (registering happens at import)
