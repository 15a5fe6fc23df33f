# The presets live in the top-level configs/ folder (where users look for them) and ship
# inside the wheel as the package hf_llmarch._configs; pyproject alone cannot map that.
from setuptools import find_packages, setup

setup(
    # templates/ holds only data; listing it as a package keeps setuptools from warning about it.
    packages=find_packages(include=["hf_llmarch", "hf_llmarch.*"]) + ["hf_llmarch._configs", "hf_llmarch.templates"],
    package_dir={"hf_llmarch._configs": "configs"},
    package_data={"hf_llmarch._configs": ["*.json"], "hf_llmarch": ["data/*.txt.gz", "templates/*.md"]},
)
