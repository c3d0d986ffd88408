"""Install rwkv_hf.

`pip install -e .` installs the pure-Python package: the operator layer's reference
and torch backends run everywhere, and the CUDA extension (sources shipped as the
package data `rwkv_hf.cuda_ext`) compiles on the first CUDA call.

`RWKV_HF_BUILD_CUDA=1 pip install --no-build-isolation .` also compiles the CUDA
extension ahead of time (no GPU needed) for the architectures in
`TORCH_CUDA_ARCH_LIST` (default "8.0;9.0"), into the same cache the first CUDA call
looks in. `rwkv-hf build-cuda --arch 8.0,9.0` does the same after installation.
"""
import importlib.util
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildPyWithCuda(build_py):
    """build_py, plus the ahead-of-time CUDA build when RWKV_HF_BUILD_CUDA=1."""

    def run(self):
        super().run()
        if os.environ.get("RWKV_HF_BUILD_CUDA") == "1":
            path = os.path.join(HERE, "src", "rwkv_hf", "ops", "cuda_backend.py")
            spec = importlib.util.spec_from_file_location("_rwkv_hf_cuda_backend", path)
            backend = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(backend)
            archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
            print(f"rwkv_hf: compiling the CUDA extension for {archs}")
            print("rwkv_hf: built", backend.build(archs, verbose=True))


setup(
    name="rwkv_hf",
    version="0.1.0.dev0",
    description="RWKV models (LM v4-v7, Vision-RWKV, ...) as Hugging Face transformers models",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    # The CUDA sources live in the top-level cuda_ext/ and ship as rwkv_hf.cuda_ext; the
    # converters live in conversion/ and ship as rwkv_hf.conversion; the model-card templates
    # they render live in model_cards/ and ship as rwkv_hf.model_cards (data only).
    package_dir={"": "src", "rwkv_hf.cuda_ext": "cuda_ext", "rwkv_hf.conversion": "conversion",
                 "rwkv_hf.model_cards": "model_cards"},
    packages=find_packages("src") + ["rwkv_hf.cuda_ext", "rwkv_hf.conversion", "rwkv_hf.model_cards"],
    package_data={
        "rwkv_hf.cuda_ext": ["*.cu", "*.cuh", "*.cpp", "*.h", "README.md"],
        "rwkv_hf.model_cards": ["*.md"],
        # Vendored tokenizer vocabularies (World + GPT-NeoX-20B, Apache-2.0; the open_clip /
        # OpenAI CLIP BPE of RWKV-CLIP, MIT; see NOTICE).
        "rwkv_hf": ["tokenizer_files/*.txt", "tokenizer_files/*.json", "tokenizer_files/*.txt.gz",
                    "tokenizer_files/NOTICE"],
        # The tiny RWKV-7 that `rwkv-hf demo` runs (written by examples/train_tiny_lm.py).
        "rwkv_hf.pretrained": ["tiny-rwkv7-pydoc/*.json", "tiny-rwkv7-pydoc/*.safetensors",
                               "tiny-rwkv7-pydoc/README.md", "tiny-vrwkv-digits/*.json",
                               "tiny-vrwkv-digits/*.safetensors", "tiny-vrwkv-digits/README.md",
                               "tiny-vrwkv6-digits/*.json", "tiny-vrwkv6-digits/*.safetensors",
                               "tiny-vrwkv6-digits/README.md", "tiny-restore-rwkv-denoise/*.json",
                               "tiny-restore-rwkv-denoise/*.safetensors", "tiny-restore-rwkv-denoise/README.md",
                               "tiny-rwkv-clip-digits/*.json", "tiny-rwkv-clip-digits/*.safetensors",
                               "tiny-rwkv-clip-digits/README.md", "tiny-pointrwkv-shapes/*.json",
                               "tiny-pointrwkv-shapes/*.safetensors", "tiny-pointrwkv-shapes/README.md",
                               "tiny-pointrwkv-parts/*.json", "tiny-pointrwkv-parts/*.safetensors",
                               "tiny-pointrwkv-parts/README.md"],
    },
    cmdclass={"build_py": BuildPyWithCuda},
    python_requires=">=3.10",
    install_requires=[
        # torch 2.14.1 + torchvision 0.29.1 are the tested pair (x86_64, CUDA 13 build).
        "torch>=2.6,<=2.14.1",
        "torchvision>=0.21,<=0.29.1",
        "transformers>=5.24,<6",
        "accelerate>=1.10,<2",
        "peft>=0.17,<1",
        "timm>=1.0.15,<2",
        "safetensors>=0.5,<1",
        "huggingface-hub>=1.0,<3",
    ],
    entry_points={"console_scripts": ["rwkv-hf = rwkv_hf.cli:main"]},
    extras_require={
        # ninja drives torch's extension builds (the CUDA backend and its CI compile test);
        # flash-linear-attention's pure-torch references are an independent oracle.
        "test": ["pytest>=8", "hypothesis>=6.100", "flash-linear-attention>=0.6,<0.7", "ninja",
                 # BlinkDL's runtime: the oracle for converted models and for the World tokenizer.
                 "rwkv>=0.8.30,<0.9",
                 # load_digits: the tiny Vision-RWKV's data (its provenance test)
                 "scikit-learn>=1.3",
                 # open_clip's tokenizer and image transform: the oracle of RWKV-CLIP's processor
                 "open_clip_torch>=2.20,<4", "ftfy>=6"],
        "cuda": ["ninja"],
        "bench": ["matplotlib>=3.8"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
