"""The rollout report for people: one sentence, charts, tables; HTML (live or final) and Markdown.

Pure core, no Airflow. ``format`` and ``sentence`` are plain Python; ``charts`` imports Altair and
vl-convert inside its functions only, so importing this package stays cheap (DAG parsing never pays
for a chart library).
"""
