"""mimo: Masked History Modeling for autoregressive video diffusion (see README.md).

Importing it has no side effects: the jobs that need a setting (`mimo.cli.main`, the benchmark
scripts) set it themselves.
"""
