"""decision rules per experiment; units' pre-experiment behaviour (the CUPED covariate);
per-request sums of clicks and log loss on exposures (the report reads requests, not items)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 13:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('experiments') as batch:
        batch.add_column(sa.Column('decision_rules', sa.JSON(), nullable=True))
    with op.batch_alter_table('exposures') as batch:
        batch.add_column(sa.Column('clicks', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('log_loss', sa.Float(), nullable=False,
                                   server_default='0'))
    # the sums of what is already there (scores clipped to [1e-7, 1 - 1e-7], as the joiner does)
    op.execute("""
        UPDATE exposures SET
          clicks = (SELECT COUNT(*) FROM outcomes o
                    WHERE o.request_id = exposures.request_id AND o.clicked),
          log_loss = COALESCE((SELECT SUM(CASE WHEN o.clicked
                 THEN -LN(CASE WHEN o.score > 1e-7 THEN o.score ELSE 1e-7 END)
                 ELSE -LN(CASE WHEN o.score < 1 - 1e-7 THEN 1 - o.score ELSE 1e-7 END) END)
               FROM outcomes o WHERE o.request_id = exposures.request_id), 0)""")
    op.create_table('unit_pre_period',
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('unit_id', sa.String(length=256), nullable=False),
    sa.Column('exposures', sa.BigInteger(), nullable=False),
    sa.Column('clicks', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('experiment_id', 'unit_id')
    )


def downgrade() -> None:
    op.drop_table('unit_pre_period')
    with op.batch_alter_table('exposures') as batch:
        batch.drop_column('log_loss')
        batch.drop_column('clicks')
    with op.batch_alter_table('experiments') as batch:
        batch.drop_column('decision_rules')
