"""The edgec runtime: load, verify and profile a bundle.

Needs numpy and the bundle's back end (onnxruntime), never torch or the compiler, so it
runs on a device where only those are installed.
"""

from edgec.core.specs import TensorSpec
from edgec.runtime.bundle import Bundle, Manifest
from edgec.runtime.profile import ProfileReport, profile
from edgec.runtime.session import Session, VerifyReport, load

__all__ = [
    "Bundle",
    "Manifest",
    "ProfileReport",
    "Session",
    "TensorSpec",
    "VerifyReport",
    "load",
    "profile",
]
