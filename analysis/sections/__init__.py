"""4. Sections: the report's Markdown lines, each section from the tables and figures of its
question, in the order a reader wants them: the answer first, its evidence, then how the
numbers were made (analysis.report puts them in that order).

    results    per FID protocol: the verdict, the results table and the FID figure, then the
               metrics by epoch, precision and recall, memorisation
    lag        BEMA and the EMA's lag (within a protocol's results)
    lengths    which EMA length (within a protocol's results)
    verdicts   the sentences that open a section, from the same numbers as its tables
    training   training loss, EMA diagnostics, held-out loss
    samples    sample grids and heatmaps at each run's best and final epochs
    protocol   what every number of a protocol was made with; the runs
    appendix   the closing sections: protocol, runs, environments, missing, warnings
    files      the one place that writes table and figure files, links them and prints tables

May import analysis.figures, analysis.tables, analysis.stats, analysis.load, explore.
"""
