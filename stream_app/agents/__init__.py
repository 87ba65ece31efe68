"""The worker's Faust agents, one module each: `register(ctx)` adds the agent to `ctx.app`."""
