"""The metadata database: Alembic upgrades and downgrades cleanly on SQLite and PostgreSQL,
the upgraded schema matches the models, and the experiment lifecycle keeps phases apart."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select

from storage.db import experiments as store
from storage.db.migrate import current, downgrade, upgrade
from storage.db.models import ArmWeight, Base, ExperimentPhase
from storage.db.session import make_engine

TABLES = {"models", "model_versions", "experiments", "arms", "experiment_phases",
          "arm_weights", "exposures", "outcomes", "metric_points"}


def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    upgrade(db_url)
    assert current(db_url) is not None
    engine = make_engine(db_url)
    try:
        assert TABLES <= set(inspect(engine).get_table_names())
        with engine.connect() as conn:  # the migrated schema is what the models say
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
        downgrade(db_url)
        assert current(db_url) is None
        assert not TABLES & set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    upgrade(db_url)
    assert current(db_url) is not None


def test_experiment_lifecycle_and_phases(db_factory) -> None:
    with db_factory.begin() as s:
        exp = store.create_experiment(s, "e1", [store.ArmSpec("ctl", "fixed64", 1),
                                                store.ArmSpec("new", "fiited", 1)])
        eid = exp.id
    with db_factory.begin() as s:
        cfg = store.experiment_config(s, eid)
        assert cfg.status == "draft" and cfg.phase == 1
        assert [a.is_control for a in cfg.arms] == [True, False]  # first arm by default
        store.start_experiment(s, eid)
        with pytest.raises(store.ExperimentError):
            store.start_experiment(s, eid)
        store.set_weights(s, eid, {"ctl": 1, "new": 3})
    with db_factory() as s:
        cfg = store.experiment_config(s, eid)
        assert cfg.status == "running" and cfg.phase == 2
        assert [a.weight for a in cfg.arms] == [1.0, 3.0]
        # phase 1's layout is kept, not edited
        w1 = s.scalars(select(ArmWeight.weight).join(ExperimentPhase)
                       .where(ExperimentPhase.phase == 1).order_by(ArmWeight.arm_id)).all()
        assert w1 == [1.0, 1.0]
    with db_factory.begin() as s:
        with pytest.raises(store.ExperimentError):
            store.set_weights(s, eid, {"ctl": 1})
        store.stop_experiment(s, eid)
        with pytest.raises(store.ExperimentError):
            store.set_weights(s, eid, {"ctl": 1, "new": 1})
        with pytest.raises(store.ExperimentError):
            store.create_experiment(s, "e1", [store.ArmSpec("a", "m", 1),
                                              store.ArmSpec("b", "m", 1)])
