"""User-facing errors: one line, naming the file, the row and the field, and how to fix it.

The CLI catches `TokensftError` and prints `error: <message>` with exit code 2, never a traceback.
Internal invariants use `assert`; these are for what a user can fix.
"""

from __future__ import annotations

EXIT_USAGE = 2


class TokensftError(Exception):
    """Any error the user can fix (bad input, bad flag, bad model path). Exit code 2."""


class InputError(TokensftError):
    """A bad input record. `where` is e.g. "data.jsonl line 12"; `field` the offending field or None.

    The message reads: `data.jsonl line 12, field 'messages': unknown role 'bot' (use one of
    system, user, assistant; or --skip-invalid to skip such rows)`.
    """

    def __init__(self, where: str, field: str | None, problem: str, fix: str | None = None, reason: str = "invalid"):
        self.where = where
        self.field = field
        self.problem = problem
        self.fix = fix
        self.reason = reason  # short machine-readable category, counted in metadata when skipped
        loc = where if field is None else f"{where}, field '{field}'"
        msg = f"{loc}: {problem}"
        if fix:
            msg += f" ({fix})"
        super().__init__(msg)


class ConfigError(TokensftError):
    """A bad flag or an output that conflicts with the requested run."""


class ModelError(TokensftError):
    """A model that cannot be found, loaded or used."""
