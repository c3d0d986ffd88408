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
