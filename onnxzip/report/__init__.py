"""The report: its records, the terminal summary, JSON and the HTML page."""
