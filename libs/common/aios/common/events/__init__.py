"""Event types and their codec. Importing this package registers every event type of AIOS."""

from aios.common.events.base import Event, event_types, schema_version, to_dict
from aios.common.events.codec import decode, decode_one, decoder, encode, upcaster
from aios.common.events.job import JobCancelled, JobCancelRequested, JobEvent, JobSubmitted

__all__ = [
    "Event", "event_types", "schema_version", "to_dict", "decode", "decode_one", "decoder", "encode", "upcaster",
    "JobEvent", "JobSubmitted", "JobCancelRequested", "JobCancelled",
]
