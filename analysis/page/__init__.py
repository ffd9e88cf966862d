"""5. The page: report.html, one self-contained page rendered from report.md's own lines (html),
its images scaled down and embedded within a size budget (images).

May import nothing of analysis outside analysis.page.
"""
