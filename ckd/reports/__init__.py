"""Reading results: metrics, summaries, sweep tables and figures. Imports no training code."""
