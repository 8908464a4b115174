"""A client of AIOS that knows only NATS (nats-py) and docs/external-clients.md: submits a job, retries the submit
(stored once), tries the same id again (refused), follows the events to the end and prints a JSON report.

Usage: python external_client.py NATS_URL JOB_ID
"""

import asyncio
import json
import sys
import time

import nats
from nats.js.api import DeliverPolicy
from nats.js.errors import APIError


async def main(url: str, job_id: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    subject = f"aios.evt.job.{job_id}"
    spec = {"name": "external", "tenant": "outside", "devices": 1,
            "command": [sys.executable, "-c", "import os; print('hello from', os.environ['AIOS_JOB_ID'])"]}
    event = {"type": "JobSubmitted", "aggregate_id": job_id, "ts": time.time(), "tenant": "outside",
             "name": "external", "spec": spec}
    headers = {"Nats-Expected-Last-Subject-Sequence": "0", "Nats-Msg-Id": f"submit-{job_id}"}
    first = await js.publish(subject, json.dumps(event).encode(), headers=headers)
    try:  # a retry, as after a lost acknowledgement: a duplicate, or refused if others appended since
        retry = await js.publish(subject, json.dumps(event).encode(), headers=headers)
        retry_duplicate, retry_seq = retry.duplicate, retry.seq
    except APIError as exc:
        if exc.err_code != 10071:
            raise
        sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        stored = await sub.next_msg(timeout=5)  # the job's first event: ours, if its Nats-Msg-Id is our key
        await sub.unsubscribe()
        retry_duplicate = (stored.headers or {}).get("Nats-Msg-Id") == headers["Nats-Msg-Id"]
        retry_seq = stored.metadata.sequence.stream
    try:
        await js.publish(subject, json.dumps(event).encode(),
                         headers={**headers, "Nats-Msg-Id": f"other-{job_id}"})
        second_id_refused = False
    except APIError as exc:
        second_id_refused = exc.err_code == 10071
    seen = []
    sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            msg = await sub.next_msg(timeout=1)
        except nats.errors.TimeoutError:
            continue
        body = json.loads(msg.data)
        for ev in body if isinstance(body, list) else [body]:
            seen.append(ev["type"])
        if seen[-1] in ("JobSucceeded", "JobFailed", "JobCancelled"):
            break
    print(json.dumps({"seq": first.seq, "retry_duplicate": retry_duplicate, "retry_seq": retry_seq,
                      "second_id_refused": second_id_refused, "events": seen}))
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
