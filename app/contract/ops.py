"""Operations endpoints: /health."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from app.contract.common import ContractResponse


class ModelsStatus(ContractResponse):
    loaded: list[str] = Field(description="names of the models loaded in this process")
    embedQueueDepth: int = Field(ge=0, description="images accepted for embedding and not yet embedded")


class PoolStatus(ContractResponse):
    size: int = Field(ge=0)
    idle: int = Field(ge=0)
    max: int = Field(ge=0)


class Health(ContractResponse):
    """Liveness and readiness: the database answers; which models are loaded; queue and pool."""

    status: Literal["ok", "unavailable"]
    database: Literal["ok", "down"]
    models: ModelsStatus
    pool: PoolStatus


class HealthUnavailable(Health):
    """The database does not answer (503, with Retry-After): the health fields plus the error shape."""

    error: str
    code: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
