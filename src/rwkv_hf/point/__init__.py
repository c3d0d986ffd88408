"""PointRWKV (point-cloud classification): config and models."""
from .configuration_pointrwkv import POINTRWKV_SIZES, PointRwkvConfig
from .modeling_pointrwkv import (POINTRWKV_CLASSES, PointRwkvForPointCloudClassification, PointRwkvModel,
                                 PointRwkvPreTrainedModel)


def register():
    """Register PointRWKV with AutoConfig and AutoModel (the backbone; transformers has no Auto
    class for point clouds, so the classifier is :class:`PointRwkvForPointCloudClassification`)
    (idempotent)."""
    from transformers import AutoConfig, AutoModel

    config, base, _ = POINTRWKV_CLASSES
    AutoConfig.register(config.model_type, config, exist_ok=True)
    AutoModel.register(config, base, exist_ok=True)
