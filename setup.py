"""Build script for detectron2-cops.

Builds the native extension ``detectron2_cops._C`` from ``csrc/`` with pybind11 (C++17, -O3).
The extension is plain C++: it does not link against PyTorch, so the same build serves CPU and
CUDA installations of PyTorch.
"""
import glob
import os
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    extra_compile_args = []
    extra_link_args = []
    if sys.platform == "win32":
        extra_compile_args += ["/O2"]
    else:
        # -ffp-contract=off: no fused multiply-add, so results do not depend on -march (and the
        # backward's perturbed costs round as NumPy's multiply-then-add does).
        extra_compile_args += ["-O3", "-fvisibility=hidden", "-ffp-contract=off"]
        extra_link_args += ["-pthread"]
        if os.environ.get("COPS_NATIVE_ARCH", "0") == "1":
            # Opt-in: tune for the build machine. Off by default so that wheels stay portable.
            extra_compile_args += ["-march=native"]
    return [
        Pybind11Extension(
            "detectron2_cops._C",
            sources,
            include_dirs=["csrc"],
            cxx_std=17,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]


def _long_description():
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        return f.read()


setup(
    name="detectron2-cops",
    version="0.1.0",
    description=(
        "COPS: Combinatorial Optimization for Panoptic Segmentation (Abbas & Swoboda, NeurIPS 2021) "
        "as a Detectron2 project, with fast C++ asymmetric multiway cut solvers"
    ),
    long_description=_long_description(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["detectron2_cops", "detectron2_cops.*"]),
    ext_modules=_extensions(),
    cmdclass={"build_ext": build_ext},
    install_requires=[
        "numpy>=1.21",
        "torch>=2.0",
        "scipy>=1.9",
        "tqdm",
    ],
    extras_require={
        # Training/inference with Detectron2 (Detectron2 itself is installed from its official
        # instructions; it is not on PyPI).
        "d2": ["cityscapesscripts>=2.2", "opencv-python-headless", "fvcore", "iopath", "pycocotools"],
        "test": ["pytest>=7", "hypothesis>=6", "cityscapesscripts>=2.2"],
    },
    zip_safe=False,
)
