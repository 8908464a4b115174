"""The lease ledger and the inventory fold: literal cases, and properties over random event sequences."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aios.common.events import (
    DeviceHealthy, DeviceInfo, DevicesLeased, DevicesReleased, DeviceUnhealthy, Event, Link, NodeCordoned, NodeLost,
    NodeRegistered, TenantQuotaSet,
)
from aios.common.store import Commit
from aios.resource_manager.inventory import Inventory, evolve, fold_commit
from aios.resource_manager.leases import LeaseBook, LeaseConflict, check_grant, grant, release
from aios.resource_manager.liveness import lost_nodes

NODES = {"n1": ["n1-g0", "n1-g1", "n1-g2", "n1-g3"], "n2": ["n2-g0", "n2-g1"]}


def registered(node: str, agent: str = "a1", kinds: str = "h100") -> NodeRegistered:
    devices = [DeviceInfo(uuid=u, index=i, kind=kinds, model="NVIDIA H100 80GB HBM3", memory_bytes=80 << 30)
               for i, u in enumerate(NODES[node])]
    return NodeRegistered(aggregate_id=node, hostname=node, agent_id=agent, cpu_cores=32, memory_bytes=256 << 30,
                          devices=devices, links=[Link(NODES[node][0], NODES[node][1], "nvlink")])


def fold(events: list[Event]) -> Inventory:
    inv = Inventory()
    for seq, ev in enumerate(events, 1):
        fold_commit(inv, Commit(seq, ev.aggregate, [ev]))
    return inv


def test_lease_lifecycle_and_queries() -> None:
    inv = fold([registered("n1"), registered("n2"),
                DevicesLeased(aggregate_id="n1", job_id="j1", device_uuids=["n1-g0", "n1-g1"]),
                DeviceUnhealthy(aggregate_id="n1", device_uuid="n1-g3", reason="critical XID 79", xid=79)])
    assert [d.info.uuid for d in inv.free_devices("n1")] == ["n1-g2"]
    assert inv.capacity() == {"h100": {"total": 6, "healthy": 5, "free": 3}}
    assert inv.leases.jobs_on("n1") == ["j1"] and inv.versions == {"node.n1": 4, "node.n2": 2}
    assert inv.usage_by_tenant({"j1": "nlp"}) == {"nlp": {"h100": 2}}
    evolve(inv, DevicesLeased(aggregate_id="n2", job_id="j9", device_uuids=["n2-g0"], tenant="vision"))
    assert inv.usage_by_tenant() == {"": {"h100": 2}, "vision": {"h100": 1}}
    evolve(inv, DevicesReleased(aggregate_id="n2", job_id="j9"))
    from aios.resource_manager.queries import device_states  # the resource manager's aios_node_devices gauges

    def nonzero() -> dict[tuple[str, str, str], int]:
        return {k: n for k, n in device_states(inv).items() if n}

    assert nonzero() == {("n1", "h100", "leased"): 2, ("n1", "h100", "free"): 1,
                         ("n1", "h100", "unhealthy"): 1, ("n2", "h100", "free"): 2}
    # a device a job holds that goes bad is what an operator alerts on: it was counted as leased, so the gauge
    # showed no unhealthy device while `aios nodes` said one
    evolve(inv, DeviceUnhealthy(aggregate_id="n1", device_uuid="n1-g0", reason="critical XID 79", xid=79))
    assert nonzero() == {("n1", "h100", "leased"): 1, ("n1", "h100", "free"): 1,
                         ("n1", "h100", "unhealthy"): 2, ("n2", "h100", "free"): 2}
    # every state of every node and kind is a series, 0 where it is: `free == 0` alerts fired on no data before
    assert device_states(inv)[("n2", "h100", "leased")] == 0 and len(device_states(inv)) == 2 * 6
    # a cordoned node's devices are not free for jobs, and the node is not counted as open to them
    from aios.common.events import NodeCordoned
    from aios.resource_manager.queries import node_states

    evolve(inv, NodeCordoned(aggregate_id="n2", reason="maintenance"))
    assert nonzero()[("n2", "h100", "cordoned")] == 2 and device_states(inv)[("n2", "h100", "free")] == 0
    assert node_states(inv) == {"online": 1, "cordoned": 1, "lost": 0}

    evolve(inv, DevicesReleased(aggregate_id="n1", job_id="j1"))
    evolve(inv, DeviceHealthy(aggregate_id="n1", device_uuid="n1-g3"))
    evolve(inv, DeviceHealthy(aggregate_id="n1", device_uuid="n1-g0"))
    assert len(inv.free_devices("n1")) == 4


def test_node_lost_ends_its_leases_and_a_return_is_not_double_counted() -> None:
    inv = fold([registered("n1"), DevicesLeased(aggregate_id="n1", job_id="j1", device_uuids=["n1-g0"]),
                NodeLost(aggregate_id="n1", reason="no heartbeat", last_seen=0.0, jobs=["j1"])])
    assert not inv.nodes["n1"].online and inv.leases.holder == {} and inv.free_devices("n1") == []
    assert inv.capacity() == {}
    evolve(inv, registered("n1", agent="a2"))
    assert inv.nodes["n1"].online and inv.nodes["n1"].registrations == 2
    assert inv.capacity() == {"h100": {"total": 4, "healthy": 4, "free": 4}}


def test_health_survives_an_agent_restart_until_the_agent_says_otherwise() -> None:
    inv = fold([registered("n1"), DeviceUnhealthy(aggregate_id="n1", device_uuid="n1-g1", reason="double-bit ECC"),
                registered("n1", agent="a2")])
    assert not inv.nodes["n1"].devices["n1-g1"].healthy


def test_a_cordon_lasts_until_lifted_and_the_agents_own_until_it_registers_again() -> None:
    inv = fold([registered("n1"), registered("n2"),
                NodeCordoned(aggregate_id="n1", drain=True, reason="replace PSU", by="cli"),
                NodeCordoned(aggregate_id="n2", drain=True, reason="its agent is shutting down", by="agent")])
    assert (inv.nodes["n1"].cordon, inv.nodes["n1"].moving_jobs_off, inv.nodes["n1"].schedulable) == (
        "replace PSU", True, False)
    assert inv.nodes["n2"].moving_jobs_off and inv.nodes["n2"].cordon_reason == "its agent is shutting down"
    assert len(inv.free_devices("n1")) == 4  # free, but no job is placed there (the scheduler's view skips it)
    assert inv.capacity() == {}  # what jobs can use: nothing while both are closed
    # the operator's node restarts its agent gracefully: the agent's own drain must not replace the operator's
    # (it did, and the restart then opened a node under maintenance)
    evolve(inv, NodeCordoned(aggregate_id="n1", drain=True, reason="its agent is shutting down", by="agent"))
    evolve(inv, registered("n1", agent="a2"))
    evolve(inv, registered("n2", agent="a2"))
    assert inv.nodes["n1"].cordon == "replace PSU" and inv.nodes["n1"].draining and not inv.nodes["n1"].schedulable
    assert inv.nodes["n2"].schedulable and not inv.nodes["n2"].moving_jobs_off  # the agent's own ended with it
    # cordoned again without a reason (a drain turned into a plain cordon): the reason stays, as Slurm keeps it
    evolve(inv, NodeCordoned(aggregate_id="n1", drain=False, by="cli"))
    assert inv.nodes["n1"].cordon == "replace PSU" and not inv.nodes["n1"].draining
    evolve(inv, NodeCordoned(aggregate_id="n1", cordoned=False, by="cli"))
    assert inv.nodes["n1"].schedulable and inv.nodes["n1"].cordon == ""
    evolve(inv, NodeCordoned(aggregate_id="n1", by="cli"))  # a fresh cordon without a reason
    assert inv.nodes["n1"].cordon == "cordoned"


def test_jobs_on_a_node_whose_agent_drained_it_are_not_orphaned_by_its_restart() -> None:
    """That agent stopped its workers and reported their exits; its jobs leave by preemption (still checkpointing
    on their other nodes). Orphaning requeued them at once, cutting that checkpoint off."""
    inv = fold([registered("n1"), DevicesLeased(aggregate_id="n1", job_id="j1", device_uuids=["n1-g0"]),
                NodeCordoned(aggregate_id="n1", drain=True, reason="its agent is shutting down", by="agent"),
                registered("n1", agent="a2")])
    assert inv.orphaned == {} and inv.leases.jobs_on("n1") == ["j1"]
    crashed = fold([registered("n1"), DevicesLeased(aggregate_id="n1", job_id="j1", device_uuids=["n1-g0"]),
                    registered("n1", agent="a2")])
    assert crashed.orphaned == {"n1": ["j1"]}  # a restart without a drain: its workers died with it


def test_tenants_are_folded() -> None:
    inv = fold([TenantQuotaSet(aggregate_id="nlp", cohort="research", nominal={"h100": 4})])
    assert inv.tenants["nlp"].nominal == {"h100": 4}


def test_check_grant() -> None:
    book = grant(LeaseBook(), "n1", "j1", ["n1-g0"])
    check_grant(book, "j1", ["n1-g0", "n1-g1"])  # own devices are fine
    for devices, message in [(["n1-g0"], "n1-g0 to j1"), (["n1-g1", "n1-g1"], "listed twice")]:
        try:
            check_grant(book, "j2", devices)
        except LeaseConflict as exc:
            assert message in str(exc)
        else:
            raise AssertionError("conflict not detected")


ALL_DEVICES = [u for devs in NODES.values() for u in devs]
node_of = {u: n for n, devs in NODES.items() for u in devs}
jobs = st.sampled_from(["j1", "j2", "j3", "j4"])
ops = st.one_of(
    st.tuples(st.just("lease"), jobs, st.lists(st.sampled_from(ALL_DEVICES), min_size=1, max_size=3, unique=True)),
    st.tuples(st.just("release"), jobs, st.lists(st.sampled_from(ALL_DEVICES), max_size=2, unique=True)),
    st.tuples(st.just("lost"), st.sampled_from(sorted(NODES)), st.just([])),
    st.tuples(st.just("register"), st.sampled_from(sorted(NODES)), st.just([])),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=40))
def test_no_device_is_ever_in_two_leases(script: list[tuple[str, str, list[str]]]) -> None:
    """Whatever events reach the log, even conflicting ones written by a buggy client, the fold never books a
    device twice, and a conflicting lease is recorded as a violation rather than applied."""
    inv = fold([registered("n1"), registered("n2")])
    for kind, arg, devices in script:
        if kind == "lease":
            node = node_of[devices[0]]
            devices = [d for d in devices if node_of[d] == node]
            before = dict(inv.leases.holder)
            refused = any(before.get(d, arg) != arg for d in devices) or not inv.nodes[node].online
            evolve(inv, DevicesLeased(aggregate_id=node, job_id=arg, device_uuids=devices))
            if refused:
                assert inv.leases.holder == before and inv.leases.violations
            else:
                assert all(inv.leases.holder[d] == arg for d in devices)
        elif kind == "release":
            for node in NODES:
                evolve(inv, DevicesReleased(aggregate_id=node, job_id=arg,
                                            device_uuids=[d for d in devices if node_of[d] == node]))
        elif kind == "lost":
            evolve(inv, NodeLost(aggregate_id=arg, reason="test", last_seen=0.0))
            assert not inv.leases.jobs_on(arg)
        else:
            evolve(inv, registered(arg, agent="again"))
        holders: dict[str, str] = {}
        for device, job in inv.leases.holder.items():
            assert holders.setdefault(device, job) == job
            assert inv.leases.node_of[device] == node_of[device]
        assert set(inv.leases.holder) == set(inv.leases.node_of)


def test_release_only_touches_the_jobs_own_devices() -> None:
    book = grant(grant(LeaseBook(), "n1", "j1", ["n1-g0"]), "n1", "j2", ["n1-g1"])
    release(book, "n1", "j1", ["n1-g1"])
    assert book.holder == {"n1-g0": "j1", "n1-g1": "j2"}


def test_liveness_rule() -> None:
    inv = fold([registered("n1"), registered("n2")])
    assert lost_nodes(inv, {"n1": 100.0}, now=105.0, timeout_s=10, watching_since=90.0) == [("n2", 90.0)]
    assert lost_nodes(inv, {"n1": 100.0, "n2": 104.0}, now=109.0, timeout_s=10, watching_since=0.0) == []
    evolve(inv, NodeLost(aggregate_id="n2", reason="x", last_seen=0.0))
    assert lost_nodes(inv, {"n1": 100.0}, now=200.0, timeout_s=10, watching_since=0.0) == [("n1", 100.0)]
    # an agent that stopped gracefully (it drained its node first) is said to have stopped, not to be lost: it was
    # logged as a lost node and counted in aios_rm_nodes_declared_lost, an alert for a planned stop
    from aios.resource_manager.liveness import silence_reason

    assert silence_reason(inv.nodes["n1"], 12.04, 10) == ("no heartbeat for 12.0s (timeout 10s)", False)
    evolve(inv, NodeCordoned(aggregate_id="n1", cordoned=True, drain=True, by="agent"))
    assert silence_reason(inv.nodes["n1"], 12.04, 10) == ("its agent stopped (it drained the node first)", True)


def test_an_agent_restart_orphans_the_leases_of_its_previous_incarnation() -> None:
    leases = [DevicesLeased(aggregate_id="n1", job_id="j1", device_uuids=["n1-g0"]),
              DevicesLeased(aggregate_id="n1", job_id="j2", device_uuids=["n1-g1"])]
    again = fold([registered("n1"), *leases, registered("n1")])  # the same agent registering again: nothing lost
    assert again.orphaned == {}
    restarted = fold([registered("n1"), *leases, registered("n1", agent="a2")])
    assert restarted.orphaned == {"n1": ["j1", "j2"]}  # its workers died with the old agent
    assert restarted.leases.jobs_on("n1") == ["j1", "j2"]  # still booked until the resource manager releases them
    released = fold([registered("n1"), *leases, registered("n1", agent="a2"),
                     DevicesReleased(aggregate_id="n1", job_id="j1", reason="agent restarted")])
    assert released.orphaned == {"n1": ["j2"]}
    lost_first = fold([registered("n1"), *leases, NodeLost(aggregate_id="n1", reason="silent", last_seen=0.0),
                       registered("n1", agent="a2")])
    assert lost_first.orphaned == {} and lost_first.leases.jobs_on("n1") == []  # NodeLost already ended them


def test_a_lost_node_can_be_forgotten_and_only_a_lost_one() -> None:
    """A decommissioned node stayed in `aios nodes` and in aios_rm_nodes{state="lost"} for ever (an alert that
    never clears); `aios forget NODE` removes a lost node, as Nomad's node purge or kubectl delete node."""
    from aios.common.events import NodeForgotten, NodeLost
    from aios.resource_manager.inventory import decide_forget

    inv = fold([registered("n1"), registered("n2"),
                DevicesLeased(aggregate_id="n1", job_id="j1", device_uuids=["n1-g0"])])
    assert "is online" in decide_forget(inv, "n1") and "is online" in decide_forget(inv, "n2")
    assert decide_forget(inv, "n9") == "no node 'n9'"
    evolve(inv, NodeLost(aggregate_id="n2", reason="decommissioned", last_seen=1.0))
    assert decide_forget(inv, "n2") == ""
    evolve(inv, NodeForgotten(aggregate_id="n2", by="cli"))
    assert sorted(inv.nodes) == ["n1"] and inv.capacity() == {"h100": {"total": 4, "healthy": 4, "free": 3}}
    evolve(inv, registered("n2", agent="a2"))  # an agent that starts there again registers it again
    assert inv.nodes["n2"].online


