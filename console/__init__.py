"""`streamrec console`: a read-only operator's web console (docs/operations.md, "Console").

    collect.py   background reading: the topics (recommendations, events-dlq, model-updates, items' titles,
                 experiments if present), the group's lag, every worker's /health and /metrics
    state.py     what was read, in bounded buffers, and the JSON each page polls
    samples.py   one worker poll (Prometheus text parsed) and the per-second figures between two polls
    records.py   safe previews of raw bytes; dead letters and model announcements as plain dicts
    server.py    the aiohttp app: /api/... (token when set), the pages in static/

Worker layer: torch-free; reads core, state and export.registry's layout only."""
