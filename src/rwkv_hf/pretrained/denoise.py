"""Measuring the shipped tiny Restore-RWKV denoiser: PSNR and the classical baseline it is
compared with (a Gaussian blur, its width chosen on the image itself)."""
import math

import torch
import torch.nn.functional as F


def psnr(image, reference, peak=1.0):
    """Peak signal-to-noise ratio in dB of ``image`` against ``reference`` (values 0..``peak``;
    ``image`` is clipped to that range first, as a saved image would be)."""
    err = (image.detach().double().clamp(0, peak) - reference.double()).pow(2).mean().item()
    return float("inf") if err == 0 else 10 * math.log10(peak ** 2 / err)


def gaussian_blur(image, sigma):
    """``image`` [B, C, H, W] blurred by a Gaussian of std ``sigma`` pixels (separable, reflected
    borders, radius 3 sigma)."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
    kernel = (kernel / kernel.sum()).to(image.device)
    c = image.shape[1]
    out = F.pad(image, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def denoise_baselines(noisy, clean):
    """{"noisy_psnr_db": the input's PSNR, "best_blur_psnr_db": the best Gaussian blur's (sigma
    0.4 to 3 pixels in steps of 0.1, chosen against ``clean``: an upper bound on what a blur
    achieves), "best_blur_sigma": its sigma}."""
    best = max((psnr(gaussian_blur(noisy, s / 10), clean), s / 10) for s in range(4, 31))
    return {"noisy_psnr_db": psnr(noisy, clean), "best_blur_psnr_db": best[0], "best_blur_sigma": best[1]}
