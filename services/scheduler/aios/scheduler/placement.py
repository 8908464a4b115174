"""Placement: which devices of which nodes a job gets. Pure; numpy for the greedy path, HiGHS MILP for windows.

A *bin* is the free devices of one kind on one online node (healthy, not leased). Both solvers share one objective:
place as much priority weight as possible, then use few bins per job (fewer nodes, NVLink stays inside a node),
then prefer bins that are already fuller (best fit, so big holes stay whole for big gangs). A gang is all-or-nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import msgspec
import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from aios.resource_manager.inventory import Inventory

BIN_PENALTY = 1.0
"""Cost of each extra bin (node) a job spans, against a placed job's weight (>= 100)."""
FIT_PENALTY = 0.01
"""Cost per device of using emptier bins (best fit)."""


class Request(msgspec.Struct, frozen=True):
    job_id: str
    devices: int
    kinds: frozenset[str] | None = None
    """Acceptable kinds; None: any."""
    max_per_node: int | None = None
    gang: bool = True
    cpu: float = 0.0
    """Per worker (= per device; one worker for a CPU-only job)."""
    memory_gib: float = 0.0
    weight: float = 100.0


@dataclass
class ClusterView:
    """Free capacity as arrays, updated in place as a round places jobs."""

    bin_node: np.ndarray
    bin_kind: list[str]
    bin_free: np.ndarray
    bin_devices: list[list[str]]
    node_ids: list[str]
    node_cpu: np.ndarray
    node_mem: np.ndarray
    kind_index: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_inventory(cls, inv: Inventory, cpu_used: dict[str, float] | None = None,
                       mem_used: dict[str, float] | None = None, cache: BinCache | None = None) -> "ClusterView":
        node_ids: list[str] = []
        bin_node, bin_kind, bin_free, bin_devices = [], [], [], []
        cpu, mem = [], []
        for node_id, node in sorted(inv.nodes.items()):
            if not node.schedulable:  # offline, or cordoned
                continue
            n = len(node_ids)
            node_ids.append(node_id)
            cpu.append(node.cpu_cores - (cpu_used or {}).get(node_id, 0.0))
            mem.append(node.memory_bytes / 1024**3 - (mem_used or {}).get(node_id, 0.0))
            for kind, uuids in _node_bins(inv, node_id, node, cache):
                bin_node.append(n)
                bin_kind.append(kind)
                bin_free.append(len(uuids))
                bin_devices.append(uuids)
        view = cls(np.array(bin_node, dtype=np.int64), bin_kind, np.array(bin_free, dtype=np.int64), bin_devices,
                   node_ids, np.array(cpu, dtype=float), np.array(mem, dtype=float))
        kinds = np.array(bin_kind, dtype=object)
        view.kind_index = {k: np.flatnonzero(kinds == k) for k in set(bin_kind)}
        return view

    def candidates(self, req: Request) -> np.ndarray:
        """Bins of acceptable kinds with a free device (indices)."""
        if req.kinds is None:
            idx = np.arange(len(self.bin_kind))
        else:
            # kinds in name order, not the frozenset's (string hashes differ between processes): the bins' order
            # breaks ties in the MILP and the greedy, and a simulation must replay the same on every run
            parts = [self.kind_index[k] for k in sorted(req.kinds) if k in self.kind_index]
            idx = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return idx[self.bin_free[idx] > 0]

    def capacity_in(self, req: Request, bins: np.ndarray) -> np.ndarray:
        """Devices of ``req`` each bin can take now: free devices, per-node limit, CPU and memory of the node."""
        cap = self.bin_free[bins].astype(float)
        if req.max_per_node is not None:
            cap = np.minimum(cap, req.max_per_node)
        nodes = self.bin_node[bins]
        if req.cpu > 0:
            cap = np.minimum(cap, np.floor(self.node_cpu[nodes] / req.cpu + 1e-9))
        if req.memory_gib > 0:
            cap = np.minimum(cap, np.floor(self.node_mem[nodes] / req.memory_gib + 1e-9))
        return np.maximum(cap, 0).astype(np.int64)

    def node_room(self, req: Request, node: int) -> int:
        """Devices of ``req`` one node can take over all its bins: the per-node limit, and its CPU and memory for
        the workers (a bin is a node's devices of one kind, and ``capacity_in`` limits each bin alone)."""
        room = req.max_per_node if req.max_per_node is not None else 1 << 30
        if req.cpu > 0:
            room = min(room, int(min(self.node_cpu[node] / req.cpu + 1e-9, 1 << 30)))
        if req.memory_gib > 0:
            room = min(room, int(min(self.node_mem[node] / req.memory_gib + 1e-9, 1 << 30)))
        return max(room, 0)

    def copy(self) -> "ClusterView":
        """A view to try placements on without touching this one."""
        return ClusterView(self.bin_node, self.bin_kind, self.bin_free.copy(), list(self.bin_devices), self.node_ids,
                           self.node_cpu.copy(), self.node_mem.copy(), self.kind_index)

    def give_back(self, node_id: str, kind: str, uuids: list[str], cpu: float, memory_gib: float) -> None:
        """Free devices again (and the CPU and memory their workers held) on a trial copy: would preempting the jobs
        that hold them let another job start? Devices on nodes this view leaves out (cordoned, offline) stay out."""
        if node_id not in self.node_ids:
            return
        n = self.node_ids.index(node_id)
        self.node_cpu[n] += cpu
        self.node_mem[n] += memory_gib
        if not uuids:  # a worker without accelerators
            return
        here = [b for b in self.kind_index.get(kind, ()) if self.bin_node[b] == n]
        if here:
            self.bin_free[here[0]] += len(uuids)
            self.bin_devices[here[0]] = self.bin_devices[here[0]] + list(uuids)
            return
        self.bin_node = np.append(self.bin_node, n)
        self.bin_kind = self.bin_kind + [kind]
        self.bin_free = np.append(self.bin_free, len(uuids))
        self.bin_devices = self.bin_devices + [list(uuids)]
        self.kind_index = {**self.kind_index, kind: np.append(self.kind_index.get(kind, np.zeros(0, np.int64)),
                                                               len(self.bin_kind) - 1)}

    def withhold(self, req: Request, uuids: set[str]) -> None:
        """Take these devices, where free, out of the round for a job that will start on them once others leave."""
        for b, devices in enumerate(self.bin_devices):
            kept = [u for u in devices if u not in uuids]
            if len(kept) < len(devices):
                gone = len(devices) - len(kept)
                self.bin_devices[b] = kept
                self.bin_free[b] -= gone
                n = int(self.bin_node[b])
                self.node_cpu[n] -= req.cpu * gone
                self.node_mem[n] -= req.memory_gib * gone

    def withhold_cpu(self, req: Request, node_id: str) -> None:
        """Take a CPU-only worker's CPU and memory on the node out of the round, for a job that will start there once
        others leave (it may go below zero while they still hold it: nothing else is placed there meanwhile)."""
        if node_id in self.node_ids:
            n = self.node_ids.index(node_id)
            self.node_cpu[n] -= req.cpu
            self.node_mem[n] -= req.memory_gib

    def take(self, req: Request, plan: list[tuple[int, int]]) -> dict[str, list[str]]:
        """Commit a plan [(bin, count)] to the view; returns node id -> device uuids."""
        out: dict[str, list[str]] = {}
        for b, count in plan:
            devices = self.bin_devices[b][:count]
            self.bin_devices[b] = self.bin_devices[b][count:]
            self.bin_free[b] -= count
            n = int(self.bin_node[b])
            self.node_cpu[n] -= req.cpu * count
            self.node_mem[n] -= req.memory_gib * count
            out.setdefault(self.node_ids[n], []).extend(devices)
        return out

    def place_cpu_only(self, req: Request) -> str | None:
        """One worker without accelerators: the node with the most free CPU that fits."""
        ok = np.flatnonzero((self.node_cpu >= req.cpu) & (self.node_mem >= req.memory_gib))
        if ok.size == 0:
            return None
        n = int(ok[np.argmax(self.node_cpu[ok])])
        self.node_cpu[n] -= req.cpu
        self.node_mem[n] -= req.memory_gib
        return self.node_ids[n]


