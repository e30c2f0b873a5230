"""What users see of a run: the HTML data-quality report, its ``report.json``, and the
data-quality checks that Dagster and ``arcforge status`` evaluate."""
