"""LIFT's sampling paths: the error heatmap over (t_64, t_32) (`heatmap`, with LIFT's written-out
forward-mode pass in `heatmap_jvp`), its figure (`heatmap_plot`), the DP path over it (`dp_path`)
and the paths evaluation and the sample grids sample along (`paths`, with its heatmap cache).

May import: explore.nets, explore.core.
"""