_ORDER_CACHE: dict[tuple[str, str, float, int], dict[str, tuple[int, str]]] = {}
class BinCache:
    """Free devices per node from earlier rounds, for one inventory that only grows by folding (the service's).
    A node's entry is reused while its aggregate's version is unchanged: most rounds touch a few nodes of
    thousands."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[tuple[int, int, float], list[tuple[str, list[str]]]]] = {}


def _node_bins(inv: Inventory, node_id: str, node: object, cache: BinCache | None) -> list[tuple[str, list[str]]]:
    """Free devices of a node by kind, NVLink domains first."""
    key = (inv.versions.get(f"node.{node_id}", 0), node.registrations, node.registered_at)  # type: ignore[attr-defined]
    cached = cache.entries.get(node_id) if cache is not None else None
    if cached is not None and cached[0] == key:
        return cached[1]
    order_key = (node_id, node.agent_id, node.registered_at, len(node.links))  # type: ignore[attr-defined]
    order = _ORDER_CACHE.get(order_key)
    if order is None:  # topology changes only when a node registers
        order = _ORDER_CACHE[order_key] = _nvlink_order(node.links)  # type: ignore[attr-defined]
    by_kind: dict[str, list[str]] = {}
    for dev in inv.free_devices(node_id):
        by_kind.setdefault(dev.info.kind, []).append(dev.info.uuid)
    bins = []
    for kind, uuids in sorted(by_kind.items()):
        uuids.sort(key=lambda u: order.get(u, (1 << 30, u)))
        bins.append((kind, uuids))
    if len(_ORDER_CACHE) > 200_000:
        _ORDER_CACHE.clear()
    if cache is not None:
        cache.entries[node_id] = (key, bins)
    return bins


def _nvlink_order(links: list) -> dict[str, tuple[int, str]]:  # type: ignore[type-arg]
    """Devices ordered by NVLink component (largest first), so a job's devices come from one NVLink domain."""
    parent: dict[str, str] = {}

    def find(u: str) -> str:
        while parent.setdefault(u, u) != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    for link in links:
        find(link.a)
        find(link.b)
        if link.level == "nvlink":
            parent[find(link.a)] = find(link.b)
    groups: dict[str, list[str]] = {}
    for u in parent:
        groups.setdefault(find(u), []).append(u)
    ranked = sorted(groups.values(), key=lambda g: (-len(g), min(g)))
    return {u: (i, u) for i, g in enumerate(ranked) for u in g}


