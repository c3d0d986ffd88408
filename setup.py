"""Install rwkv_hf.

`pip install -e .` installs the pure-Python package (the operator layer's
reference and torch backends run everywhere).
"""
from setuptools import find_packages, setup

setup(
    name="rwkv_hf",
    version="0.1.0.dev0",
    description="RWKV models (LM v4-v7, Vision-RWKV, ...) as Hugging Face transformers models",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    python_requires=">=3.10",
    install_requires=[
        # torch 2.14.1 + torchvision 0.29.1 are the tested pair (x86_64, CUDA 13 build).
        "torch>=2.6,<=2.14.1",
        "torchvision>=0.21,<=0.29.1",
        "transformers>=5.0,<6",
        "accelerate>=1.10,<2",
        "peft>=0.17,<1",
        "timm>=1.0.15,<2",
        "safetensors>=0.5,<1",
        "huggingface-hub>=1.0,<3",
    ],
    entry_points={"console_scripts": ["rwkv-hf = rwkv_hf.cli:main"]},
    extras_require={
        # flash-linear-attention's pure-torch references are an independent oracle.
        "test": ["pytest>=8", "hypothesis>=6.100", "flash-linear-attention>=0.6,<0.7"],
        "bench": ["matplotlib>=3.8"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