def test_a_gpu_in_mig_mode_is_not_offered_to_jobs() -> None:
    """A CUDA process given a MIG-mode GPU (by its parent uuid) sees one MIG instance at most: placed as a whole GPU,
    a job got a slice of it, or nothing. It is kept out of placement, and says why."""
    from aios.common.events import MigInstance
    from aios.resource_manager.queries import device_states, node_detail, node_summary

    reg = registered("n2")
    mig = DeviceInfo(uuid="n2-g1", index=1, kind="h100", model="NVIDIA H100 80GB HBM3", memory_bytes=80 << 30,
                     mig_enabled=True, mig_instances=[MigInstance(uuid="MIG-1", memory_bytes=40 << 30)])
    inv = fold([NodeRegistered(aggregate_id="n2", hostname="n2", agent_id="a1", cpu_cores=32,
                               memory_bytes=256 << 30, devices=[reg.devices[0], mig])])
    assert [d.info.uuid for d in inv.free_devices("n2")] == ["n2-g0"]
    assert inv.capacity() == {"h100": {"total": 2, "healthy": 1, "free": 1}}
    assert node_summary(inv, inv.nodes["n2"])["mig"] == 1 and node_summary(inv, inv.nodes["n2"])["free"] == 1
    shown = node_detail(inv, inv.nodes["n2"])["devices"][1]
    assert "MIG mode is on" in shown["reason"] and shown["mig_mode"] and shown["mig"] == ["MIG-1"]
    assert {k: n for k, n in device_states(inv).items() if n} == {("n2", "h100", "free"): 1, ("n2", "h100", "mig"): 1}
    evolve(inv, DeviceHealthy(aggregate_id="n2", device_uuid="n2-g1"))  # a recovery from an XID does not open it
    assert [d.info.uuid for d in inv.free_devices("n2")] == ["n2-g0"]
