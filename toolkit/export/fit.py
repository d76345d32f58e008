"""Does the model fit the board? Judged by the engine that will run it, with the other engine's figures beside.

Two engines can run an export: bisup's C engine (``model_infer.c``: a static arena planned from tensor
lifetimes, code + weights in flash) and the TFLM interpreter (``model_data.cc``: the measured arena plus a
margin, the flatbuffer in flash). Their arenas differ several-fold, so a verdict by the wrong one refuses a
model that fits, or passes one that does not. The C engine is the default wherever it can run the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bisup.converters.artefacts import BoardProfile

C, TFLM = "c", "tflm"
ENGINES = (C, TFLM)
SHRINK = "use a board with more RAM, or shrink that layer (fewer channels, a stride, pooling)"


def choose(requested: str | None, engine: dict) -> str:
    """The engine the verdict is for: ``requested``, else the C engine when it can run the model (its plan
    exists, even over budget), else TFLM."""
    if requested is not None:
        return requested
    return C if "arena_bytes" in engine else TFLM


def problems(chosen: str, engine: dict, board: BoardProfile, model_bytes: int, tflm_arena_bytes: int) -> list[str]:
    """Why the model does not fit ``board`` when run by ``chosen``; empty when it fits."""
    if chosen == C and "arena_bytes" not in engine:
        return [f"the C engine cannot run this model ({engine.get('reason', 'not generated')}); "
                "export with --engine tflm to deploy model_data.cc"]
    found = _flash_problem(chosen, engine, board, model_bytes)
    arena = engine["arena_bytes"] if chosen == C else tflm_arena_bytes
    if arena > board.arena_ram_budget:
        found.append(_arena_problem(chosen, arena, engine, board))
    return found


def _flash_problem(chosen: str, engine: dict, board: BoardProfile, model_bytes: int) -> list[str]:
    """The C engine's measured code + weights, or the flatbuffer (TFLM, or when gcc is not installed)."""
    measured = engine.get("flash_bytes") if chosen == C else None
    needed, what = (measured, "flash for the C engine's code + weights") if measured is not None else \
        (model_bytes, "of flash")
    if needed <= board.model_flash_budget:
        return []
    return [f"model needs {needed:,} B {what} but {board.name} leaves {board.model_flash_budget:,} B of flash for it "
            f"({board.flash_bytes:,} B flash - {board.reserved_flash_bytes:,} B reserved for firmware)"]


def _arena_problem(chosen: str, arena: int, engine: dict, board: BoardProfile) -> str:
    """The arena over budget, where memory peaks, and what to do, including the other engine when it fits."""
    who = "the C engine's arena" if chosen == C else "TFLM's tensor arena (measured minimum + margin)"
    text = (f"{who} needs {arena:,} B of RAM but {board.name} leaves {board.arena_ram_budget:,} B for it "
            f"({board.ram_bytes:,} B RAM - {board.reserved_ram_bytes:,} B reserved)")
    peak = engine.get("arena_peak")
    if peak:
        text += (f"; memory peaks at layer {peak['layer']} ({peak['op']}) with {peak['live_bytes']:,} B of "
                 f"activations live: {SHRINK}")
    if chosen == TFLM and engine.get("arena_bytes", arena) <= board.arena_ram_budget:
        text += f"; the C engine needs {engine['arena_bytes']:,} B (--engine c)"
    return text
