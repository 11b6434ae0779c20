"""What-if memory from a config alone, model presets, and the memory guard."""
