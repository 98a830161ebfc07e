"""The rank map of a layout as a heatmap grid: nodes x GPU slots, each cell coloured by the
pipeline stage of its rank (pure Python; figures.py makes the plotly figure, png.py the image). Where
a rank sits and which groups it is in come from the layout (topology/layout.py), whose axis order the
page script also receives (`axes`), so the hover text follows the same maths. With expert
parallelism the map also says how the expert groups lie (`ep`, `ep_stride`, `ep_crosses_nodes`), and
with context parallelism how the context groups do (`cp`, `cp_kind`, `cp_stride`, `cp_crosses_nodes`)."""
from __future__ import annotations

import math

from llmlaunch.topology.layout import AXES, Layout

# Rank-map cells (GPU slots x node rows) drawn one per rank up to this; beyond, nodes are grouped.
MAX_RANK_MAP_CELLS = 4096
# In-cell labels (TP group, DP replica) are written into the rank map up to this many ranks.
MAX_LABELLED_RANKS = 1024

def rank_map(layout: Layout, gpus_per_node: int) -> dict:
    """The rank map as a heatmap grid. One cell per (node, GPU slot) while the map has at most
    MAX_RANK_MAP_CELLS cells; beyond, `nodes_per_cell` consecutive nodes share a cell per GPU slot.
    Cells are node rows wrapped into columns of `rows` rows, a gap column between node columns.
    z is the pipeline stage of the cell's ranks (-1: the cell's ranks are in more than one stage),
    None for gaps. `axes` is the layout's rank order for the page script (name, size, stride)."""
    world = layout.world_size
    gpn = max(1, min(gpus_per_node, world))
    nodes = math.ceil(world / gpn)
    per_cell = max(1, math.ceil(nodes * gpn / MAX_RANK_MAP_CELLS))
    units = math.ceil(nodes / per_cell)
    target = math.sqrt(2 * units / (gpn + 1))  # about twice as wide as tall, in cells
    columns = 1 if target <= 1 else 2 ** round(math.log2(target))
    columns = max(1, min(columns, units))
    rows = math.ceil(units / columns)
    width = columns * (gpn + 1) - 1
    tp_crosses = layout.spans_nodes("tp", gpn)

    def stage(rank: int) -> int:
        return layout.coords(rank)["pp"]

    def tp_group_crosses(rank: int) -> bool:
        first, last = layout.group_span(rank, "tp")
        return first // gpn != last // gpn

    z = [[None] * width for _ in range(rows)]
    crossing = []  # (x, y) of cells holding a rank whose TP group spans two nodes
    for unit in range(units):
        col, row = divmod(unit, rows)
        first_node = unit * per_cell
        last_node = min(first_node + per_cell, nodes) - 1
        for g in range(gpn):
            lo = first_node * gpn + g
            if lo >= world:
                continue
            hi_node = last_node if last_node * gpn + g < world else last_node - 1
            hi = hi_node * gpn + g
            # the stage axis is the slowest (AXES): a cell's ranks share a stage when its ends do
            s_lo, s_hi = stage(lo), stage(hi)
            x = col * (gpn + 1) + g
            z[row][x] = s_lo if s_lo == s_hi else -1
            if tp_crosses and any(tp_group_crosses(n * gpn + g) for n in range(first_node, hi_node + 1)):
                crossing.append((x, row))
    strides = layout.strides()
    return {"dp": layout.dp, "pp": layout.pp, "tp": layout.tp, "world": world,
            "axes": [{"name": a, "size": layout.size(a), "stride": strides[a]} for a in AXES],
            "gpus_per_node": gpn, "nodes": nodes,
            "nodes_per_cell": per_cell, "units": units, "columns": columns, "rows": rows,
            "width": width, "z": z, "tp_crossing_cells": crossing, "tp_crosses_nodes": tp_crosses,
            "pp_crosses_nodes": layout.spans_nodes("pp", gpn),
            "dp_crosses_nodes": layout.spans_nodes("dp", gpn),
            # expert parallelism (MoE): the e consecutive data-parallel ranks splitting the
            # experts (Layout.groups("ep")), their stride and whether a group leaves its node
            "ep": layout.ep, "ep_stride": layout.stride("ep"),
            "ep_crosses_nodes": layout.spans_nodes("ep", gpn),
            # context parallelism: the cp ranks sharing each sequence (Layout.groups("cp"),
            # stride tp in Megatron-Core's order tp-cp-ep-dp-pp)
            "cp": layout.cp, "cp_kind": layout.cp_kind, "cp_stride": layout.stride("cp"),
            "cp_crosses_nodes": layout.spans_nodes("cp", gpn),
            "labelled": per_cell == 1 and world <= MAX_LABELLED_RANKS}
