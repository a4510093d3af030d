-- One row per (task, profile) analysis, created with the task: the
-- analysis's state, the job that owns it, the attempts lost with dead
-- hosts, and its result. The task's parallel JSON arrays (profiles, jobs)
-- and the results table become rows of it. Hosts heartbeat in their own
-- table. Samples are kept in chunks, so that none is ever whole in memory.

-- +goose Up
CREATE TABLE sandbox_analysis (
	task_id TEXT NOT NULL,
	profile TEXT NOT NULL,
	position BIGINT NOT NULL,
	state TEXT NOT NULL,
	job_id BIGINT NOT NULL DEFAULT 0,
	attempt BIGINT NOT NULL DEFAULT 1,
	host TEXT NOT NULL DEFAULT '',
	vm TEXT NOT NULL DEFAULT '',
	step TEXT NOT NULL DEFAULT '',
	cancel_requested BIGINT NOT NULL DEFAULT 0,
	lost TEXT NOT NULL DEFAULT '[]',
	result TEXT NOT NULL DEFAULT '',
	updated_ns BIGINT NOT NULL DEFAULT 0,
	finished_ns BIGINT NOT NULL DEFAULT 0,
	PRIMARY KEY (task_id, profile));
CREATE INDEX sandbox_analysis_open ON sandbox_analysis (state, profile);
CREATE INDEX sandbox_analysis_host ON sandbox_analysis (host, state);

-- An analysis with a result keeps it; one without is taken to be running
-- on no live host, so that the first host to look takes it over with a
-- job of its own (the old job, if it ever runs, finds itself superseded).
INSERT INTO sandbox_analysis (task_id, profile, position, state, job_id, host, result, finished_ns, updated_ns)
SELECT t.id, p.value, p.ord - 1,
	COALESCE(r.result::jsonb ->> 'state', 'running'),
	COALESCE(((CASE WHEN t.jobs = '' THEN '[]' ELSE t.jobs END)::jsonb ->> (p.ord - 1)::int)::bigint, 0),
	COALESCE(r.host, ''),
	COALESCE(r.result, ''),
	CASE WHEN r.result IS NULL THEN 0 ELSE t.created_ns END,
	t.created_ns
FROM sandbox_task t
CROSS JOIN LATERAL jsonb_array_elements_text(t.profiles::jsonb) WITH ORDINALITY AS p(value, ord)
LEFT JOIN sandbox_result r ON r.task_id = t.id AND r.profile = p.value;
UPDATE sandbox_analysis SET state = 'cancelled'
	WHERE state NOT IN ('done', 'failed', 'cancelled') AND task_id IN (SELECT id FROM sandbox_task WHERE cancel_requested <> 0);
DROP TABLE sandbox_result;
ALTER TABLE sandbox_task DROP COLUMN profiles;
ALTER TABLE sandbox_task DROP COLUMN jobs;
ALTER TABLE sandbox_task DROP COLUMN cancel_requested;
-- The host ending a task (writing its report, then marking it ended), so
-- that one host writes it; another takes over from one that died at it.
ALTER TABLE sandbox_task ADD COLUMN ending_host TEXT NOT NULL DEFAULT '';
ALTER TABLE sandbox_task ADD COLUMN ending_ns BIGINT NOT NULL DEFAULT 0;

CREATE TABLE sandbox_host (
	name TEXT PRIMARY KEY,
	started_ns BIGINT NOT NULL,
	heartbeat_ns BIGINT NOT NULL,
	profiles TEXT NOT NULL DEFAULT '[]',
	vms TEXT NOT NULL DEFAULT '[]');

CREATE TABLE sandbox_sample_chunk (
	sha256 TEXT NOT NULL,
	seq BIGINT NOT NULL,
	data BYTEA NOT NULL,
	PRIMARY KEY (sha256, seq));
INSERT INTO sandbox_sample_chunk (sha256, seq, data) SELECT sha256, 0, data FROM sandbox_sample;
ALTER TABLE sandbox_sample DROP COLUMN data;

-- +goose Down
SELECT 'the queue cannot go back to the schema of before its analyses were rows';