def greedy(view: ClusterView, req: Request) -> list[tuple[int, int]] | None:
    """Best fit: the fullest single bin that holds the whole job; else the fewest bins, biggest first.
    Non-gang jobs take what there is (at least one device). None when a gang cannot be placed whole."""
    bins = view.candidates(req)
    if bins.size == 0:
        return None
    cap = view.capacity_in(req, bins)
    fits = np.flatnonzero(cap >= req.devices)
    if fits.size:
        best = fits[np.lexsort((bins[fits], cap[fits]))][0]
        return [(int(bins[best]), req.devices)]
    total = int(cap.sum())  # each bin's room alone, so at least the node-held total: short of it, short
    if total <= 0 or (req.gang and total < req.devices):
        return None
    order = np.lexsort((bins, -cap))
    # biggest bins first, each node's bins together within its room: two kinds of one node are two bins, and
    # each alone was held to max_devices_per_node (and the node's CPU), so 2 + 2 went on a node limited to 2
    room: dict[int, int] = {}
    plan, left = [], req.devices
    for i in order:
        if left == 0:
            break
        node = int(view.bin_node[bins[i]])
        if node not in room:
            room[node] = view.node_room(req, node)
        take = int(min(cap[i], left, room[node]))
        if take:
            plan.append((int(bins[i]), take))
            left -= take
            room[node] -= take
    if not plan or (left and req.gang):
        return None
    return plan


def fit_in_order(view: ClusterView, reqs: list[Request]) -> frozenset[str]:
    """The jobs that placing ``reqs`` one by one in their order (greedy) would place: a window's MILP must place
    them too (``required``), and may only find better spots and room for more. By its weights alone, two later
    jobs outweighed an earlier one that fit (under LAS the job that had preempted for room saw the room go to two
    requeued jobs, and preempted again)."""
    trial = view.copy()
    fitted = []
    for req in reqs:
        found = greedy(trial, req)
        if found is not None:
            trial.take(req, found)
            fitted.append(req.job_id)
    return frozenset(fitted)


def plan_cost(view: ClusterView, plan: list[tuple[int, int]]) -> float:
    """The shared objective's cost part of one job's plan (lower is better)."""
    top = max(1, int(view.bin_free.max())) if view.bin_free.size else 1
    return BIN_PENALTY * len(plan) + FIT_PENALTY * sum(c * view.bin_free[b] / top for b, c in plan)


@dataclass
class MilpResult:
    plans: dict[str, list[tuple[int, int]]]
    objective: float
    status: str
    seconds: float
    variables: int


