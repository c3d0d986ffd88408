"""Image processors of Vision-RWKV: the official evaluation pipeline (mmcls
``imagenet_bs64_swin_224``): resize the shorter side to 256 with bicubic resampling, centre
crop 224, scale to [0, 1] and normalise with the ImageNet mean and std. ``VrwkvImageProcessor``
is the torchvision backend (default), ``VrwkvImageProcessorPil`` the PIL one; both are
registered with AutoImageProcessor for VRWKV and VRWKV6. For another resolution, pass
``size={"shortest_edge": s}`` and ``crop_size={"height": c, "width": c}`` (the official 384
model: 384 / 384, i.e. no crop margin)."""
from transformers.image_processing_backends import PilBackend, TorchvisionBackend
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

_SETTINGS = dict(
    resample=PILImageResampling.BICUBIC,
    image_mean=list(IMAGENET_DEFAULT_MEAN),
    image_std=list(IMAGENET_DEFAULT_STD),
    size={"shortest_edge": 256},
    default_to_square=False,
    crop_size={"height": 224, "width": 224},
    do_resize=True,
    do_center_crop=True,
    do_rescale=True,
    do_normalize=True,
    do_convert_rgb=True,
)

VrwkvImageProcessor = type("VrwkvImageProcessor", (TorchvisionBackend,),
                           dict(_SETTINGS, __module__=__name__, __doc__=__doc__))
VrwkvImageProcessorPil = type("VrwkvImageProcessorPil", (PilBackend,),
                              dict(_SETTINGS, __module__=__name__, __doc__=__doc__))


def default_image_processor(config, eval_size=None):
    """The official evaluation preprocessing for a model of ``config``: shorter side to
    size / 0.875 and a centre crop at size (mmcls, 224), no crop margin from 384 on
    (InternImage's L model). ``size``: ``eval_size`` or the config's image size."""
    size = eval_size or max(config.image_size if isinstance(config.image_size, (list, tuple))
                            else [config.image_size])
    resize = size if size >= 384 else round(size / 0.875)
    return VrwkvImageProcessor(size={"shortest_edge": resize}, crop_size={"height": size, "width": size})


# Saved processors name their class in an auto_map and carry this file: the folder's
# preprocessing works with trust_remote_code=True where rwkv_hf is not installed.
VrwkvImageProcessor.register_for_auto_class("AutoImageProcessor")
