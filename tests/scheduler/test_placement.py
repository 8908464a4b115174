"""Placement against brute force on small random instances: the MILP is optimal, the greedy always feasible."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from aios.scheduler.placement import BIN_PENALTY, FIT_PENALTY, ClusterView, Request, fit_in_order, greedy, milp_window


def make_view(free: list[int], kinds: list[str], nodes: list[int] | None = None, cpu: float = 64.0) -> ClusterView:
    nodes = nodes or list(range(len(free)))
    n_nodes = max(nodes) + 1
    view = ClusterView(np.array(nodes), kinds, np.array(free), [[f"b{b}-d{i}" for i in range(f)] for b, f in
                                                               enumerate(free)],
                       [f"n{i}" for i in range(n_nodes)], np.full(n_nodes, cpu), np.full(n_nodes, 1e6))
    arr = np.array(kinds, dtype=object)
    view.kind_index = {k: np.flatnonzero(arr == k) for k in set(kinds)}
    return view


def brute_force(view: ClusterView, reqs: list[Request], required: frozenset[str] = frozenset()) -> float:
    """Optimal objective of the shared MILP objective by enumeration (the jobs of ``required`` placed)."""
    top = max(1, int(view.bin_free.max()))
    options: list[list[tuple[float, np.ndarray]]] = []
    for req in reqs:
        bins = view.candidates(req)
        caps = view.capacity_in(req, bins)
        opts = [] if req.job_id in required else [(0.0, np.zeros(len(view.bin_free), dtype=int))]
        for xs in itertools.product(*[range(int(c) + 1) for c in caps]):
            if sum(xs) != req.devices:
                continue
            use = np.zeros(len(view.bin_free), dtype=int)
            cost = -req.weight
            for b, x in zip(bins, xs):
                if x:
                    use[b] = x
                    cost += BIN_PENALTY + FIT_PENALTY * x * view.bin_free[b] / top
            opts.append((cost, use))
        options.append(opts)
    best = float("inf")
    for combo in itertools.product(*options):
        total = sum(u for _, u in combo)
        if np.all(total <= view.bin_free):
            best = min(best, sum(c for c, _ in combo))
    return best


instances = st.tuples(
    st.lists(st.integers(0, 3), min_size=1, max_size=4),
    st.lists(st.tuples(st.integers(1, 4), st.sampled_from([None, "a", "b"]), st.sampled_from([None, 1, 2]),
                       st.integers(100, 300)), min_size=1, max_size=3),
    st.randoms(use_true_random=False),
)


@settings(max_examples=150, deadline=None)
@given(instances)
def test_milp_is_optimal_and_greedy_feasible(instance: tuple) -> None:  # type: ignore[type-arg]
    free, jobs, rnd = instance
    kinds = [rnd.choice(["a", "b"]) for _ in free]
    reqs = [Request(f"j{i}", d, frozenset([k]) if k else None, mpn, True, 0.0, 0.0, float(w))
            for i, (d, k, mpn, w) in enumerate(jobs)]
    optimum = brute_force(make_view(free, kinds), reqs)
    result = milp_window(make_view(free, kinds), reqs, time_limit=5.0, gap=0.0)
    assert result.status in ("optimal", "empty")
    assert abs(result.objective - optimum) < 1e-6, (result.objective, optimum)
    # what placing in order would place, the window must place too, and is otherwise as good as it can be
    required = fit_in_order(make_view(free, kinds), reqs)
    kept = milp_window(make_view(free, kinds), reqs, time_limit=5.0, gap=0.0, required=required)
    if required:
        assert kept.status == "optimal" and required <= set(kept.plans), (required, kept.plans)
        best = brute_force(make_view(free, kinds), reqs, required)
        assert abs(kept.objective - best) < 1e-6, (kept.objective, best)
    view = make_view(free, kinds)
    for req in reqs:
        plan = greedy(view, req)
        if plan is None:
            continue
        assert sum(c for _, c in plan) == req.devices  # a gang is whole
        for b, c in plan:
            assert c <= view.bin_free[b] and (req.kinds is None or view.bin_kind[b] in req.kinds)
            assert req.max_per_node is None or c <= req.max_per_node
        view.take(req, plan)
        assert (view.bin_free >= 0).all()


def test_greedy_finds_a_spread_placement_when_no_node_is_big_enough() -> None:
    view = make_view([3, 2, 2], ["a", "a", "a"])
    plan = greedy(view, Request("j", 6))
    assert plan is not None and sorted(c for _, c in plan) == [1, 2, 3]
    assert greedy(view, Request("too-big", 8)) is None
    partial = greedy(view, Request("elastic", 9, gang=False))
    assert partial is not None and sum(c for _, c in partial) == 7


def test_cpu_limits_per_node() -> None:
    view = make_view([4], ["a"], cpu=2.0)
    assert greedy(view, Request("j", 4, cpu=1.0)) is None  # 4 workers need 4 cores, the node has 2
    assert greedy(view, Request("j", 2, cpu=1.0)) == [(0, 2)]


def test_milp_window_of_200_jobs_on_1000_nodes_is_fast() -> None:
    rng = np.random.default_rng(3)
    n = 1000
    view = make_view(rng.integers(0, 9, n).tolist(), ["h100" if i % 2 else "a100" for i in range(n)])
    reqs = [Request(f"j{i}", int(rng.choice([1, 2, 4, 8, 16])), frozenset(["h100"]) if i % 3 == 0 else None,
                    weight=300.0 - i) for i in range(200)]
    result = milp_window(view, reqs, time_limit=5.0)
    assert result.status == "optimal" and len(result.plans) > 100
    used = np.zeros(n, dtype=int)
    for job_plan in result.plans.values():
        for b, c in job_plan:
            used[b] += c
    assert (used <= view.bin_free).all()
