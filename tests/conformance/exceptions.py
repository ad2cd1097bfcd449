"""Conformance cases that onnxruntime runs but edgec is allowed not to pass, with the reason.

Every entry must still be an exception (the test fails when one starts passing, so the table
stays true). Empty: every case that onnxruntime runs compiles, runs and matches with its own
inputs (2,024 cases, 1,608 of them run correctly by onnxruntime 1.32).
"""

from __future__ import annotations

# case name -> why edgec does not pass it
EXPECTED: dict[str, str] = {}
