"""Sessions: `tests` (CPU, any machine), `lint` (ruff), `gpu` (on a GPU machine).

nox -s tests lint      # what CI runs
nox -s gpu             # on a GPU machine, in the environment that has CuPy
"""

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """All tests; those marked `gpu` skip without a GPU."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "noxfile.py")


@nox.session(venv_backend="none")
def gpu(session: nox.Session) -> None:
    """GPU tests in the current environment (it must have CuPy); fails if no GPU is usable."""
    session.env["FTBENCH_REQUIRE_GPU"] = "1"
    session.run("python", "-m", "pytest", "-q", "-m", "gpu", *session.posargs)
