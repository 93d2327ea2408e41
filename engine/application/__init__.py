"""The use cases: typed commands, the engine that handles them over units of work, the tick,
bulk runs and imports."""
