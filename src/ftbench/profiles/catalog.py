"""Finding a `ModelSpec`: a built-in profile by name, a profile TOML file, or an HF config.json.

Built-in profiles are the TOML files in `ftbench/profiles/data/`, one per model, named after
the file (`gptj-6b.toml` is the profile `gptj-6b`).
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from ftbench.errors import InvalidInputError
from ftbench.profiles.spec import ModelSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

_DATA = resources.files("ftbench.profiles") / "data"


def builtin_names() -> list[str]:
    """The names of the built-in profiles, sorted."""
    return sorted(
        entry.name[: -len(".toml")] for entry in _DATA.iterdir() if entry.name.endswith(".toml")
    )


def builtin_profiles() -> list[ModelSpec]:
    """Every built-in profile, sorted by name."""
    return [load_builtin(name) for name in builtin_names()]


def load_builtin(name: str) -> ModelSpec:
    """The built-in profile `name`; an unknown name lists the available ones."""
    entry = _DATA / f"{name}.toml"
    if not entry.is_file():
        raise InvalidInputError(
            f"no built-in profile {name!r}; available: {', '.join(builtin_names())} "
            "(or give a path to an HF config.json or a profile .toml)"
        )
    return _spec_from_toml_text(entry.read_text(encoding="utf-8"), f"{name}.toml", name)


def load_toml_profile(path: str | Path) -> ModelSpec:
    """A profile TOML file outside the package (same format as the built-in ones)."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(f"cannot read {source}: {exc.strerror or exc}") from exc
    return _spec_from_toml_text(text, str(source), expected_name=None)


def load_profile(name_or_path: str | Path) -> ModelSpec:
    """Resolve a built-in profile name, a profile `.toml`, or an HF `config.json` (or its folder).

    Anything that looks like a path (an existing file or folder, or a name ending in .json or
    .toml) is read as a file; everything else is a built-in name.
    """
    text = str(name_or_path)
    path = Path(text)
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".toml":
        return load_toml_profile(path)
    if path.suffix == ".json" or path.is_file():
        from ftbench.profiles.hf import spec_from_hf_config

        return spec_from_hf_config(path)
    return load_builtin(text)


def _spec_from_toml_text(text: str, origin: str, expected_name: str | None) -> ModelSpec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"{origin} is not valid TOML: {exc}") from exc
    spec = ModelSpec.from_dict(data, origin)
    if expected_name is not None and spec.name != expected_name:
        raise InvalidInputError(
            f"{origin}: name is {spec.name!r} but the file is named {expected_name!r}; "
            "a built-in profile's name must match its file name"
        )
    return spec
