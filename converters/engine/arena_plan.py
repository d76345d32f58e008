"""The static activation arena: each tensor's offset, planned from tensor lifetimes (RESHAPE in place)."""

from __future__ import annotations

from dataclasses import dataclass

from bisup.converters.engine.lowering import Step

ARENA_ALIGNMENT = 4


@dataclass
class Plan:
    """Where each activation lives, and how good that is against the schedule's lower bound."""

    offsets: dict[int, int]  # tensor -> byte offset (aliases share their root's)
    arena_bytes: int
    live_bytes: list[int]  # bytes live at each point: before the first op, during each op, after the last

    @property
    def lower_bound_bytes(self) -> int:
        """The largest set of tensors live at once: no plan for this schedule can use less."""
        return max(self.live_bytes)

    @property
    def ratio(self) -> float:
        return self.arena_bytes / self.lower_bound_bytes


def _align(n: int) -> int:
    return (n + ARENA_ALIGNMENT - 1) // ARENA_ALIGNMENT * ARENA_ALIGNMENT


def plan_arena(steps: list[Step], sizes: dict[int, int], graph_inputs: list[int], graph_outputs: list[int]) -> Plan:
    """Greedy by size (TFLM's GreedyMemoryPlanner idea): each buffer takes the lowest offset that no
    buffer alive at the same time occupies. RESHAPE outputs share their input's buffer."""
    root: dict[int, int] = {}
    for step in steps:
        if step.alias:
            root[step.outputs[0]] = root.get(step.inputs[0], step.inputs[0])

    def find(t: int) -> int:
        return root.get(t, t)

    first: dict[int, int] = {find(t): -1 for t in graph_inputs}
    last: dict[int, int] = {}
    for position, step in enumerate(steps):
        for t in step.outputs:
            first.setdefault(find(t), position)
        for t in step.inputs + step.outputs:
            last[find(t)] = max(last.get(find(t), position), position)
    for t in graph_outputs:
        last[find(t)] = len(steps)
    buffers = sorted(first, key=lambda t: (-sizes[t], t))
    placed: list[tuple[int, int, int]] = []  # (offset, size, root)
    offsets: dict[int, int] = {}
    for t in buffers:
        size, offset = _align(sizes[t]), 0
        overlapping = sorted((o, s) for o, s, u in placed if first[u] <= last[t] and first[t] <= last[u])
        for o, s in overlapping:
            if offset + size <= o:
                break
            offset = max(offset, o + s)
        placed.append((offset, size, t))
        offsets[t] = offset
    arena = max((o + s for o, s, _ in placed), default=0)
    live = [sum(sizes[t] for t in first if first[t] <= p <= last[t]) for p in range(-1, len(steps) + 1)]
    return Plan({t: offsets[find(t)] for t in set(sizes) if find(t) in offsets}, arena, live)
