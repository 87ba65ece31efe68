"""The worker's background tasks, one module each: `register(ctx)` adds the task to `ctx.app`."""
