"""The one boundary to onnxruntime: providers, sessions, profiling.

No other part of onnxslim imports onnxruntime; algorithms stay testable
without it and a different runtime could be added here alone.
"""

from onnxslim.runtime.providers import available_providers, resolve_provider
from onnxslim.runtime.session import Runner, check_loads

__all__ = ["available_providers", "resolve_provider", "Runner", "check_loads"]
