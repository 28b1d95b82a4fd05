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


class ReplicaStatus(ContractResponse):
    """One LOOKALIKE_DATABASE_READ_URL replica as the last check found it."""

    url: str = Field(description="the replica's URL, password redacted")
    state: Literal["ok", "lagging", "down", "unknown"] = Field(
        description="`ok`: serves reads; `lagging`: replay lag over LOOKALIKE_REPLICA_MAX_LAG_S; `down`: does not "
        "answer; `unknown`: not checked yet"
    )
    lagSeconds: float | None = Field(description="time since the primary had WAL this replica has not replayed")
    lagBytes: int | None = Field(description="WAL bytes between the primary's position and this replica's replay")
    replayPaused: bool
    reads: int = Field(ge=0, description="read statement groups this process ran on it")
    error: str | None


class Health(ContractResponse):
    """Liveness and readiness: the database answers; which models are loaded; queue and pool."""

    status: Literal["ok", "unavailable"]
    database: Literal["ok", "down"]
    models: ModelsStatus
    pool: PoolStatus
    reads: Literal["replicas", "primary"] = Field(
        "primary", description="where the read endpoints go now: a usable replica, or the primary"
    )
    replicas: list[ReplicaStatus] = Field(default_factory=list)


class HealthUnavailable(Health):
    """The database does not answer (503, with Retry-After): the health fields plus the error shape."""

    error: str
    code: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
