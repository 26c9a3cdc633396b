"""The base of every job spec section: unknown keys are errors (``extra="forbid"``)."""

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=False)
