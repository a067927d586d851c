"""The A/B router: experiment admin, deterministic assignment, ranking through the serving
tier, exposure and feedback logging to Kafka, the report and the dashboard (FastAPI)."""
