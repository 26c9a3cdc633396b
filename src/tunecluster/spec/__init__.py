"""Job specs: the pydantic models, the YAML loader, and the mapping to KerasTuner.

``load_spec_file`` / ``parse_spec`` are the only ways to obtain a ``JobSpec``; both run
every rule and raise ``SpecError`` (one line naming the field) on the first problem.
"""

from tunecluster.spec.load import (
    apply_overrides,
    load_spec_file,
    parse_spec,
    parse_yaml,
    spec_from_json,
    spec_to_json,
)
from tunecluster.spec.models import JobSpec

__all__ = [
    "JobSpec",
    "apply_overrides",
    "load_spec_file",
    "parse_spec",
    "parse_yaml",
    "spec_from_json",
    "spec_to_json",
]
