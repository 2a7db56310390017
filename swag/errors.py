"""User-facing errors: one sentence that names the fix, turned into a clean exit by the CLIs."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the input (flag, file, data) that the user can fix.

    Command-line drivers catch it, print `error: <message>` to stderr and exit with status 2,
    so the message must be a complete sentence that says what to do.
    """
