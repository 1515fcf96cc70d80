"""axbench-hypersteer: HyperSteer steering hypernetworks for the AxBench benchmark."""

from setuptools import find_packages, setup

SERVE = ["fastapi>=0.110", "uvicorn>=0.29", "gguf>=0.10"]  # hypersteer serve / vectors
# The `hypersteer` stages, the judge, reports and plots read and write AxBench's parquet/jsonl
# files; the model itself (HyperSteer, load_base, training) needs none of these.
PIPELINE = ["pandas>=2.0", "pyarrow>=15", "matplotlib>=3.7", "openai>=1.52"]

setup(
    name="axbench-hypersteer",
    version="0.1.0",
    description="Train and evaluate HyperSteer steering hypernetworks inside AxBench, or on their own.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["axbench_hypersteer", "axbench_hypersteer.*"]),
    package_data={"axbench_hypersteer": ["resources/*.json", "resources/*.yaml", "resources/*.txt",
                                          "serve/static/*.html"]},
    install_requires=[
        # Ranges here, exact pins in constraints.txt (what CI tests). torch is never left free:
        # an unconstrained resolve pulls multi-GB CUDA wheels.
        "torch>=2.4,<2.15",
        "transformers>=4.45,<6",
        "pyvene>=0.1.6",
        "safetensors>=0.4",
        "tokenizers>=0.20",
        "pyyaml>=6",
        "numpy>=1.26",
        "tqdm>=4.60",
    ],
    extras_require={
        # The tests exercise the server and its playground in a real browser (selenium drives
        # Debian's chromium; `make browser` installs it), so `.[test]` includes `.[serve]`.
        "pipeline": PIPELINE,
        "serve": [*SERVE, *PIPELINE],
        # hypothesis: the property-based fuzz of `hypersteer serve`'s request bodies.
        "test": ["pytest>=8", "selenium>=4.20", "hypothesis>=6.100", *SERVE, *PIPELINE],
        # Scale-out training: torchao's 8-bit AdamW (`optimizer: adamw8bit`), the one that works
        # on FSDP2's sharded parameters. The test suite exercises it, so `make test` installs it.
        "scale": ["torchao>=0.18,<0.19"],
        # AxBench is not on PyPI; see README ("Using AxBench's own scripts") for the install line.
    },
    entry_points={"console_scripts": ["hypersteer=axbench_hypersteer.cli:main"]},
)
