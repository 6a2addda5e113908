"""What POST /v1/jobs/{id}/predict answers: the digit a job's latest checkpoint sees in one image."""

from __future__ import annotations

from pydantic import BaseModel, Field

from mnist_jobs_client.specs import N_CLASSES


class Prediction(BaseModel):
    digit: int = Field(ge=0, lt=N_CLASSES)
    probabilities: list[float] = Field(min_length=N_CLASSES, max_length=N_CLASSES, description="digit 0 first")


class PredictResponse(BaseModel):
    job_id: str
    epoch: int = Field(description="the epoch whose checkpoint answered: the job's latest kept one")
    digit: int = Field(ge=0, lt=N_CLASSES)
    probabilities: list[float] = Field(min_length=N_CLASSES, max_length=N_CLASSES, description="digit 0 first")
