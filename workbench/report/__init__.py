"""What people and pipelines read: HTML reports and the index (``html``), CI artifacts
(``ci``: summary.json, junit.xml, exit status) and the plotly house style (``plots``)."""
