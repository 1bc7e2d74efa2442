-- Who wrote what: one row per Airflow task try (or CLI call) that changed data.
-- Every extraction, marker run and traffic light points at the run that produced it,
-- so an auditor can go from a decision to the images, code version and parameters.
CREATE TABLE cbm.pipeline_run (
    pipeline_run_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dag_id          text,                         -- NULL for the CLI
    run_id          text,                         -- Airflow dag run id
    task_id         text,
    map_index       integer,
    try_number      integer,
    step            text NOT NULL,                -- extract, card_bs, markers, ...
    code_version    text NOT NULL,                -- cbm_tasks version + git commit
    params          jsonb NOT NULL DEFAULT '{}',
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    status          text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'success', 'failed')),
    error           text
);
CREATE INDEX pipeline_run_airflow ON cbm.pipeline_run (dag_id, run_id);
