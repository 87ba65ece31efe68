"""The worker's HTTP pages (Faust web), one module each: `register(ctx)` adds the page to `ctx.app`."""
