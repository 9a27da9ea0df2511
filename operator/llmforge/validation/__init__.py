"""Offline validation: exactly the rules the apiserver and the operator apply, as one list of problems.

Layers: schema (pydantic = the CRD schema), CEL rules (the same expressions the CRD carries, run by a CEL
library), semantic checks, then hyperparameter advice (warnings only).
"""

from .problems import Problem, ValidationFailed
from .validate import validate_object

__all__ = ["Problem", "ValidationFailed", "validate_object"]
