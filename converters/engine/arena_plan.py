"""The static activation arena: each tensor's offset, planned from tensor lifetimes.

Two things make the arena small:

- **Sharing in place.** RESHAPE's output is its input. An elementwise op whose output has the size of an
  input that dies at that op (ADD into a dead operand, QUANTIZE, LOGISTIC: ``Step.in_place``) writes over
  it: its kernel reads each element before it writes that element. This lowers the bound itself.
- **Placement.** Offsets are searched under a ceiling, starting at the lower bound (the most bytes live
  at once), each buffer, in order of first use, tried at the lowest and at the highest free offset that
  time-overlapping buffers leave (with backtracking, bounded). A chain such as MobileNet needs this: the
  greedy-by-size placement TFLM uses leaves a gap its third buffer does not fit (VWW: 1.17x the bound).
  Greedy by size stays as the fallback when no search within 5% of the bound succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass

from bisup.converters.engine.lowering import Step

ARENA_ALIGNMENT = 4
_SEARCH_NODES = 20_000  # placements tried per ceiling: milliseconds on the models here, bounded on any model
_CEILINGS = (1.0, 1.01, 1.02, 1.03, 1.05)  # ceilings tried, as multiples of the lower bound


@dataclass
class Plan:
    """Where each activation lives, and how good that is against the schedule's lower bound."""

    offsets: dict[int, int]  # tensor -> byte offset (aliases share their root's)
    arena_bytes: int
    live_bytes: list[int]  # bytes live at each point: before the first op, during each op, after the last
    copy_lower_bound_bytes: int = 0  # the bound if no op ran in place (each output beside its inputs)

    @property
    def lower_bound_bytes(self) -> int:
        """The largest set of tensors live at once: no plan for this schedule can use less."""
        return max(self.live_bytes)

    @property
    def ratio(self) -> float:
        return self.arena_bytes / self.lower_bound_bytes


@dataclass(frozen=True)
class _Buffer:
    root: int
    size: int  # aligned
    first: int
    last: int

    def overlaps(self, other: _Buffer) -> bool:
        return self.first <= other.last and other.first <= self.last


def _align(n: int) -> int:
    return (n + ARENA_ALIGNMENT - 1) // ARENA_ALIGNMENT * ARENA_ALIGNMENT


def _find(root: dict[int, int], t: int) -> int:
    """The buffer ``t`` lives in: follows sharing through chains (a RESHAPE of an in-place ADD's output)."""
    while t in root:
        t = root[t]
    return t


def _lifetimes(steps: list[Step], root: dict[int, int], graph_inputs: list[int],
               graph_outputs: list[int]) -> tuple[dict[int, int], dict[int, int]]:
    """First and last step (-1: before the first, len(steps): after the last) of each buffer root."""
    def find(t: int) -> int:
        return _find(root, t)

    first: dict[int, int] = {find(t): -1 for t in graph_inputs}
    last: dict[int, int] = {}
    for position, step in enumerate(steps):
        for t in step.outputs:
            first.setdefault(find(t), position)
        for t in step.inputs + step.outputs:
            last[find(t)] = max(last.get(find(t), position), position)
    for t in graph_outputs:
        last[find(t)] = len(steps)
    for t in first:
        last.setdefault(t, first[t])
    return first, last


def _share(steps: list[Step], sizes: dict[int, int], graph_inputs: list[int], graph_outputs: list[int],
           in_place: bool) -> dict[int, int]:
    """Each tensor's buffer root: RESHAPE outputs share their input's; with ``in_place``, an elementwise op's
    output shares an input of its size that no later op and no caller reads."""
    root: dict[int, int] = {}
    for step in steps:
        if step.alias:
            root[step.outputs[0]] = _find(root, step.inputs[0])
    if not in_place:
        return root
    _, last = _lifetimes(steps, root, graph_inputs, graph_outputs)
    keep = {_find(root, t) for t in graph_inputs + graph_outputs}
    for position, step in enumerate(steps):
        out = _find(root, step.outputs[0]) if step.outputs else None
        for t in step.in_place:
            base = _find(root, t)
            if out is not None and out != base and sizes[t] == sizes[out] and last[base] == position \
                    and base not in keep:
                root[out] = base
                last[base] = last[out]  # the buffer now lives as long as the output does
                keep |= {base} if out in keep else set()
                break
    return root


