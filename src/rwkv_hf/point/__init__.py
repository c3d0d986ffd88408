"""PointRWKV (point-cloud classification and part segmentation): config and models."""
from .configuration_pointrwkv import POINTRWKV_SIZES, PointRwkvConfig
from .modeling_pointrwkv import (POINTRWKV_CLASSES, PointRwkvForPointCloudClassification,
                                 PointRwkvForPointCloudSegmentation, PointRwkvModel, PointRwkvPreTrainedModel)


def register():
    """Register PointRWKV with AutoConfig and AutoModel (the backbone; transformers has no Auto
    class for point clouds, so the classifier and the part segmentation model are
    :class:`PointRwkvForPointCloudClassification` and :class:`PointRwkvForPointCloudSegmentation`)
    (idempotent)."""
    from transformers import AutoConfig, AutoModel

    config, base = POINTRWKV_CLASSES[:2]
    AutoConfig.register(config.model_type, config, exist_ok=True)
    AutoModel.register(config, base, exist_ok=True)
