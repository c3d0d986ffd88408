"""Restore-RWKV (image restoration): config and models."""
from .configuration_restore_rwkv import RESTORE_RWKV_SIZES, RestoreRwkvConfig
from .modeling_restore_rwkv import (RESTORE_RWKV_CLASSES, RestoreRwkvForImageRestoration, RestoreRwkvModel,
                                    RestoreRwkvPreTrainedModel)


def register():
    """Register Restore-RWKV with AutoConfig, AutoModel and AutoModelForImageToImage (idempotent)."""
    from transformers import AutoConfig, AutoModel, AutoModelForImageToImage

    config, base, restorer = RESTORE_RWKV_CLASSES
    AutoConfig.register(config.model_type, config, exist_ok=True)
    AutoModel.register(config, base, exist_ok=True)
    AutoModelForImageToImage.register(config, restorer, exist_ok=True)
