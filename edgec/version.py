"""The edgec version and the bundle format version it writes."""

__version__ = "0.1.0"

# Bumped when a bundle written by this edgec cannot be read by an older runtime.
BUNDLE_FORMAT_VERSION = 1
