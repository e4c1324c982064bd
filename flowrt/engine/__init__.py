"""The message-processing engine: exchange, compiled expressions, steps, pipeline runner."""
