"""README.md tells the truth about set-up: the CPU torch it installs first is the one the test
extra pins, so that the extra then fetches no CUDA wheel."""

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

ROOT = Path(__file__).parent.parent


def test_the_readme_installs_the_cpu_build_of_the_torch_the_test_extra_pins():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [pin for pin in extras["optional-dependencies"]["test"] if pin.startswith("torch")]
    assert pins == ["torch==2.13.0"]
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"The `test` extra (and `dev`, which includes it) pins `{pins[0]}`" in readme
    assert "resolves the pin to PyPI's Linux wheel instead, the CUDA build" in readme
    assert f"pip install {pins[0]} --index-url https://download.pytorch.org/whl/cpu" in readme
