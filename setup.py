from setuptools import find_packages, setup

# Console commands installed with the package: each is the ``main`` of a ``tools/*.py`` script
# (same arguments; ``tools/`` is installed as ``gcvideo.tools``), e.g. ``gcvideo-train --config FILE``.
CONSOLE_SCRIPTS = {
    "gcvideo-train": "train_net",
    "gcvideo-test": "test_net",
    "gcvideo-predict": "predict",
    "gcvideo-toy": "run_toy",
    "gcvideo-make-toy-dataset": "make_toy_dataset",
    "gcvideo-visualize-attention": "visualize_attention",
    "gcvideo-analyze-nonlocal": "analyze_nonlocal",
    "gcvideo-count-flops": "count_flops",
    "gcvideo-export": "export",
    "gcvideo-check-videos": "check_videos",
    "gcvideo-prepare-kinetics": "prepare_kinetics",
    "gcvideo-inflate-imagenet": "inflate_imagenet",
}

# Files the package reads, shipped inside it (gcvideo/utils/package_data.py finds them installed
# or in a checkout): the top-level configs/ and datasets/ become gcvideo/configs/, gcvideo/datasets/.
SHIPPED = {"gcvideo.configs": "configs", "gcvideo.datasets": "datasets"}

setup(
    name="gcvideo",
    version="0.1.0",
    description="Global Context Networks (GCNet) for video action recognition: Slow-only ResNet-3D, "
                "GC/SNL/SE/non-local blocks, Kinetics-400 training and 30-view testing",
    packages=find_packages(include=["gcvideo", "gcvideo.*"]) + ["gcvideo.tools"] + list(SHIPPED),
    package_dir={"gcvideo.tools": "tools", **SHIPPED},
    entry_points={"console_scripts": [f"{cmd} = gcvideo.tools.{tool}:main" for cmd, tool in CONSOLE_SCRIPTS.items()]},
    package_data={"gcvideo.layers.fused": ["_gc_kernels.c"],  # built on first use (gcvideo/layers/fused/kernels.py)
                  "gcvideo.configs": ["*/*.yaml"], "gcvideo.datasets": ["*/*.txt", "*/*.md"]},
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "pytorchvideo==0.1.5",
        "fvcore>=0.1.5",
        "iopath>=0.1.9",
        "av>=12",
        "decord>=0.6.0; platform_machine=='x86_64'",
        "numpy",
        "pyyaml",
        "tqdm",
        "matplotlib",
        "pillow",
    ],
    extras_require={
        # the test extra also brings the optional exporters/loggers, the torchcodec decoder (it needs
        # FFmpeg's shared libraries: .ci/run installs them) and timm (its GC/SE ResNets are an
        # interop source), so that CI exercises them; wheel lets tests/test_wheel.py build the wheel offline
        "test": ["pytest>=7", "pytest-xdist", "tensorboard", "onnx", "onnxruntime", "onnxscript",
                 "torchcodec==0.17.*", "timm", "wheel"],
        "extra": ["tensorboard", "onnx", "onnxruntime", "onnxscript"],
        "torchcodec": ["torchcodec==0.17.*"],
    },
)
