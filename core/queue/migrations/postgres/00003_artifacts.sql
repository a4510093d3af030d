-- Artifacts kept in the database up to [queue] artifact_limit, so that
-- every host serves those of every task; and the mark retention leaves on
-- a task whose sample and artifacts it removed (the task, its results and
-- its report stay).

-- +goose Up
CREATE TABLE sandbox_artifact (
	task_id TEXT NOT NULL,
	profile TEXT NOT NULL,
	name TEXT NOT NULL,
	path TEXT NOT NULL,
	guest_path TEXT NOT NULL,
	host TEXT NOT NULL,
	size BIGINT NOT NULL,
	sha256 TEXT NOT NULL,
	stored BIGINT NOT NULL,
	PRIMARY KEY (task_id, profile, name));
CREATE INDEX sandbox_artifact_sha256 ON sandbox_artifact (sha256);
CREATE TABLE sandbox_artifact_chunk (
	sha256 TEXT NOT NULL,
	seq BIGINT NOT NULL,
	data BYTEA NOT NULL,
	PRIMARY KEY (sha256, seq));
ALTER TABLE sandbox_task ADD COLUMN pruned_ns BIGINT NOT NULL DEFAULT 0;
CREATE INDEX sandbox_task_finished ON sandbox_task (finished_ns);

-- +goose Down
DROP INDEX sandbox_task_finished;
ALTER TABLE sandbox_task DROP COLUMN pruned_ns;
DROP TABLE sandbox_artifact_chunk;
DROP TABLE sandbox_artifact;
