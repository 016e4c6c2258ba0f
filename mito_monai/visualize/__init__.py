"""Pictures of a run: the report's figures (matplotlib), its HTML page and the data it is drawn from.

A layer above metrics/networks/losses/engines: nothing lower imports it; handlers and the CLI use it.
"""

from mito_monai.visualize.history import HISTORY_FILE, RunHistory, append_history_record, read_history
from mito_monai.visualize.run_report import FIGURE_FILES, find_eval_dir, render_html, write_compare_plot, write_report
from mito_monai.visualize.run_report_data import REPORT_DATA_FILE, ReportData, SliceStatistics, pick_examples

__all__ = [
    "FIGURE_FILES",
    "HISTORY_FILE",
    "REPORT_DATA_FILE",
    "ReportData",
    "RunHistory",
    "SliceStatistics",
    "append_history_record",
    "find_eval_dir",
    "pick_examples",
    "read_history",
    "render_html",
    "write_compare_plot",
    "write_report",
]
