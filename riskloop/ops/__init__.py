"""Operations: the embedded stack, Airflow services and DAG runs, the demo, the data imports
and the audits."""
