"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-22 02:37:49.905595
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table('experiments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('salt', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('phase', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('policy', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('arms',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('model_name', sa.String(length=64), nullable=False),
    sa.Column('is_control', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('experiment_id', 'name')
    )
    with op.batch_alter_table('arms', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_arms_experiment_id'),
                              ['experiment_id'], unique=False)

    op.create_table('experiment_phases',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('phase', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('experiment_id', 'phase')
    )
    with op.batch_alter_table('experiment_phases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_experiment_phases_experiment_id'),
                              ['experiment_id'], unique=False)

    op.create_table('model_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('policy', sa.String(length=256), nullable=False),
    sa.Column('published_at', sa.Float(), nullable=False),
    sa.Column('embedding_bytes', sa.BigInteger(), nullable=False),
    sa.Column('embedding_value_bytes', sa.BigInteger(), nullable=False),
    sa.Column('redis_embedding_bytes', sa.BigInteger(), nullable=False),
    sa.Column('redis_embedding_records', sa.BigInteger(), nullable=False),
    sa.Column('events_applied', sa.BigInteger(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('chunk_histogram', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('model_id', 'version')
    )
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_versions_model_id'),
                              ['model_id'], unique=False)

    op.create_table('arm_weights',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('phase_id', sa.Integer(), nullable=False),
    sa.Column('arm_id', sa.Integer(), nullable=False),
    sa.Column('weight', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['arm_id'], ['arms.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['phase_id'], ['experiment_phases.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('phase_id', 'arm_id')
    )
    with op.batch_alter_table('arm_weights', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_arm_weights_phase_id'),
                              ['phase_id'], unique=False)

    op.create_table('exposures',
    sa.Column('request_id', sa.String(length=64), nullable=False),
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('phase', sa.Integer(), nullable=False),
    sa.Column('arm_id', sa.Integer(), nullable=False),
    sa.Column('unit_id', sa.String(length=256), nullable=False),
    sa.Column('model_version', sa.Integer(), nullable=False),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.Column('latency_ms', sa.Float(), nullable=False),
    sa.Column('n_shown', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['arm_id'], ['arms.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('request_id')
    )
    with op.batch_alter_table('exposures', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_exposures_arm_id'),
                              ['arm_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_exposures_experiment_id'),
                              ['experiment_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_exposures_ts'),
                              ['ts'], unique=False)
        batch_op.create_index(batch_op.f('ix_exposures_unit_id'),
                              ['unit_id'], unique=False)

    op.create_table('metric_points',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('model_name', sa.String(length=64), nullable=True),
    sa.Column('arm_id', sa.Integer(), nullable=True),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['arm_id'], ['arms.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('metric_points', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_metric_points_model_name'),
                              ['model_name'], unique=False)
        batch_op.create_index(batch_op.f('ix_metric_points_name'),
                              ['name'], unique=False)

    op.create_table('outcomes',
    sa.Column('request_id', sa.String(length=64), nullable=False),
    sa.Column('item', sa.String(length=256), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('clicked', sa.Boolean(), nullable=False),
    sa.Column('late_feedback', sa.Integer(), nullable=False),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['exposures.request_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('request_id', 'item')
    )
    with op.batch_alter_table('outcomes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outcomes_ts'),
                              ['ts'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('outcomes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outcomes_ts'))

    op.drop_table('outcomes')
    with op.batch_alter_table('metric_points', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_metric_points_name'))
        batch_op.drop_index(batch_op.f('ix_metric_points_model_name'))

    op.drop_table('metric_points')
    with op.batch_alter_table('exposures', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_exposures_unit_id'))
        batch_op.drop_index(batch_op.f('ix_exposures_ts'))
        batch_op.drop_index(batch_op.f('ix_exposures_experiment_id'))
        batch_op.drop_index(batch_op.f('ix_exposures_arm_id'))

    op.drop_table('exposures')
    with op.batch_alter_table('arm_weights', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_arm_weights_phase_id'))

    op.drop_table('arm_weights')
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_versions_model_id'))

    op.drop_table('model_versions')
    with op.batch_alter_table('experiment_phases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_experiment_phases_experiment_id'))

    op.drop_table('experiment_phases')
    with op.batch_alter_table('arms', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_arms_experiment_id'))

    op.drop_table('arms')
    op.drop_table('models')
    op.drop_table('experiments')

