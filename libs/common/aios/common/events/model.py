"""Model registry events (aggregate ``model.<name>``): versions, their evaluations, aliases, tags and deletions.

A version's weights live in the Object Store under their content digest; events only name the digest. The version
number is the registry's (1, 2, ...), never reused, so ``models:/name/3`` means the same bytes for ever.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from aios.common.events.base import Event


class Signature(msgspec.Struct, frozen=True, kw_only=True):
    """What inference accepts and returns: the Open Inference Protocol's tensor metadata."""

    input_name: str = "input"
    input_shape: list[int]
    """Per example (without the batch dimension)."""
    input_datatype: str = "FP32"
    output_name: str = "output"
    output_shape: list[int]
    output_datatype: str = "FP32"
    labels: list[str] = []


class Lineage(msgspec.Struct, frozen=True, kw_only=True):
    """Where a version came from: enough to reproduce it."""

    source: str
    """``job`` (registered by a successful training job), ``file`` (by hand) or ``compression``."""
    job_id: str = ""
    spec: dict[str, Any] = {}
    dataset: str = ""
    """Generator or data set, its version, seed, size and split (e.g. ``digits/v1/seed=0/n=3000/train``)."""
    command: list[str] = []
    parent_version: int | None = None
    compression: dict[str, Any] = {}
    """Method, its parameters and the measured deltas against the parent."""


class ModelEvent(Event, frozen=True, kw_only=True):
    AGGREGATE: ClassVar[str] = "model"
    ABSTRACT: ClassVar[bool] = True


class ModelVersionRegistered(ModelEvent, frozen=True, kw_only=True):
    version: int
    digest: str
    """``sha256:<hex>`` of the stored bytes."""
    size_bytes: int
    format: str
    signature: Signature
    lineage: Lineage
    metrics: dict[str, float] = {}
    description: str = ""
    tags: dict[str, str] = {}
    registered_by: str = ""


class ModelVersionEvaluated(ModelEvent, frozen=True, kw_only=True):
    version: int
    dataset: str
    metrics: dict[str, float]
    """accuracy, precision/recall/f1 (macro), latency_ms_per_example ..."""
    per_class: dict[str, dict[str, float]] = {}
    confusion: list[list[int]] = []
    """Rows: true class, columns: predicted class."""


class ModelAliasSet(ModelEvent, frozen=True, kw_only=True):
    alias: str
    version: int
    previous: int | None = None
    """The version the alias pointed at when the move was decided (None: a new alias)."""


class ModelAliasRemoved(ModelEvent, frozen=True, kw_only=True):
    alias: str
    previous: int


class ModelVersionTagged(ModelEvent, frozen=True, kw_only=True):
    version: int
    set: dict[str, str] = {}
    removed: list[str] = []


class ModelVersionDescribed(ModelEvent, frozen=True, kw_only=True):
    version: int
    description: str


class ModelVersionDeleted(ModelEvent, frozen=True, kw_only=True):
    """The version is gone for users and its bytes are collected once nothing else references the digest; the
    events stay as the audit trail."""

    version: int
    reason: str = ""
    deleted_by: str = ""


class ModelObjectCollected(ModelEvent, frozen=True, kw_only=True):
    """The registry removed the stored bytes of a digest no live version references (on the model that last held
    it)."""

    digest: str
    size_bytes: int = 0
