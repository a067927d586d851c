"""The SQL metadata database: models, versions, experiments, arms, exposures, outcomes, metric
series (SQLAlchemy 2 ORM in `models.py`; engines and sessions in `session.py`; Alembic
upgrades in `migrate.py`)."""