def milp_window(view: ClusterView, reqs: list[Request], time_limit: float = 1.0,
                candidates_per_job: int = 24, gap: float = 1e-4, required: frozenset[str] = frozenset()) -> MilpResult:
    """Place a window of gang jobs at once with ``scipy.optimize.milp`` (HiGHS).

    Variables per (job, candidate bin): x = devices there (integer), y = bin used (binary); per job z = placed
    (binary), sum_b x = devices * z. Capacity per bin, CPU and memory per node. Each job considers its
    ``candidates_per_job`` best-fitting bins only (plus ties), which keeps a 200 x 1,000 window small. ``gap``:
    HiGHS's relative optimality gap (tests pass 0 to compare with brute force exactly). ``required``: job ids that
    must be placed (z = 1); the status is not "optimal" or "time-limit" when the window cannot hold them.
    """
    started = time.perf_counter()
    top = max(1, int(view.bin_free.max())) if view.bin_free.size else 1
    cols_job, cols_bin, caps = [], [], []
    for j, req in enumerate(reqs):
        bins = view.candidates(req)
        if bins.size == 0:
            continue
        cap = view.capacity_in(req, bins)
        keep = cap > 0
        bins, cap = bins[keep], cap[keep]
        if bins.size > candidates_per_job:
            # prefer bins that hold the whole job, fullest first; then the biggest. Ties are dealt out to the jobs
            # in turn, so that jobs of one window do not all crowd into the same few equal bins.
            whole = cap >= req.devices
            score = np.where(whole, cap, 10_000 - cap)
            rotation = (np.arange(bins.size) - j * candidates_per_job) % bins.size
            pick = np.lexsort((rotation, score))[:candidates_per_job]
            bins, cap = bins[pick], cap[pick]
        cols_job += [j] * bins.size
        cols_bin += bins.tolist()
        caps += cap.tolist()
    nx, nj = len(cols_job), len(reqs)
    if nx == 0:
        return MilpResult({}, 0.0, "empty", time.perf_counter() - started, 0)
    cols_job_a, cols_bin_a, caps_a = np.array(cols_job), np.array(cols_bin), np.array(caps, dtype=float)
    # variable layout: x[0:nx], y[nx:2nx], z[2nx:2nx+nj]
    nvar = 2 * nx + nj
    c = np.zeros(nvar)
    c[:nx] = FIT_PENALTY * view.bin_free[cols_bin_a] / top
    c[nx:2 * nx] = BIN_PENALTY
    c[2 * nx:] = -np.array([r.weight for r in reqs])
    rows, cols, vals, lo, hi = [], [], [], [], []
    r = 0
    # sum_b x_jb - devices_j z_j == 0
    for j, req in enumerate(reqs):
        idx = np.flatnonzero(cols_job_a == j)
        rows += [r] * (idx.size + 1)
        cols += idx.tolist() + [2 * nx + j]
        vals += [1.0] * idx.size + [-float(req.devices)]
        lo.append(0.0)
        hi.append(0.0)
        r += 1
    # x_jb - cap_jb y_jb <= 0
    k = np.arange(nx)
    rows += (r + k).tolist() * 2
    cols += k.tolist() + (nx + k).tolist()
    vals += [1.0] * nx + (-caps_a).tolist()
    lo += [-np.inf] * nx
    hi += [0.0] * nx
    r += nx
    # bin capacity
    for b in np.unique(cols_bin_a):
        idx = np.flatnonzero(cols_bin_a == b)
        rows += [r] * idx.size
        cols += idx.tolist()
        vals += [1.0] * idx.size
        lo.append(-np.inf)
        hi.append(float(view.bin_free[b]))
        r += 1
    # node CPU and memory; a job's devices on a node over all its kinds (bins), for max_devices_per_node
    nodes_a = view.bin_node[cols_bin_a]
    for j, req in enumerate(reqs):
        if req.max_per_node is None:
            continue
        mine = cols_job_a == j
        for n in np.unique(nodes_a[mine]):
            idx = np.flatnonzero(mine & (nodes_a == n))
            if idx.size > 1:
                rows += [r] * idx.size
                cols += idx.tolist()
                vals += [1.0] * idx.size
                lo.append(-np.inf)
                hi.append(float(req.max_per_node))
                r += 1
    for n in np.unique(nodes_a):
        idx = np.flatnonzero(nodes_a == n)
        for per, free in ((np.array([reqs[j].cpu for j in cols_job_a[idx]]), view.node_cpu[n]),
                          (np.array([reqs[j].memory_gib for j in cols_job_a[idx]]), view.node_mem[n])):
            if per.any():
                rows += [r] * idx.size
                cols += idx.tolist()
                vals += per.tolist()
                lo.append(-np.inf)
                hi.append(float(free))
                r += 1
    A = coo_matrix((vals, (rows, cols)), shape=(r, nvar)).tocsr()
    upper = np.concatenate([caps_a, np.ones(nx), np.ones(nj)])
    lower = np.zeros(nvar)
    lower[2 * nx:] = [1.0 if r.job_id in required else 0.0 for r in reqs]
    res = milp(c, constraints=LinearConstraint(A, lo, hi), integrality=np.ones(nvar),
               bounds=Bounds(lower, upper), options={"time_limit": time_limit, "disp": False, "mip_rel_gap": gap})
    plans: dict[str, list[tuple[int, int]]] = {}
    if res.x is not None:
        x = np.round(res.x).astype(np.int64)
        for j, req in enumerate(reqs):
            if x[2 * nx + j] == 1:
                idx = np.flatnonzero((cols_job_a == j) & (x[:nx] > 0))
                plans[req.job_id] = [(int(cols_bin_a[i]), int(x[i])) for i in idx]
    status = {0: "optimal", 1: "time-limit"}.get(res.status, f"status-{res.status}")
    objective = float(res.fun) if res.x is not None else 0.0
    return MilpResult(plans, objective, status, time.perf_counter() - started, nvar)
