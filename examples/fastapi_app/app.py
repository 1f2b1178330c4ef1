"""The HTTP side of the FastAPI example: ``uvicorn examples.fastapi_app.app:app``.

* ``POST /jobs`` with ``{"text": "..."}`` sends a ``summarize`` message and
  answers 202 with the job's id (the message id) at once;
* ``GET /jobs/{id}`` answers the job's status: ``pending`` (no outcome yet:
  queued, running or waiting for a retry), ``done`` with its result, or
  ``failed`` with the error that ended it for good. ``?wait=S`` waits up to
  S seconds for an outcome before answering ``pending``;
* ``GET /queue`` counts the queue's messages.

Outcomes are read from the broker's result store, where they are kept for an
hour (the actor's ``result_ttl``); an id that store does not know, because
it was never issued or its result expired, reads as ``pending`` too.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import FastAPI, HTTPException, Path, Query, Response
from pydantic import BaseModel, Field

from taskflow import ResultTimeout
from taskflow.integrations.fastapi import BrokerDep, lifespan

from .tasks import QUEUE, broker, summarize

#: Message ids: 26 characters of Crockford base32.
JOB_ID = r"^[0-9A-HJKMNP-TV-Z]{26}$"

app = FastAPI(title="taskflow FastAPI example", lifespan=lifespan(broker))


class NewJob(BaseModel):
    text: str = Field(max_length=100_000)


class Summary(BaseModel):
    words: int
    distinct: int
    top: list[str]


class Job(BaseModel):
    id: str
    status: Literal["pending", "done", "failed"]
    result: Summary | None = None
    error: str | None = None


class QueueCounts(BaseModel):
    ready: int
    delayed: int
    in_flight: int
    dead: int


@app.post("/jobs", status_code=202)
async def submit(job: NewJob, response: Response) -> Job:
    message = await summarize.send(job.text)
    response.headers["Location"] = f"/jobs/{message.id}"
    return Job(id=message.id, status="pending")


@app.get("/jobs/{job_id}")
async def status(
    job_id: Annotated[str, Path(pattern=JOB_ID)],
    broker: BrokerDep,
    wait: Annotated[float, Query(ge=0, le=30)] = 0,
) -> Job:
    if broker.results is None:
        raise HTTPException(500, "the broker keeps no results")
    try:
        record = await broker.results.fetch(job_id, timeout=wait)
    except ResultTimeout:
        return Job(id=job_id, status="pending")
    if record.ok:
        return Job(id=job_id, status="done", result=Summary.model_validate(record.value))
    return Job(id=job_id, status="failed", error=f"{record.error_type}: {record.error}")


@app.get("/queue")
async def queue(broker: BrokerDep) -> QueueCounts:
    stats = await broker.stats(QUEUE)
    return QueueCounts(**stats._asdict())
