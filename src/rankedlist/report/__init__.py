"""Run reports: ``metrics.json``, ``report.md``, ``report.html`` and the pictures of a finished
training run.

``write_report(run_dir, config=..., history=..., test_metrics=..., protocol=..., embeddings=...,
labels=..., dataset=None, query_count=None)`` is what the trainer calls at the end of a run;
:func:`rankedlist.report.html_page.write_html_report` writes the HTML page alone (``rankedlist
report``, ``rankedlist evaluate``), its statistics from
:mod:`rankedlist.report.failure_analysis`, its data from :mod:`rankedlist.report.html_data`. The
published numbers it prints beside a run's own (percent) live in
:mod:`rankedlist.report.published_results`. Matplotlib and scikit-learn are imported only when a
picture is drawn.
"""

from rankedlist.report.published_results import (
    PUBLISHED_RESULTS,
    PUBLISHED_UNITS,
    PublishedResult,
    published_result,
    published_results,
)
from rankedlist.report.write_report import FILE_NAMES, PROTOCOL_NAMES, write_report

__all__ = [
    "FILE_NAMES",
    "PROTOCOL_NAMES",
    "PUBLISHED_RESULTS",
    "PUBLISHED_UNITS",
    "PublishedResult",
    "published_result",
    "published_results",
    "write_report",
]