def _fits(buffer: _Buffer, offset: int, placed: list[tuple[int, _Buffer]]) -> bool:
    end = offset + buffer.size
    return all(not (offset < o + b.size and o < end) for o, b in placed if b.overlaps(buffer))


def _candidates(buffer: _Buffer, placed: list[tuple[int, _Buffer]], ceiling: int) -> list[int]:
    """The lowest and the highest offset under ``ceiling`` where ``buffer`` fits beside what overlaps it."""
    edges = sorted({0, ceiling - buffer.size} | {o + b.size for o, b in placed if b.overlaps(buffer)}
                   | {o - buffer.size for o, b in placed if b.overlaps(buffer)})
    free = [e for e in edges if 0 <= e <= ceiling - buffer.size and _fits(buffer, e, placed)]
    return sorted({free[0], free[-1]}) if free else []


def _search(buffers: list[_Buffer], ceiling: int) -> dict[int, int] | None:
    """Offsets for every buffer under ``ceiling``, by depth-first search over lowest/highest fits; None if
    none is found within the node budget."""
    placed: list[tuple[int, _Buffer]] = []
    budget = [_SEARCH_NODES]

    def place(i: int) -> bool:
        if i == len(buffers):
            return True
        for offset in _candidates(buffers[i], placed, ceiling):
            budget[0] -= 1
            if budget[0] < 0:
                return False
            placed.append((offset, buffers[i]))
            if place(i + 1):
                return True
            placed.pop()
        return False

    return {b.root: o for o, b in placed} if place(0) else None


def _greedy_by_size(buffers: list[_Buffer]) -> dict[int, int]:
    """TFLM's GreedyMemoryPlanner idea: largest first, each at the lowest offset free while it lives."""
    placed: list[tuple[int, _Buffer]] = []
    for buffer in sorted(buffers, key=lambda b: (-b.size, b.root)):
        offset = 0
        for o, b in sorted(((o, b) for o, b in placed if b.overlaps(buffer)), key=lambda pair: pair[0]):
            if offset + buffer.size <= o:
                break
            offset = max(offset, o + b.size)
        placed.append((offset, buffer))
    return {b.root: o for o, b in placed}


def _live(buffers: list[_Buffer], sizes: dict[int, int], steps: int) -> list[int]:
    return [sum(sizes[b.root] for b in buffers if b.first <= p <= b.last) for p in range(-1, steps + 1)]


def plan_arena(steps: list[Step], sizes: dict[int, int], graph_inputs: list[int], graph_outputs: list[int]) -> Plan:
    """The smallest arena found for this schedule (see the module's docstring) and its bounds."""
    root = _share(steps, sizes, graph_inputs, graph_outputs, in_place=True)
    first, last = _lifetimes(steps, root, graph_inputs, graph_outputs)
    buffers = [_Buffer(t, _align(sizes[t]), first[t], last[t]) for t in first]
    live = _live(buffers, sizes, len(steps))
    copy_root = _share(steps, sizes, graph_inputs, graph_outputs, in_place=False)
    copy_first, copy_last = _lifetimes(steps, copy_root, graph_inputs, graph_outputs)
    copy_live = _live([_Buffer(t, 0, copy_first[t], copy_last[t]) for t in copy_first], sizes, len(steps))
    offsets = _greedy_by_size(buffers)
    arena = max((offsets[b.root] + b.size for b in buffers), default=0)
    bound = _align(max(live))
    for factor in _CEILINGS:
        ceiling = _align(int(bound * factor))
        if ceiling >= arena:
            break
        found = _search(sorted(buffers, key=lambda b: (b.first, -b.size, b.root)), ceiling)
        if found is not None:
            offsets, arena = found, max((found[b.root] + b.size for b in buffers), default=0)
            break
    every = set(sizes) | set(root)
    return Plan({t: offsets[_find(root, t)] for t in every if _find(root, t) in offsets}, arena, live,
                max(copy_live))
