"""Errors a user can cause and fix. The CLI prints them as one line and exits non-zero.

Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem in the user's input, job file, storage or environment, with a clear message."""

    exit_code = 1


class JobFileError(UserError):
    """The job file is missing, not YAML, or fails validation. Carries every problem found."""

    exit_code = 2

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


class StorageError(UserError):
    """A storage operation failed (unreachable server, permission, missing bucket, ...)."""


class RunFolderError(UserError):
    """The run folder is inconsistent with the job (changed config, changed input, foreign folder)."""


class MissingDependencyError(UserError):
    """An optional package is not installed in this environment."""

    def __init__(self, package: str, extra: str):
        super().__init__(
            f"this needs the Python package '{package}', which is not installed here; "
            f"run `make setup` (or `pip install 'lmd-batch[{extra}]'`)"
        )


def require(module: str, extra: str):
    """Import an optional heavy module, or raise a one-line MissingDependencyError."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(module.split(".")[0], extra) from exc
