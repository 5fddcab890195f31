"""One error hierarchy for everything that crosses the wire.

Every failure to read, verify or decode an update is a :class:`StamenError`, which is a
``ValueError`` so that callers that already catch ``ValueError`` keep working.
"""

from __future__ import annotations


class StamenError(ValueError):
    """Root of all stamen protocol errors."""


class MalformedUpdate(StamenError):
    """The bytes are not a well-formed update (truncated, bad magic, bad lengths, bad header)."""


class SignatureError(StamenError):
    """The signature is missing, made by an unknown key, or does not verify."""


class BaseModelMismatch(StamenError):
    """The update was computed against a different base model than the receiver holds."""


class CodecError(StamenError):
    """A codec spec is unknown or invalid, or a payload does not decode under its spec."""


class CodecMismatch(CodecError):
    """The update names another codec than the one the receiver asked for (refused undecoded)."""


class ValidationError(StamenError):
    """A decoded update has wrong names, shapes, dtypes, non-finite values or a too-large norm."""
