"""The thin Airflow shell: hook, operator and stage tasks that move bytes between S3, the core and the API."""
