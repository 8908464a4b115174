"""Event types and their codec. Importing this package registers every event type of AIOS."""

from aios.common.events.base import Event, event_types, schema_version, timeline_entry, to_dict
from aios.common.events.codec import decode, decode_one, decoder, encode, upcaster
from aios.common.events.job import (
    JOB_AGGREGATES, Assignment, CheckpointSaved, JobAdmitted, JobCancelled, JobCancelRequested, JobEvent, JobFailed,
    JobPlaced, JobPreempted, JobProgress, JobRequeued, JobStarted, JobSubmitted, JobSucceeded, ReplicaReplaced,
    RunEvent, WorkerExited, WorkerStarted,
)
from aios.common.events.node import (
    DeviceHealthy, DeviceInfo, DevicesLeased, DevicesReleased, DeviceUnhealthy, Link, MigInstance, NodeEvent,
    NodeCordoned, NodeForgotten, NodeLost, NodeRegistered,
)
from aios.common.events.model import (
    Lineage, ModelAliasRemoved, ModelAliasSet, ModelEvent, ModelObjectCollected, ModelVersionDeleted,
    ModelVersionDescribed, ModelVersionEvaluated, ModelVersionRegistered, ModelVersionTagged, Signature,
)
from aios.common.events.tenant import TenantEvent, TenantQuotaRemoved, TenantQuotaSet

__all__ = [
    "Event", "event_types", "schema_version", "timeline_entry", "to_dict", "decode", "decode_one", "decoder", "encode", "upcaster",
    "JOB_AGGREGATES", "Assignment", "JobAdmitted", "JobPlaced", "JobPreempted", "JobStarted", "JobSucceeded", "JobFailed",
    "JobEvent", "JobSubmitted", "JobCancelRequested", "JobCancelled", "JobRequeued", "WorkerStarted", "WorkerExited",
    "JobProgress", "CheckpointSaved", "RunEvent", "ReplicaReplaced",
    "NodeEvent", "NodeRegistered", "DeviceInfo", "Link", "MigInstance", "DeviceUnhealthy", "DeviceHealthy", "NodeLost",
    "NodeCordoned", "NodeForgotten",
    "DevicesLeased", "DevicesReleased", "TenantEvent", "TenantQuotaSet", "TenantQuotaRemoved",
    "ModelEvent", "ModelVersionRegistered", "ModelVersionEvaluated", "ModelAliasSet", "ModelAliasRemoved",
    "ModelVersionTagged", "ModelVersionDescribed", "ModelVersionDeleted", "ModelObjectCollected", "Signature", "Lineage",
]
