"""What llmlaunch shows: the plan as text (text.py) and JSON (plan_json.py), and one self-contained
HTML page (or a PNG) of a plan or of a trained run.

`llmlaunch plan ... --report FILE.html` calls plan_page.write_plan_report; `llmlaunch report
RUN_DIR` calls run_page.write_run_report. The page inlines everything it needs (plotly.js from the
`plotly` package, the data as one JSON block, assets/page.css and assets/page.js), so it opens
offline from a file. Sections:

  rank map      nodes x GPUs per node, each rank coloured by pipeline stage (rank_map.py), hover (and,
                for small maps, in-cell text) naming its TP group and data-parallel replica, from the
                layout's axis order (topology/layout.py) that the page script receives; ranks whose
                TP group crosses a node boundary are marked. Beyond MAX_RANK_MAP_CELLS cells,
                consecutive nodes are aggregated into one cell per GPU slot.
  schedule      the step as topology/schedule.py simulates it from the planner's own per-stage times
                (1F1B, or interleaved 1F1B), then the DP reduce and the optimizer step; beside it
                the planner's step-time breakdown.
  memory        per pipeline stage, stacked, against the GPU's capacity.
  candidates    sortable table (text.candidate_rows), rejected layouts, inputs and defaults.
  run only      loss, learning rate, grad norm, tokens/s, step time and memory over steps from
                metrics.jsonl, measured against predicted, and validate.json's table.

The DOM carries counts for tests (data-* attributes): the rank-map section has data-ranks (dp*pp*tp)
and, once drawn, data-rendered-ranks (ranks covered by the plotted cells); the schedule has
data-stages, data-micro-batches, data-micro-batches-drawn, data-step-s (the plan's step time),
data-drawn-end-s (where the drawn step ends) and data-rendered-stages/-micro-batches; <body> gets
data-ready="1", data-render-ms and data-errors (uncaught errors) when every plot is drawn.
"""
