"""decision rules per experiment; units' pre-experiment behaviour (the CUPED covariate)

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
    with op.batch_alter_table('experiments') as batch:
        batch.drop_column('decision_rules')
