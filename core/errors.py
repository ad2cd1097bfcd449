"""User-facing errors.

Every mistake a user can make (a bad path, a malformed model, an unsupported op, a wrong
input, a corrupted bundle, an unknown target) raises an `EdgecError` subclass whose message
is one line naming the thing at fault. The CLI prints it without a traceback and exits 2;
any other exception is an internal fault and exits 1.
"""

from __future__ import annotations


class EdgecError(Exception):
    """A mistake in what the user gave edgec; the message names the thing at fault."""

    exit_code = 2


class SourceError(EdgecError):
    """The model source cannot be found, imported or resolved."""


class ModelFormatError(EdgecError):
    """A model file is malformed (not ONNX, fails the checker, broken external data)."""


class UnsupportedOpError(EdgecError):
    """An op in the model has no implementation on the chosen target."""


class UnsupportedTypeError(EdgecError):
    """A model input or output of a type edgec cannot feed or hold (a sequence, bfloat16)."""


class InputError(EdgecError):
    """Inputs given to a model or bundle do not match its signature."""


class BundleError(EdgecError):
    """A bundle is missing, corrupted (checksum mismatch) or of an unknown format."""


class TargetError(EdgecError):
    """An unknown target or back end, or an option the target does not take."""


class VerificationError(EdgecError):
    """Compiled outputs differ from the reference by more than the tolerance."""


class OptionError(EdgecError):
    """A malformed option value (an input shape, a dynamic axis, a tolerance)."""


class DeviceError(EdgecError):
    """A device cannot be prepared, reached or used; the message names what is missing."""
