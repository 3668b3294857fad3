"""The backfill console: one page, inside Airflow, that says whether each quarantine date is back in mParticle.

``overview`` (the data: dates, states, days left, rows), ``chart`` (the SVG) and ``page`` (the HTML) are
pure: plain dicts in, strings out. ``s3`` and ``sources`` read S3 and Airflow's database; ``app`` is the
FastAPI shell the api-server mounts, and ``plugin`` the Airflow plugin that mounts it (registered by the
package's ``airflow.plugins`` entry point).
"""
