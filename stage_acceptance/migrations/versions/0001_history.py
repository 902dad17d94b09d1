"""The history of certifications: runs and their metrics.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "acceptance_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("instrument", sa.String(1000), nullable=False),
        sa.Column("holder", sa.String(1000), nullable=False),
        sa.Column("holder_name", sa.Text(), nullable=True),
        sa.Column("label", sa.String(200), nullable=True),
        sa.Column("source", sa.String(20), nullable=False),
        sa.Column("measured_utc", sa.DateTime(), nullable=True),
        sa.Column("analysed_utc", sa.DateTime(), nullable=False),
        sa.Column("verdict", sa.String(20), nullable=False),
        sa.Column("case", sa.String(1), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("report_path", sa.Text(), nullable=True),
        sa.Column("results_path", sa.Text(), nullable=True),
        sa.Column("recording_path", sa.Text(), nullable=True),
        sa.Column("version", sa.String(50), nullable=True),
        sa.Column("results", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_acceptance_runs"),
    )
    op.create_index("ix_acceptance_runs_instrument", "acceptance_runs", ["instrument"])
    op.create_index("ix_acceptance_runs_holder", "acceptance_runs", ["holder"])
    op.create_index("ix_acceptance_runs_analysed_utc", "acceptance_runs", ["analysed_utc"])
    op.create_table(
        "acceptance_metrics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("label", sa.String(200), nullable=True),
        sa.Column("unit", sa.String(20), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("ci_low", sa.Float(), nullable=True),
        sa.Column("ci_high", sa.Float(), nullable=True),
        sa.Column("tolerance", sa.Float(), nullable=True),
        sa.Column("passed", sa.Boolean(), nullable=True),
        sa.Column("marginal", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["acceptance_runs.id"], ondelete="CASCADE",
                                name="fk_acceptance_metrics_run_id_acceptance_runs"),
        sa.PrimaryKeyConstraint("id", name="pk_acceptance_metrics"),
    )
    op.create_index("ix_acceptance_metrics_run_id", "acceptance_metrics", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_acceptance_metrics_run_id", table_name="acceptance_metrics")
    op.drop_table("acceptance_metrics")
    op.drop_index("ix_acceptance_runs_analysed_utc", table_name="acceptance_runs")
    op.drop_index("ix_acceptance_runs_holder", table_name="acceptance_runs")
    op.drop_index("ix_acceptance_runs_instrument", table_name="acceptance_runs")
    op.drop_table("acceptance_runs")
