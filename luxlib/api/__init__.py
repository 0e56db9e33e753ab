"""Public entry points, one module per op family: validation, then one dispatch call."""
