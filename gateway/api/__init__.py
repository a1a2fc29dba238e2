"""The HTTP API (aiohttp): one module per resource, plus middlewares and problem responses."""
