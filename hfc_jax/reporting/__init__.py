"""The written results: the paper's figures and tables from workdirs, re-running nothing.

  report     `python -m hfc_jax.report`: report.md, report.json and one PNG per figure
  plots      the accuracy-vs-epoch figures, pure functions of metric records
  markdown   Markdown tables, the one format every report and study table uses

None of them imports JAX.
"""
