"""What `ftbench run` measures: the grid of points, hardware ceilings and floors, and the peers
(HF transformers, a gpt-fast-style compiled decoder) run beside the runtime."""
