"""Specific exceptions raised by the engine. The UI layer turns them into gr.Error.

Every message is written for a student: what went wrong and what to do about it."""

from __future__ import annotations

from collections.abc import Iterator


class MedlabError(Exception):
    """Base class for every error the engine raises on purpose."""


class ConfigError(MedlabError, ValueError):
    """An environment variable holds a value that is not allowed."""

    def __init__(self, variable: str, value: str, allowed: str) -> None:
        self.variable = variable
        self.value = value
        self.allowed = allowed
        super().__init__(f"{variable}={value!r} is not valid: expected {allowed}.")


class UnknownModelError(MedlabError, KeyError):
    """A model key that is not in the registry."""

    def __init__(self, key: str, valid: list[str]) -> None:
        self.key = key
        self.valid = valid
        super().__init__(f"Unknown model key {key!r}. Valid keys: {', '.join(valid)}.")

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.args[0]


class ModelUnavailableError(MedlabError, RuntimeError):
    """A model cannot be loaded here; `reason` says why and `fix` how to fix it."""

    def __init__(self, key: str, reason: str, fix: str = "") -> None:
        self.key = key
        self.reason = reason
        self.fix = fix
        msg = f"Model '{key}' is unavailable: {reason}"
        if fix:
            msg += f" How to fix: {fix}"
        super().__init__(msg)


class InsufficientMemoryError(ModelUnavailableError):
    """The model needs more memory than the budget or the machine allows."""


class InputError(MedlabError, ValueError):
    """User input that cannot be processed (bad file, bad text, bad parameter)."""


class UnsupportedFileError(InputError):
    """The file is not of a kind this entry point accepts."""


class CorruptFileError(InputError):
    """The file claims a format but cannot be decoded (truncated, damaged)."""


class ImageTooLargeError(InputError):
    """The file or the decoded image exceeds the configured limits."""


class ImageTooSmallError(InputError):
    """The image is too small to carry any information for the model."""


class DicomError(InputError):
    """A DICOM file that cannot be shown as an image (no pixels, wrong kind of object)."""


class ServiceUnreachableError(MedlabError, RuntimeError):
    """A server the app talks to (the chroma server) is not answering: an outage, not a
    problem of this machine's disk or of the input."""


class DiskFullError(MedlabError, OSError):
    """The disk holding the data dir is full: nothing half-written was kept, and what was
    stored before stays readable; free space (or enlarge the volume) and repeat."""


class WeightsDamagedError(ModelUnavailableError):
    """A weights file is truncated or corrupted (its bytes do not match its own header)."""

    def __init__(self, key: str, path: str, detail: str = "", env_var: str | None = None) -> None:
        self.path = path
        # a local folder (env_var points at it) is not repaired by a download: say what is
        fix = (f"delete it or run `python -m medlab download {key}` (it re-downloads a damaged file)." if env_var is None
               else f"the folder {env_var} points at holds it: copy or export the model there again, or delete it and "
                    f"unset {env_var} to use the default source (`python -m medlab download {key}` fetches it).")
        super().__init__(
            key, f"weights damaged: {path}" + (f" ({detail})" if detail else "") + "; the app never serves damaged weights.",
            fix,
        )


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and every exception on its cause/context chain, each once, nearest first:
    library errors are recognised by class wherever a wrapper (a ValueError raised while
    handling it, a re-raise `from`) left them."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += [e.__cause__, e.__context__]
