"""What a tenant reads of other tenants: no job ids, no tenant names, whatever shape the ids have."""

from __future__ import annotations

from types import SimpleNamespace

from aios.gateway.api import Api
from aios.gateway.auth import ADMIN, Caller
from aios.scheduler.visibility import redact, redact_value

OWNERS = {"train-1a2b3c": "nlp", "hold-0": "nlp", "serve-demo": "nlp", "mine-9f9f9f": "vision"}
TENANTS = frozenset(OWNERS.values())


def test_other_tenants_jobs_and_names_are_hidden_and_the_viewers_own_are_not() -> None:
    text = ("held by hold-0, train-1a2b3c and mine-9f9f9f; reclaiming 2 h100 from tenant nlp. "
            "quota: tenant vision: h100 would be 3; see serve-demo.")
    seen = redact(text, OWNERS.get, "vision", TENANTS)
    assert seen == ("held by a job of another tenant, a job of another tenant and mine-9f9f9f; reclaiming 2 h100 "
                    "from another tenant. quota: tenant vision: h100 would be 3; see a job of another tenant.")
    assert redact(text, OWNERS.get, "nlp", TENANTS).count("a job of another tenant") == 1  # only vision's job
    assert redact("hold-0x and xhold-0 and h100", OWNERS.get, "vision", TENANTS) == "hold-0x and xhold-0 and h100"
    # a worker's own words: "tenant" before a word that is no tenant's name stays (it read "another tenant missing")
    own = "KeyError: tenant config missing; the tenant has 3 jobs"
    assert redact(own, OWNERS.get, "vision", TENANTS) == own


def test_a_preempted_jobs_timeline_does_not_name_the_job_it_gave_way_to() -> None:
    jobs = {j: SimpleNamespace(tenant=t) for j, t in OWNERS.items()}
    api = Api(SimpleNamespace(jobs=lambda: jobs, tenants=lambda: TENANTS), {})
    detail = {"job": "mine-9f9f9f", "error": None, "spec": {"command": ["echo", "hold-0"]},
              "events": [{"type": "JobPreempted", "for_job": "hold-0",
                          "reason": "quota reclaimed by tenant nlp (lent to tenant vision)"}]}
    seen = api._as_seen_by(Caller("vision"))(detail)
    assert seen["events"] == [{"type": "JobPreempted", "for_job": "a job of another tenant",
                               "reason": "quota reclaimed by another tenant (lent to tenant vision)"}]
    assert seen["spec"] == detail["spec"]  # what the tenant wrote itself stays as written
    assert api._as_seen_by(Caller(ADMIN))(detail) == detail
    assert redact_value([{"a": ["hold-0", 3]}], OWNERS.get, "vision", TENANTS) == [{"a": ["a job of another tenant", 3]}]
