"""What both bench programs (bench.hotpath and bench.gpu) measure with: round-robin timing and
memory figures (timing), the machine a measurement ran on (machine: run.json's environment
record plus the load), the model sizes (sizes), the harness's own training step (training) and
the number format of their tables (numbers).

May import explore; nothing of bench outside bench.common.
"""
